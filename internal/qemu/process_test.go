package qemu

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	ferryv1 "github.com/ferryvm/ferry/gen/ferry/v1"
)

// needQEMU returns the QEMU binary, failing the test when it is missing
// unless FERRY_SKIP_QEMU=1.
func needQEMU(t *testing.T) string {
	t.Helper()
	if os.Getenv("FERRY_SKIP_QEMU") == "1" {
		t.Skip("FERRY_SKIP_QEMU=1: skipping a test that runs QEMU")
	}
	bin, err := exec.LookPath("qemu-system-x86_64")
	if err != nil {
		t.Fatalf("qemu-system-x86_64 not found (%v): install QEMU (apt-get install qemu-system-x86 qemu-utils) or set FERRY_SKIP_QEMU=1 to skip QEMU tests", err)
	}
	return bin
}

// needKernel returns a bootable kernel image from /boot.
func needKernel(t *testing.T) string {
	t.Helper()
	needQEMU(t)
	k := defaultProbeKernel()
	if k == "" {
		t.Fatalf("no /boot/vmlinuz-* kernel for test guests: install a kernel image (linux-image-cloud-amd64) or set FERRY_SKIP_QEMU=1")
	}
	return k
}

// vmDir returns a short per-test VM directory; every process whose command
// line mentions it is killed by PID when the test ends.
func vmDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "ferry-qemu-test-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		for _, pid := range pidsMentioning(dir) {
			t.Logf("cleanup: killing leftover pid %d", pid)
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
		os.RemoveAll(dir)
	})
	return dir
}

// pidsMentioning lists live processes whose command line contains s.
func pidsMentioning(s string) []int {
	ents, _ := os.ReadDir("/proc")
	var pids []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/cmdline")
		if err == nil && strings.Contains(string(b), s) {
			if st, err := readProcStat(pid); err == nil && st.live() {
				pids = append(pids, pid)
			}
		}
	}
	return pids
}

func startVM(t *testing.T, cfg Config) *Process {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	p, err := Start(ctx, needQEMU(t), cfg)
	if err != nil {
		t.Fatalf("Start: %v", err)
	}
	t.Cleanup(func() { _ = p.Kill() })
	return p
}

func TestStartAttachKill(t *testing.T) {
	bin := needQEMU(t)
	dir := vmDir(t)
	img, data := filepath.Join(dir, "root.qcow2"), filepath.Join(dir, "data.raw")
	for _, c := range [][]string{{"qcow2", img}, {"raw", data}} {
		if out, err := exec.Command("qemu-img", "create", "-q", "-f", c[0], c[1], "16M").CombinedOutput(); err != nil {
			t.Fatalf("qemu-img create: %v: %s", err, out)
		}
	}
	cfg := Config{
		Spec: &ferryv1.VMSpec{Name: "attach-me", Vcpus: 1, MemoryMib: 128, Boot: &ferryv1.BootSpec{Disk: "root"},
			Disks: []*ferryv1.DiskSpec{{Name: "root", Path: img}, {Path: data}}},
		Accel: "tcg", Paths: PathsFor(dir), Disks: []Disk{{Path: img}, {Path: data}},
	}
	before := time.Now()
	p := startVM(t, cfg)
	t.Logf("started pid %d in %s", p.PID(), time.Since(before))

	if !p.Alive() {
		t.Fatal("Alive = false right after Start")
	}
	if d := p.StartedAt().Sub(before); d < -2*time.Second || d > 5*time.Second {
		t.Errorf("StartedAt = %v, %v from the Start call", p.StartedAt(), d)
	}
	if pgid, _ := syscall.Getpgid(p.PID()); pgid != p.PID() {
		t.Errorf("QEMU pgid = %d, want its own group %d", pgid, p.PID())
	}
	if rss := p.RSSBytes(); rss < 1<<20 {
		t.Errorf("RSSBytes = %d, want > 1MiB", rss)
	}
	// QMP answers (Start's own greeting connection is closed).
	conn, err := net.Dial("unix", cfg.Paths.QMPSocket)
	if err != nil {
		t.Fatalf("dial QMP: %v", err)
	}
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	greeting, err := bufio.NewReader(conn).ReadString('\n')
	conn.Close()
	if err != nil || !strings.Contains(greeting, `"QMP"`) {
		t.Fatalf("QMP greeting = %q, %v", greeting, err)
	}

	// A second Start on the same paths must refuse.
	if _, err := Start(context.Background(), bin, cfg); err == nil || !strings.Contains(err.Error(), "already running as pid "+strconv.Itoa(p.PID())) {
		t.Errorf("second Start error = %v", err)
	}

	a, err := Attach(PathsFor(dir))
	if err != nil {
		t.Fatalf("Attach: %v", err)
	}
	if a.PID() != p.PID() || !a.StartedAt().Equal(p.StartedAt()) || !a.Alive() {
		t.Fatalf("attached pid %d startedAt %v alive %v; want pid %d startedAt %v", a.PID(), a.StartedAt(), a.Alive(), p.PID(), p.StartedAt())
	}
	select {
	case <-a.Exited():
		t.Fatal("attached Exited closed while running")
	default:
	}

	pid := p.PID()
	if err := a.Kill(); err != nil {
		t.Fatalf("Kill: %v", err)
	}
	for _, c := range []<-chan struct{}{a.Exited(), p.Exited()} {
		select {
		case <-c:
		case <-time.After(5 * time.Second):
			t.Fatal("Exited not closed after Kill")
		}
	}
	if a.Alive() || p.Alive() || a.RSSBytes() != 0 {
		t.Error("Alive after Kill")
	}
	if _, err := os.Stat("/proc/" + strconv.Itoa(pid)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("/proc/%d still exists after Kill (zombie not reaped?): %v", pid, err)
	}
	if _, err := os.Stat(cfg.Paths.PIDFile); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("pidfile left behind: %v", err)
	}
	if err := a.Kill(); err != nil {
		t.Errorf("second Kill: %v", err)
	}
	if err := p.Kill(); err != nil {
		t.Errorf("Kill of the child handle after exit: %v", err)
	}
	if _, err := Attach(PathsFor(dir)); !errors.Is(err, ErrNotRunning) {
		t.Errorf("Attach after Kill = %v, want ErrNotRunning", err)
	}
}

