package guest_test

// TestGuestBoots boots the real test guest (kernel + initramfs from
// hack/build-guest.sh) under qemu-system-x86_64 with TCG and checks the
// guest contract end to end: serial READY line, GET /status, the counter
// stream on 7000, the memory dirtier, the disk writer (records checked on
// the image afterwards) and ACPI power-off via QMP system_powerdown.
//
// It always runs. Without qemu or a cloud kernel it FAILS with a message
// naming the package to install, unless FERRY_SKIP_QEMU=1 is set.
//
// Networking is QEMU user mode (slirp) with host forwards bound to
// 127.0.0.1 only: no traffic leaves the machine.

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ferryvm/ferry/guest/guestapi"
	"github.com/ferryvm/ferry/internal/guestagent"
)

const readyTimeout = 60 * time.Second

type artifacts struct{ kernel, initrd string }

func TestGuestBoots(t *testing.T) {
	if os.Getenv("FERRY_SKIP_QEMU") == "1" {
		t.Skip("FERRY_SKIP_QEMU=1: not booting the guest")
	}
	qemu, err := exec.LookPath("qemu-system-x86_64")
	if err != nil {
		t.Fatalf("qemu-system-x86_64 not found (%v): apt-get install qemu-system-x86, or set FERRY_SKIP_QEMU=1 to skip this test", err)
	}
	art := guestArtifacts(t)

	t.Run("net-dirty-stream", func(t *testing.T) {
		t.Parallel()
		testNetDirtyStream(t, qemu, art)
	})
	t.Run("disk-poweroff", func(t *testing.T) {
		t.Parallel()
		testDiskPoweroff(t, qemu, art)
	})
}

