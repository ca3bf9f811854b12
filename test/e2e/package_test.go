package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	ferryv1 "github.com/ferryvm/ferry/gen/ferry/v1"
	"google.golang.org/protobuf/encoding/protojson"
)

// e2ePackageVersion is the version the tests build the package with.
const e2ePackageVersion = "1.4.0~e2e"

// hostsByName is `ferry host list -o json` by host name.
func (c *cluster) hostsByName() map[string]*ferryv1.Host {
	c.t.Helper()
	out := c.mustFerry("host", "list", "-o", "json")
	hl := &ferryv1.ListHostsResponse{}
	if err := protojson.Unmarshal([]byte(out), hl); err != nil {
		c.t.Fatalf("decode host list: %v\n%s", err, out)
	}
	m := map[string]*ferryv1.Host{}
	for _, h := range hl.Hosts {
		m[h.Name] = h
	}
	return m
}

// checkStream fails the test if the guest's TCP counter stream broke or
// skipped, or does not flow now.
func checkStream(t *testing.T, w *streamWatch, when string) {
	t.Helper()
	if !w.flowing(2 * time.Second) {
		t.Fatalf("%s: the guest's TCP stream does not flow", when)
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.readErr != nil || len(w.anomalies) > 0 {
		t.Fatalf("%s: TCP stream broken (%v) or irregular %v", when, w.readErr, w.anomalies)
	}
	t.Logf("%s: TCP stream intact, %d lines, longest gap %s", when, w.lines, w.maxGap.Round(time.Millisecond))
}

// TestInstalledPackageMigratesVM installs the .deb into a scratch root
// (dpkg -x), starts the server and two agents from the installed binary
// with the shipped /etc/ferry configs (by hand, no systemd; paths and
// addresses by flags), creates a VM with the installed client and
// live-migrates it h1→h2 while a client reads its TCP stream.
func TestInstalledPackageMigratesVM(t *testing.T) {
	in := upInstalled(t, 2, e2ePackageVersion, false)
	in.startAgent("h1", "")
	in.startAgent("h2", "")
	if err := in.c.WaitHostsReady(ctxT(t, time.Minute), 45*time.Second); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"h1", "h2"} {
		exe, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", in.agents[name].pid))
		if err != nil || exe != in.bin {
			t.Fatalf("agent %s runs %q (%v), want the installed %s", name, exe, err, in.bin)
		}
	}
	table := in.mustFerry("host", "list")
	if strings.Count(table, e2ePackageVersion) != 2 || !strings.Contains(table, "FERRY") {
		t.Fatalf("host list does not show both agents at %s:\n%s", e2ePackageVersion, table)
	}
	if v := strings.TrimSpace(in.mustFerry("version")); !strings.Contains(v, e2ePackageVersion) {
		t.Fatalf("installed ferry version = %q, want %s", v, e2ePackageVersion)
	}

	const name, ip = "pkg", "198.19.0.61"
	boot := in.bootGuest(name, ip, "")
	stream := in.watchStream(ip)
	time.Sleep(500 * time.Millisecond)
	m, wall := in.mustMigrateWait(name, "h2")
	logReport(t, "installed migration", m, wall)
	checkLiveReport(t, m, name, "h1", "h2")
	checkStream(t, stream, "after the migration")
	in.checkOnHost(name, "h2")
	if got := in.bootID(ip, 20*time.Second); got != boot {
		t.Fatalf("boot_id %s after the migration, want %s (the guest rebooted)", got, boot)
	}
	in.waitNoLeftovers("h1", name, 20*time.Second)
}