func TestStartKernelBootWritesSerial(t *testing.T) {
	kernel := needKernel(t)
	dir := vmDir(t)
	cfg := Config{
		Spec: &ferryv1.VMSpec{Name: "kboot", Vcpus: 1, MemoryMib: 128,
			Boot: &ferryv1.BootSpec{Kernel: kernel, Cmdline: "console=ttyS0 panic=-1"}},
		Accel: "tcg", Paths: PathsFor(dir),
	}
	p := startVM(t, cfg)
	deadline := time.Now().Add(30 * time.Second)
	for {
		b, _ := os.ReadFile(cfg.Paths.SerialLog)
		if strings.Contains(string(b), "Linux version") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no kernel banner in %s after 30s: %q", cfg.Paths.SerialLog, b)
		}
		time.Sleep(100 * time.Millisecond)
	}
	// panic=-1 with no root: the guest panics, QEMU resets... and since we
	// did not pass -no-reboot it reboots; the process stays alive.
	if !p.Alive() {
		t.Error("QEMU died after the guest booted")
	}
}

func TestStartFailureLeavesNoProcess(t *testing.T) {
	bin := needQEMU(t)
	tests := []struct {
		name string
		mut  func(c *Config)
		want []string
	}{
		{"bad cpu model", func(c *Config) { c.Spec.CpuModel = "nosuchcpu" }, []string{"qemu exited", "nosuchcpu"}},
		{"missing disk image", func(c *Config) {
			c.Spec.Disks = []*ferryv1.DiskSpec{{Path: "/nonexistent/ferry.qcow2"}}
			c.Disks = []Disk{{Path: "/nonexistent/ferry.qcow2"}}
		}, []string{"qemu exited", "/nonexistent/ferry.qcow2", "No such file or directory"}},
		{"bad machine type", func(c *Config) { c.MachineType = "pc-q35-1.0-nope" }, []string{"qemu exited", "unsupported machine type"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := vmDir(t)
			cfg := Config{
				Spec: &ferryv1.VMSpec{Name: "broken", Vcpus: 1, MemoryMib: 128,
					Boot: &ferryv1.BootSpec{Kernel: "/nonexistent/vmlinuz"}},
				Accel: "tcg", Paths: PathsFor(dir),
			}
			tt.mut(&cfg)
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			p, err := Start(ctx, bin, cfg)
			if err == nil {
				p.Kill()
				t.Fatal("Start succeeded")
			}
			t.Logf("error: %v", err)
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error lacks %q", w)
				}
			}
			if pids := pidsMentioning(dir); len(pids) != 0 {
				t.Errorf("processes left running: %v", pids)
			}
			if _, err := os.Stat(cfg.Paths.PIDFile); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("pidfile left behind: %v", err)
			}
		})
	}
}