func testNetDirtyStream(t *testing.T, qemu string, art artifacts) {
	// ferry.disk without a disk attached: the writer must report an error
	// in /status, not crash the guest.
	qga := filepath.Join(t.TempDir(), "qga.sock")
	g := boot(t, qemu, art, "console=ttyS0 ferry.ip=10.0.2.15/24 ferry.dirty=64:16 ferry.disk=64",
		"-device", "virtio-serial-pci,id=vser0",
		"-chardev", "socket,id=qga0,path="+qga+",server=on,wait=off",
		"-device", "virtserialport,bus=vser0.0,chardev=qga0,name=org.qemu.guest_agent.0")
	id := g.waitReady(t)

	st := g.status(t)
	if !regexp.MustCompile(`^[0-9a-f]{32}$`).MatchString(st.BootID) {
		t.Fatalf("boot_id %q is not 32 hex chars", st.BootID)
	}
	if st.BootID != id {
		t.Fatalf("/status boot_id %s != READY boot_id %s", st.BootID, id)
	}
	if st.WSSMiB != 64 || st.RateMiBps != 16 {
		t.Fatalf("wss_mib=%d rate_mibps=%d, want 64/16", st.WSSMiB, st.RateMiBps)
	}
	if st.IP != "10.0.2.15/24" || st.NetError != "" || len(st.ConfigErrors) != 0 {
		t.Fatalf("ip=%q net_error=%q config_errors=%q", st.IP, st.NetError, st.ConfigErrors)
	}
	s1 := g.pollStatus(t, 15*time.Second, "dirtier running", func(s guestapi.Status) bool { return s.DirtyState == "running" })

	// Counter stream: 200+ consecutive lines from 0, a second client also
	// starts at 0, and stream_clients counts both.
	c1 := g.dialStream(t)
	expectCounters(t, c1, 0, 250)
	c2 := g.dialStream(t)
	expectCounters(t, c2, 0, 5)
	g.pollStatus(t, 5*time.Second, "stream_clients=2", func(s guestapi.Status) bool { return s.StreamClients == 2 })
	expectCounters(t, c1, 250, 10) // first client unaffected
	c1.Close()
	c2.Close()
	g.pollStatus(t, 5*time.Second, "stream_clients=0 after close", func(s guestapi.Status) bool { return s.StreamClients == 0 })

	// Dirtier: pages_dirtied grows, at roughly the configured rate.
	if wait := s1.UptimeS + 1.5 - g.status(t).UptimeS; wait > 0 { // >= 1.5 s window
		time.Sleep(time.Duration(wait * float64(time.Second)))
	}
	s2 := g.status(t)
	if s2.PagesDirtied <= s1.PagesDirtied {
		t.Fatalf("pages_dirtied did not grow: %d -> %d", s1.PagesDirtied, s2.PagesDirtied)
	}
	rate := float64(s2.PagesDirtied-s1.PagesDirtied) * guestapi.PageSize / (1 << 20) / (s2.UptimeS - s1.UptimeS)
	t.Logf("dirtier: %.2f MiB/s over %.2fs (configured 16; achieved_mibps=%.2f, skipped=%d, fill %.2fs)",
		rate, s2.UptimeS-s1.UptimeS, s2.AchievedMiBps, s2.PagesSkipped, s2.FillS)
	if rate < 8 || rate > 24 {
		t.Fatalf("dirty rate %.2f MiB/s, want ~16", rate)
	}

	es := g.pollStatus(t, 15*time.Second, "disk_error without /dev/vda", func(s guestapi.Status) bool { return s.DiskError != "" })
	if !strings.Contains(es.DiskError, "/dev/vda") || es.LastSeq != 0 || es.DiskState != "error" {
		t.Fatalf("disk without device: state=%q error=%q last_seq=%d", es.DiskState, es.DiskError, es.LastSeq)
	}
	if es.BootID != id {
		t.Fatalf("boot id changed: guest rebooted?")
	}

	// The guest agent channel answers guest-sync-delimited and guest-ping.
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	if err := guestagent.SyncPing(ctx, qga); err != nil {
		t.Fatalf("guest-ping over the guest agent channel: %v\nserial:\n%s", err, g.serialTail())
	}
	// POST /stop-kernel: the kernel panics and hangs (the command line's
	// panic=-1 is overridden): nothing answers any more, QEMU keeps running.
	resp, err := httpClient.Post("http://"+g.httpAddr+guestapi.StopKernelPath+"?delay_ms=0", "", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusAccepted {
		t.Fatalf("POST %s: %s, want 202", guestapi.StopKernelPath, resp.Status)
	}
	deadline := time.Now().Add(15 * time.Second)
	for !strings.Contains(g.serialTail(), "Kernel panic") {
		if time.Now().After(deadline) {
			t.Fatalf("no kernel panic within 15s of POST /stop-kernel\nserial:\n%s", g.serialTail())
		}
		time.Sleep(100 * time.Millisecond)
	}
	if !strings.Contains(g.serialTail(), guestapi.StopKernelLine) {
		t.Errorf("no %q line before the panic", guestapi.StopKernelLine)
	}
	pctx, pcancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer pcancel()
	if err := guestagent.SyncPing(pctx, qga); !errors.Is(err, guestagent.ErrNoReply) {
		t.Errorf("guest-ping after the kernel stopped: %v, want no reply", err)
	}
	select {
	case <-g.exited:
		t.Errorf("QEMU exited: the stopped kernel should hang, not reboot or power off")
	default:
	}
}

func testDiskPoweroff(t *testing.T, qemu string, art artifacts) {
	img := filepath.Join(t.TempDir(), "disk.raw")
	const size = 64 << 20
	if err := os.WriteFile(img, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(img, size); err != nil {
		t.Fatal(err)
	}
	g := boot(t, qemu, art, "console=ttyS0 ferry.ip=10.0.2.15/24 ferry.disk=256",
		"-drive", "file="+img+",if=none,id=d0,format=raw",
		"-device", "virtio-blk-pci,drive=d0")
	id := g.waitReady(t)

	s1 := g.pollStatus(t, 15*time.Second, "last_seq > 0", func(s guestapi.Status) bool { return s.LastSeq > 0 || s.DiskError != "" })
	if s1.DiskError != "" || s1.DiskRecords != size/guestapi.RecordSize || s1.DiskRateKiBps != 256 {
		t.Fatalf("disk writer: state=%q error=%q records=%d rate=%d", s1.DiskState, s1.DiskError, s1.DiskRecords, s1.DiskRateKiBps)
	}
	time.Sleep(2 * time.Second)
	s2 := g.status(t)
	if s2.LastSeq <= s1.LastSeq || s2.DiskError != "" {
		t.Fatalf("last_seq did not grow: %d -> %d (error %q)", s1.LastSeq, s2.LastSeq, s2.DiskError)
	}
	rate := float64(s2.LastSeq-s1.LastSeq) * guestapi.RecordSize / 1024 / (s2.UptimeS - s1.UptimeS)
	t.Logf("disk writer: %.0f KiB/s over %.2fs (configured 256), last_seq %d", rate, s2.UptimeS-s1.UptimeS, s2.LastSeq)
	// Each record costs a host fdatasync (virtio-blk flush), so on a busy or
	// slow host the writer can be latency-bound below the configured rate;
	// only gross pacing bugs fail here.
	if rate < 64 || rate > 400 {
		t.Fatalf("disk rate %.0f KiB/s, want ~256", rate)
	}

	// ACPI power button: the guest syncs and powers off, QEMU exits.
	t0 := time.Now()
	g.qmp(t, "system_powerdown")
	select {
	case <-g.exited:
		t.Logf("powered off %v after system_powerdown", time.Since(t0).Round(time.Millisecond))
	case <-time.After(20 * time.Second):
		t.Fatalf("guest did not power off within 20s of system_powerdown\nserial:\n%s", g.serialTail())
	}

	// Every record up to last_seq is on the image, in order, intact.
	data, err := os.ReadFile(img)
	if err != nil {
		t.Fatal(err)
	}
	records := uint64(size / guestapi.RecordSize)
	var n uint64
	for ; n < records; n++ {
		r, err := guestapi.DecodeRecord(data[n*guestapi.RecordSize:])
		if errors.Is(err, guestapi.ErrNoRecord) {
			break
		}
		if err != nil {
			t.Fatalf("slot %d: %v", n, err)
		}
		if r.Seq != n+1 || r.BootIDHex() != id {
			t.Fatalf("slot %d: seq %d boot %s, want seq %d boot %s", n, r.Seq, r.BootIDHex(), n+1, id)
		}
	}
	if n < s2.LastSeq {
		t.Fatalf("image holds %d records, but /status reported last_seq %d durable", n, s2.LastSeq)
	}
	t.Logf("image: %d intact consecutive records (last_seq seen %d)", n, s2.LastSeq)
}

// ---- guest artifacts ------------------------------------------------------

func repoRoot(t *testing.T) string {
	root, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(root, "hack", "build-guest.sh")); err != nil {
		t.Fatalf("cannot find hack/build-guest.sh from %s: %v", root, err)
	}
	return root
}

// guestArtifacts returns build/guest/{vmlinuz,initrd.img} when present and
// newer than the guest sources, else builds a fresh pair into a temp dir.
func guestArtifacts(t *testing.T) artifacts {
	root := repoRoot(t)
	dir := filepath.Join(root, "build", "guest")
	a := artifacts{filepath.Join(dir, "vmlinuz"), filepath.Join(dir, "initrd.img")}
	if fi, err := os.Stat(a.initrd); err == nil {
		if _, err := os.Stat(a.kernel); err == nil {
			newest, src := newestSource(t, root)
			if !newest.After(fi.ModTime()) {
				t.Logf("using %s", dir)
				return a
			}
			t.Logf("%s is older than %s: building a fresh guest", a.initrd, src)
		}
	}
	out := t.TempDir()
	cmd := exec.Command("bash", filepath.Join(root, "hack", "build-guest.sh"), out)
	cmd.Dir = root
	b, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("hack/build-guest.sh failed (%v); set FERRY_SKIP_QEMU=1 to skip this test:\n%s", err, b)
	}
	return artifacts{filepath.Join(out, "vmlinuz"), filepath.Join(out, "initrd.img")}
}