// TestAgentCgroupKillLeavesVMs kills the agent's whole process group and
// then its whole cgroup (cgroup.kill, what a service manager stopping the
// agent does) while a VM runs: QEMU, in its own process group and its own
// cgroup (--qemu-scope cgroup), keeps running with the guest's boot_id
// and a client's TCP stream unbroken; the restarted agent reattaches (the
// VM is reported running with the same QEMU) and migrates the VM, and the
// old QEMU's cgroup is removed after it exits.
func TestAgentCgroupKillLeavesVMs(t *testing.T) {
	in := upInstalled(t, 2, e2ePackageVersion, true)
	a := in.startAgent("h1", "")
	in.startAgent("h2", "")
	if err := in.c.WaitHostsReady(ctxT(t, time.Minute), 45*time.Second); err != nil {
		t.Fatal(err)
	}
	const name, ip = "cg", "198.19.0.62"
	boot := in.bootGuest(name, ip, "")
	vm := in.checkOnHost(name, "h1")
	qpid := int(vm.Pid)

	agentCG, qemuCG := procCgroup(t, a.pid), procCgroup(t, qpid)
	t.Logf("agent pid %d in %s, QEMU pid %d in %s", a.pid, agentCG, qpid, qemuCG)
	if agentCG != "/"+filepath.Base(in.cgroup)+"/agent-h1" {
		t.Fatalf("agent in cgroup %s, want %s/agent-h1", agentCG, in.cgroup)
	}
	if filepath.Dir(qemuCG) != "/"+filepath.Base(in.cgroup)+"/vms" || !strings.HasPrefix(filepath.Base(qemuCG), "ferry-vm-cg-") {
		t.Fatalf("QEMU in cgroup %s, want %s/vms/ferry-vm-cg-N", qemuCG, in.cgroup)
	}
	if pg, _ := syscall.Getpgid(qpid); pg == a.pid {
		t.Fatalf("QEMU pid %d is in the agent's process group %d", qpid, a.pid)
	}
	stream := in.watchStream(ip)
	time.Sleep(500 * time.Millisecond)

	// Kill the agent's process group, then everything in its cgroup.
	if err := syscall.Kill(-a.pid, syscall.SIGKILL); err != nil {
		t.Fatalf("kill the agent's process group: %v", err)
	}
	if err := os.WriteFile(filepath.Join(a.cgroup, "cgroup.kill"), []byte("1"), 0); err != nil {
		t.Fatalf("cgroup.kill: %v", err)
	}
	waitGone(t, a.pid, 10*time.Second)
	deadline := time.Now().Add(5 * time.Second)
	for {
		procs, err := os.ReadFile(filepath.Join(a.cgroup, "cgroup.procs"))
		if err == nil && len(strings.TrimSpace(string(procs))) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("agent cgroup still holds %q (%v) after cgroup.kill", procs, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	time.Sleep(time.Second)
	if !alive(qpid) {
		t.Fatalf("QEMU pid %d died with the agent's cgroup", qpid)
	}
	checkStream(t, stream, "with the agent dead")

	// Restart the agent: it reattaches to the running QEMU.
	off := a.logSize()
	in.run(a)
	line := a.waitLog(t, off, 30*time.Second, `msg="reattached VM"`, "vm="+name, fmt.Sprintf("pid=%d", qpid))
	t.Logf("restarted agent: %s", line)
	a.waitLog(t, off, 30*time.Second, "QEMU capabilities")
	if !alive(a.pid) {
		t.Fatalf("the restarted agent (pid %d) is not running", a.pid)
	}
	if got := procCgroup(t, a.pid); got != agentCG {
		t.Fatalf("restarted agent in cgroup %s, want %s", got, agentCG)
	}
	if err := in.c.WaitHostsReady(ctxT(t, time.Minute), 45*time.Second); err != nil {
		t.Fatal(err)
	}
	again := in.waitVM(name, 30*time.Second, "running after reattach", func(v *ferryv1.VM) bool { return v.State == "running" })
	if int(again.Pid) != qpid || again.Host != "h1" {
		t.Fatalf("after the restart: pid %d on %s, want %d on h1 (reattach, not restart)", again.Pid, again.Host, qpid)
	}
	qmpOK := false
	deadline = time.Now().Add(20 * time.Second)
	for !qmpOK && time.Now().Before(deadline) {
		for _, st := range in.hostsByName()["h1"].GetVms() {
			qmpOK = qmpOK || (st.Name == name && st.QemuStatus == "running")
		}
		if !qmpOK {
			time.Sleep(500 * time.Millisecond)
		}
	}
	if !qmpOK {
		t.Fatalf("the restarted agent does not report QMP status running for %s", name)
	}
	if got := in.bootID(ip, 20*time.Second); got != boot {
		t.Fatalf("boot_id %s after the agent restart, want %s", got, boot)
	}

	// The reattached agent migrates the VM.
	m, wall := in.mustMigrateWait(name, "h2")
	logReport(t, "migration after reattach", m, wall)
	checkLiveReport(t, m, name, "h1", "h2")
	checkStream(t, stream, "after the migration")
	in.checkOnHost(name, "h2")
	if got := in.bootID(ip, 20*time.Second); got != boot {
		t.Fatalf("boot_id %s after the migration, want %s", got, boot)
	}
	in.waitNoLeftovers("h1", name, 20*time.Second)
	oldCG := filepath.Join(filepath.Dir(in.cgroup), qemuCG)
	deadline = time.Now().Add(10 * time.Second)
	for {
		if _, err := os.Stat(oldCG); os.IsNotExist(err) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the source QEMU's cgroup %s is still there after it exited", oldCG)
		}
		time.Sleep(100 * time.Millisecond)
	}
	newCG := procCgroup(t, int(in.checkOnHost(name, "h2").Pid))
	if filepath.Dir(newCG) != "/"+filepath.Base(in.cgroup)+"/vms" {
		t.Fatalf("destination QEMU in cgroup %s, want one under %s/vms", newCG, in.cgroup)
	}
}

// TestAgentVersionSkewRefused runs the installed server (1.4.0~e2e) with
// agents linked with injected versions: 1.2.0 (two minor versions older)
// is refused, with a message naming both versions in the agent's and the
// server's logs, and never listed; 1.5.0 (one newer) and the package's own
// are accepted, and `ferry host list` shows each agent's version.
func TestAgentVersionSkewRefused(t *testing.T) {
	in := upInstalled(t, 3, e2ePackageVersion, false)
	old, near := buildVersioned(t, "1.2.0"), buildVersioned(t, "1.5.0")
	in.startAgent("h1", old)
	in.startAgent("h2", near)
	in.startAgent("h3", "")

	want := "server " + e2ePackageVersion + ", agent 1.2.0"
	deadline := time.Now().Add(45 * time.Second)
	for {
		hosts := in.hostsByName()
		agentLog, _ := os.ReadFile(in.agents["h1"].log)
		if hosts["h2"].GetState() == "ready" && hosts["h3"].GetState() == "ready" && strings.Contains(string(agentLog), want) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after 45s: hosts %v; h1's log lacks %q:\n%s", hosts, want, agentLog)
		}
		time.Sleep(300 * time.Millisecond)
	}
	hosts := in.hostsByName()
	if h, ok := hosts["h1"]; ok {
		t.Fatalf("the 1.2.0 agent was registered: %v", h)
	}
	if v := hosts["h2"].GetFerryVersion(); v != "1.5.0" {
		t.Fatalf("h2 reports ferry version %q, want 1.5.0", v)
	}
	if v := hosts["h3"].GetFerryVersion(); v != e2ePackageVersion {
		t.Fatalf("h3 reports ferry version %q, want %s", v, e2ePackageVersion)
	}
	table := in.mustFerry("host", "list")
	t.Logf("ferry host list:\n%s", table)
	for _, w := range []string{"FERRY", "1.5.0", e2ePackageVersion} {
		if !strings.Contains(table, w) {
			t.Fatalf("host list lacks %q:\n%s", w, table)
		}
	}
	agentLog, _ := os.ReadFile(in.agents["h1"].log)
	for _, l := range strings.Split(string(agentLog), "\n") {
		if strings.Contains(l, want) {
			t.Logf("refused agent logs: %s", l)
			break
		}
	}
	serverLog, _ := os.ReadFile(filepath.Join(in.dir, "logs", "server.log"))
	if !strings.Contains(string(serverLog), "agent refused") || !strings.Contains(string(serverLog), "agent_version=1.2.0") {
		t.Fatalf("server log does not record the refusal of the 1.2.0 agent:\n%s", serverLog)
	}
}