func TestStartTimeoutKillsChild(t *testing.T) {
	dir := vmDir(t)
	// A "QEMU" that never creates its socket; exec -a puts our argv (with
	// the VM dir) into its command line so pidsMentioning can find it.
	fake := filepath.Join(dir, "fake-qemu")
	if err := os.WriteFile(fake, []byte("#!/bin/bash\nexec -a \"fake-qemu $*\" sleep 300\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	cfg := Config{Spec: kernelSpec("slow"), Accel: "tcg", Paths: PathsFor(dir)}
	ctx, cancel := context.WithTimeout(context.Background(), 700*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := Start(ctx, fake, cfg)
	if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "qmp.sock") {
		t.Fatalf("Start error = %v, want a timeout naming the QMP socket", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("Start took %v after a 700ms timeout", d)
	}
	if pids := pidsMentioning(dir); len(pids) != 0 {
		t.Errorf("fake QEMU still running after a failed Start: %v", pids)
	}
}

func TestStartMissingBinary(t *testing.T) {
	dir := vmDir(t)
	cfg := Config{Spec: kernelSpec("nobin"), Accel: "tcg", Paths: PathsFor(dir)}
	_, err := Start(context.Background(), filepath.Join(dir, "no-such-qemu"), cfg)
	if err == nil || !strings.Contains(err.Error(), `qemu: start "nobin"`) || !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("Start error = %v", err)
	}
}

func TestAttachNotRunning(t *testing.T) {
	dir := t.TempDir()
	paths := PathsFor(dir)
	if _, err := Attach(paths); !errors.Is(err, ErrNotRunning) {
		t.Errorf("no pidfile: %v, want ErrNotRunning", err)
	}
	// A live process that is not our QEMU (PID reuse).
	os.WriteFile(paths.PIDFile, []byte(strconv.Itoa(os.Getpid())+"\n"), 0o644)
	if _, err := Attach(paths); !errors.Is(err, ErrNotRunning) || !strings.Contains(err.Error(), "PID reused") {
		t.Errorf("foreign pid: %v, want ErrNotRunning", err)
	}
	os.WriteFile(paths.PIDFile, []byte("999999999\n"), 0o644)
	if _, err := Attach(paths); !errors.Is(err, ErrNotRunning) {
		t.Errorf("dead pid: %v, want ErrNotRunning", err)
	}
	os.WriteFile(paths.PIDFile, []byte("garbage"), 0o644)
	if _, err := Attach(paths); err == nil || errors.Is(err, ErrNotRunning) || !strings.Contains(err.Error(), "not a PID") {
		t.Errorf("garbage pidfile: %v, want a non-ErrNotRunning error", err)
	}
}

func TestReadProcStatSelf(t *testing.T) {
	st, err := readProcStat(os.Getpid())
	if err != nil || !st.live() || st.startTicks == 0 {
		t.Fatalf("readProcStat(self) = %+v, %v", st, err)
	}
	if d := time.Since(startTime(st.startTicks)); d < 0 || d > time.Hour {
		t.Errorf("own start time %v ago", d)
	}
}

// helperAgentEnv makes the test binary act as an agent that starts a VM in
// the named directory, prints "ready PID" and waits to be killed.
const helperAgentEnv = "FERRY_QEMU_TEST_HELPER_AGENT_DIR"

func TestMain(m *testing.M) {
	if dir := os.Getenv(helperAgentEnv); dir != "" {
		helperAgent(dir, os.Getenv(helperAgentEnv+"_KERNEL"))
		return
	}
	os.Exit(m.Run())
}

func helperAgent(dir, kernel string) {
	cfg := Config{
		Spec:  &ferryv1.VMSpec{Name: "orphan", Vcpus: 1, MemoryMib: 128, Boot: &ferryv1.BootSpec{Kernel: kernel}},
		Accel: "tcg", Paths: PathsFor(dir),
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	p, err := Start(ctx, "qemu-system-x86_64", cfg)
	if err != nil {
		fmt.Println("error:", err)
		os.Exit(1)
	}
	fmt.Printf("ready %d\n", p.PID())
	time.Sleep(time.Hour)
}

// TestQEMUSurvivesAgentDeath starts QEMU from a helper "agent" process,
// signals the agent's process group, SIGKILLs the agent and checks that
// QEMU still runs and answers QMP, then re-attaches and kills it.
func TestQEMUSurvivesAgentDeath(t *testing.T) {
	kernel := needKernel(t)
	dir := vmDir(t)
	// Become a subreaper so the orphaned QEMU is re-parented to us and can be
	// reaped here, whatever PID 1 does with zombies.
	if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
		t.Fatalf("PR_SET_CHILD_SUBREAPER: %v", err)
	}
	t.Cleanup(func() { unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0) })

	agent := exec.Command(os.Args[0], "-test.run=^$")
	agent.Env = append(os.Environ(), helperAgentEnv+"="+dir, helperAgentEnv+"_KERNEL="+kernel)
	agent.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	out, err := agent.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := agent.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { agent.Process.Kill(); agent.Wait() })
	line, err := bufio.NewReader(out).ReadString('\n')
	var qemuPID int
	if _, serr := fmt.Sscanf(line, "ready %d", &qemuPID); serr != nil {
		t.Fatalf("helper agent: %q, %v", line, err)
	}
	t.Cleanup(func() {
		syscall.Kill(qemuPID, syscall.SIGKILL)
		var ws unix.WaitStatus
		unix.Wait4(qemuPID, &ws, unix.WNOHANG, nil)
	})

	// A signal to the agent's group must not reach QEMU; SIGKILL the agent.
	if err := syscall.Kill(-agent.Process.Pid, syscall.SIGTERM); err != nil {
		t.Fatalf("signal agent group: %v", err)
	}
	agent.Wait()
	time.Sleep(300 * time.Millisecond)

	p, err := Attach(PathsFor(dir))
	if err != nil {
		log, _ := os.ReadFile(PathsFor(dir).StderrLog)
		t.Fatalf("Attach after agent death: %v\nqemu.log:\n%s", err, log)
	}
	if p.PID() != qemuPID || !p.Alive() {
		t.Fatalf("attached pid %d alive %v, want %d alive", p.PID(), p.Alive(), qemuPID)
	}
	if ppid := parentOf(qemuPID); ppid == agent.Process.Pid {
		t.Errorf("QEMU still parented to the dead agent")
	}
	conn, err := net.Dial("unix", PathsFor(dir).QMPSocket)
	if err != nil {
		t.Fatalf("QMP after agent death: %v", err)
	}
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	if g, err := bufio.NewReader(conn).ReadString('\n'); err != nil || !strings.Contains(g, `"QMP"`) {
		t.Errorf("QMP greeting after agent death: %q, %v", g, err)
	}
	conn.Close()

	if err := p.Kill(); err != nil {
		t.Fatalf("Kill: %v", err)
	}
	if p.Alive() {
		t.Error("Alive after Kill")
	}
	// We are its subreaper now: reap the zombie and check it is gone.
	var ws unix.WaitStatus
	if _, err := unix.Wait4(qemuPID, &ws, 0, nil); err != nil {
		t.Errorf("reap orphaned QEMU: %v", err)
	} else if !ws.Signaled() || ws.Signal() != syscall.SIGKILL {
		t.Errorf("QEMU ended with %v, want SIGKILL", ws)
	}
	if _, err := os.Stat(fmt.Sprintf("/proc/%d", qemuPID)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("QEMU pid %d still in /proc", qemuPID)
	}
}