func newestSource(t *testing.T, root string) (time.Time, string) {
	var newest time.Time
	var which string
	consider := func(p string) {
		if fi, err := os.Stat(p); err == nil && fi.ModTime().After(newest) {
			newest, which = fi.ModTime(), p
		}
	}
	consider(filepath.Join(root, "hack", "build-guest.sh"))
	consider(filepath.Join(root, "go.mod"))
	consider(filepath.Join(root, "go.sum"))
	filepath.WalkDir(filepath.Join(root, "guest"), func(p string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() && strings.HasSuffix(p, ".go") && !strings.HasSuffix(p, "_test.go") {
			consider(p)
		}
		return nil
	})
	return newest, which
}

// ---- a booted guest --------------------------------------------------------

type guestVM struct {
	cmd        *exec.Cmd
	dir        string
	serial     string
	stderr     string
	qmpSock    string
	streamAddr string
	httpAddr   string
	started    time.Time
	exited     chan struct{}
	waitErr    error
}

func freePort(t *testing.T) int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

func boot(t *testing.T, qemu string, art artifacts, appendLine string, extra ...string) *guestVM {
	t.Helper()
	dir := t.TempDir()
	g := &guestVM{
		dir:     dir,
		serial:  filepath.Join(dir, "serial.log"),
		stderr:  filepath.Join(dir, "qemu.stderr"),
		qmpSock: filepath.Join(dir, "qmp.sock"),
		exited:  make(chan struct{}),
	}
	sp, hp := freePort(t), freePort(t)
	g.streamAddr = fmt.Sprintf("127.0.0.1:%d", sp)
	g.httpAddr = fmt.Sprintf("127.0.0.1:%d", hp)
	args := []string{
		"-machine", "q35", "-accel", "tcg", "-cpu", "qemu64",
		"-m", "512", "-smp", "1", "-nodefaults", "-display", "none", "-no-reboot",
		"-serial", "file:" + g.serial,
		"-qmp", "unix:" + g.qmpSock + ",server=on,wait=off",
		"-kernel", art.kernel, "-initrd", art.initrd,
		"-append", appendLine + " panic=-1",
		"-netdev", fmt.Sprintf("user,id=n0,hostfwd=tcp:127.0.0.1:%d-:%d,hostfwd=tcp:127.0.0.1:%d-:%d", sp, guestapi.StreamPort, hp, guestapi.HTTPPort),
		"-device", "virtio-net-pci,netdev=n0",
	}
	args = append(args, extra...)
	errf, err := os.Create(g.stderr)
	if err != nil {
		t.Fatal(err)
	}
	g.cmd = exec.Command(qemu, args...)
	g.cmd.Stdout = errf
	g.cmd.Stderr = errf
	g.started = time.Now()
	if err := g.cmd.Start(); err != nil {
		errf.Close()
		t.Fatalf("start qemu: %v", err)
	}
	go func() {
		g.waitErr = g.cmd.Wait()
		errf.Close()
		close(g.exited)
	}()
	t.Cleanup(func() {
		select {
		case <-g.exited:
		default:
			g.cmd.Process.Kill() // this QEMU's PID only
			<-g.exited
		}
		if t.Failed() {
			t.Logf("qemu %v\nserial (tail):\n%s", g.cmd.Args, g.serialTail())
		}
	})
	return g
}