// parentOf returns the parent PID of pid, or 0.
func parentOf(pid int) int {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	i := strings.LastIndexByte(string(b), ')')
	f := strings.Fields(string(b)[i+2:])
	ppid, _ := strconv.Atoi(f[1])
	return ppid
}

// qmpStatus returns query-status's status from a fresh QMP connection.
func qmpStatus(t *testing.T, sock string) string {
	t.Helper()
	conn, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatalf("dial QMP: %v", err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	r := bufio.NewReader(conn)
	r.ReadString('\n') // greeting
	fmt.Fprintf(conn, "{\"execute\":\"qmp_capabilities\"}\n{\"execute\":\"query-status\",\"id\":1}\n")
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			t.Fatalf("read QMP: %v", err)
		}
		var m struct {
			ID     int `json:"id"`
			Return struct {
				Status string `json:"status"`
			} `json:"return"`
		}
		if json.Unmarshal([]byte(line), &m) == nil && m.ID == 1 {
			return m.Return.Status
		}
	}
}

func TestStartIncomingDefer(t *testing.T) {
	kernel := needKernel(t)
	dir := vmDir(t)
	cfg := Config{
		Spec:     &ferryv1.VMSpec{Name: "dest", Vcpus: 1, MemoryMib: 128, Boot: &ferryv1.BootSpec{Kernel: kernel}},
		Accel:    "tcg",
		Paths:    PathsFor(dir),
		Incoming: "defer",
	}
	p := startVM(t, cfg)
	if got := qmpStatus(t, cfg.Paths.QMPSocket); got != "inmigrate" {
		t.Errorf("status = %q, want inmigrate", got)
	}
	if !p.Alive() {
		t.Error("not alive")
	}
}