func (g *guestVM) serialTail() string {
	b, _ := os.ReadFile(g.serial)
	e, _ := os.ReadFile(g.stderr)
	s := string(b)
	if len(s) > 6000 {
		s = "...\n" + s[len(s)-6000:]
	}
	if len(e) > 0 {
		s += "\nqemu stderr:\n" + string(e)
	}
	return s
}

// waitReady waits for the READY line and returns the boot id.
func (g *guestVM) waitReady(t *testing.T) string {
	t.Helper()
	deadline := time.Now().Add(readyTimeout)
	for {
		b, _ := os.ReadFile(g.serial)
		if m := guestapi.ReadyRe.FindSubmatch(b); m != nil {
			t.Logf("boot-to-READY: %v (qemu start to READY line, TCG)", time.Since(g.started).Round(10*time.Millisecond))
			if n := strings.Count(string(b), guestapi.ReadyPrefix); n != 1 {
				t.Fatalf("READY printed %d times", n)
			}
			return string(m[1])
		}
		select {
		case <-g.exited:
			t.Fatalf("qemu exited before READY (%v)\n%s", g.waitErr, g.serialTail())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("no %q on the serial console within %v\n%s", guestapi.ReadyPrefix, readyTimeout, g.serialTail())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

var httpClient = &http.Client{Timeout: 10 * time.Second}

// status fetches /status and checks the contract's keys are all present.
func (g *guestVM) status(t *testing.T) guestapi.Status {
	t.Helper()
	resp, err := httpClient.Get("http://" + g.httpAddr + "/status")
	if err != nil {
		t.Fatalf("GET /status: %v", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("GET /status: %v", err)
	}
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "application/json" {
		t.Fatalf("GET /status: %s content-type %q: %s", resp.Status, resp.Header.Get("Content-Type"), body)
	}
	var raw map[string]json.RawMessage
	if err := json.Unmarshal(body, &raw); err != nil {
		t.Fatalf("/status is not JSON: %v: %s", err, body)
	}
	for _, k := range []string{"boot_id", "uptime_s", "stream_clients", "wss_mib", "rate_mibps", "pages_dirtied", "achieved_mibps", "ip", "last_seq", "disk_error"} {
		if _, ok := raw[k]; !ok {
			t.Fatalf("/status lacks %q: %s", k, body)
		}
	}
	var st guestapi.Status
	if err := json.Unmarshal(body, &st); err != nil {
		t.Fatalf("/status: %v: %s", err, body)
	}
	return st
}

func (g *guestVM) pollStatus(t *testing.T, timeout time.Duration, what string, ok func(guestapi.Status) bool) guestapi.Status {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		st := g.status(t)
		if ok(st) {
			return st
		}
		if time.Now().After(deadline) {
			b, _ := json.MarshalIndent(st, "", "  ")
			t.Fatalf("timed out after %v waiting for %s; last /status:\n%s", timeout, what, b)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

type streamConn struct {
	net.Conn
	r *bufio.Reader
}

func (g *guestVM) dialStream(t *testing.T) *streamConn {
	t.Helper()
	c, err := net.DialTimeout("tcp", g.streamAddr, 5*time.Second)
	if err != nil {
		t.Fatalf("dial stream: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	return &streamConn{c, bufio.NewReader(c)}
}

// expectCounters reads n lines and checks they are from, from+1, ...
func expectCounters(t *testing.T, c *streamConn, from uint64, n int) {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(30 * time.Second))
	for i := 0; i < n; i++ {
		line, err := c.r.ReadString('\n')
		if err != nil {
			t.Fatalf("stream: after %d lines: %v", i, err)
		}
		v, err := strconv.ParseUint(strings.TrimSuffix(line, "\n"), 10, 64)
		if err != nil {
			t.Fatalf("stream: bad line %q", line)
		}
		if want := from + uint64(i); v != want {
			t.Fatalf("stream: got %d, want %d (line %d)", v, want, i)
		}
	}
}

// qmp runs one QMP command on the VM's monitor socket.
func (g *guestVM) qmp(t *testing.T, command string) {
	t.Helper()
	c, err := net.DialTimeout("unix", g.qmpSock, 5*time.Second)
	if err != nil {
		t.Fatalf("qmp dial: %v", err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	r := bufio.NewReader(c)
	if _, err := r.ReadString('\n'); err != nil { // greeting
		t.Fatalf("qmp greeting: %v", err)
	}
	for _, cmd := range []string{"qmp_capabilities", command} {
		fmt.Fprintf(c, `{"execute":%q}`+"\n", cmd)
		for {
			line, err := r.ReadString('\n')
			if err != nil {
				t.Fatalf("qmp %s: %v", cmd, err)
			}
			var m map[string]json.RawMessage
			json.Unmarshal([]byte(line), &m)
			if _, ok := m["error"]; ok {
				t.Fatalf("qmp %s: %s", cmd, line)
			}
			if _, ok := m["return"]; ok {
				break
			}
		}
	}
}
