package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	ferryv1 "github.com/ferryvm/ferry/gen/ferry/v1"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// setStaleLock writes what a migration whose unlock was lost leaves in the
// VM record: state migrating and the migration's id.
func (c *cluster) setStaleLock(name, id string) {
	c.t.Helper()
	st := c.etcdStore()
	if _, err := st.UpdateVM(context.Background(), name, false, func(v *ferryv1.VM) error {
		v.State, v.MigrationId = "migrating", id
		return nil
	}); err != nil {
		c.t.Fatal(err)
	}
	c.t.Logf("VM %s record set to migrating with migrationId %s (a lost unlock)", name, id)
}

// waitNoReservations waits until etcd holds no capacity reservation (each
// create and migration releases its own when it ends).
func (c *cluster) waitNoReservations(timeout time.Duration) {
	c.t.Helper()
	cl := c.etcdStore().Client()
	deadline := time.Now().Add(timeout)
	for {
		resp, err := cl.Get(ctxT(c.t, 5*time.Second), "/ferry/reservations/", clientv3.WithPrefix(), clientv3.WithKeysOnly())
		if err == nil && len(resp.Kvs) == 0 {
			return
		}
		if time.Now().After(deadline) {
			var keys []string
			if resp != nil {
				for _, kv := range resp.Kvs {
					keys = append(keys, string(kv.Key))
				}
			}
			c.t.Fatalf("reservations left after %s: %v (err %v)", timeout, keys, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// serverLogHas reports whether the server log contains every word.
func (c *cluster) serverLogHas(words ...string) bool {
	b, _ := os.ReadFile(filepath.Join(c.dir, "logs", "server.log"))
	for _, line := range strings.Split(string(b), "\n") {
		ok := true
		for _, w := range words {
			ok = ok && strings.Contains(line, w)
		}
		if ok {
			return true
		}
	}
	return false
}

// TestVMOperationsAfterFailedMigration: while a migration really runs, VM
// operations are refused with a message naming it and `ferry migration
// cancel`; once it failed (destination QEMU killed mid-transfer) — even if
// the record was left `migrating` with its id — the VM can be stopped,
// started, migrated again (completing) and deleted, each leaving nothing
// behind.
func TestVMOperationsAfterFailedMigration(t *testing.T) {
	c, _, m, _ := failureSetup(t, "vmops", "198.19.0.51")
	const name = "vmops"

	// In flight: refused, naming the migration and how to cancel it.
	for _, op := range [][]string{{"vm", "stop", name}, {"vm", "delete", name}, {"vm", "start", name}} {
		_, errOut, err := c.ferry(op...)
		t.Logf("ferry %s during the migration: err %v, %s", strings.Join(op, " "), err, strings.TrimSpace(errOut))
		if err == nil || !strings.Contains(errOut, m.Id) || !strings.Contains(errOut, "ferry migration cancel") {
			t.Fatalf("ferry %s during migration %s: err %v, stderr %q; want a refusal naming the migration and `ferry migration cancel`", strings.Join(op, " "), m.Id, err, errOut)
		}
	}

	pids := qemuPIDs(t, c.hostNS("h2"))
	if len(pids) != 1 {
		t.Fatalf("QEMUs in h2 during the transfer = %v, want one (the destination)", pids)
	}
	if err := syscall.Kill(pids[0], syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	m, _ = c.waitFinal(m.Id, 60*time.Second)
	if m.Status != "failed" {
		t.Fatalf("migration %s ended %s, want failed", m.Id, m.Status)
	}
	c.checkOnHost(name, "h1")
	c.waitNoLeftovers("h2", name, 15*time.Second)
	c.waitNoReservations(10 * time.Second)

	// The failed migration's unlock was lost: the record still says migrating.
	c.setStaleLock(name, m.Id)
	c.mustFerry("vm", "stop", name, "--force")
	stopped := c.waitVM(name, 20*time.Second, "stopped and unlocked", func(v *ferryv1.VM) bool {
		return v.State == "stopped" && v.MigrationId == ""
	})
	if !c.serverLogHas("clearing a stale migration lock", m.Id) {
		t.Errorf("server log does not record clearing the stale lock of %s", m.Id)
	}
	if p := qemuPIDs(t, c.hostNS("h1")); len(p) != 0 {
		t.Fatalf("QEMU left on h1 after stop: %v", p)
	}
	t.Logf("stopped: state %s generation %d", stopped.State, stopped.Generation)

	// Start again from a stale lock, too.
	c.setStaleLock(name, m.Id)
	c.mustFerry("vm", "start", name)
	c.checkOnHost(name, "h1")
	c.bootID("198.19.0.51", 60*time.Second)

	// Migrate again, from a stale lock: it completes.
	c.setStaleLock(name, m.Id)
	again, wall := c.mustMigrateWait(name, "h2")
	logReport(t, "migration after the failed one", again, wall)
	if again.Status != "completed" || again.Id == m.Id {
		t.Fatalf("second migration %s: status %s, want a new completed migration", again.Id, again.Status)
	}
	c.checkOnHost(name, "h2")
	c.waitNoLeftovers("h1", name, 15*time.Second)
	c.waitNoReservations(10 * time.Second)

	// Delete with a lock whose migration record does not exist at all.
	c.setStaleLock(name, "mig-00000000")
	c.mustFerry("vm", "delete", name)
	if _, errOut, err := c.ferry("vm", "get", name); err == nil || !strings.Contains(errOut, "not found") {
		t.Fatalf("vm get after delete: err %v, stderr %q; want not found", err, errOut)
	}
	for _, h := range []string{"h1", "h2"} {
		c.waitNoLeftovers(h, name, 15*time.Second)
	}
}

// TestFailedCreateLeavesNoQEMU: the agent starts the VM but the server
// never gets the reply (failpoint server/after-agent-start armed once in a
// restarted server): the create fails, the server's undo deletes the VM on
// the host before removing the record, and no QEMU, tap, directory or
// record is left. The same name can then be created normally.
func TestFailedCreateLeavesNoQEMU(t *testing.T) {
	c := upCluster(t, 1)
	ns := c.hostNS("h1")
	fpLog := filepath.Join(c.dir, "failpoints.log")
	server := c.process("server")
	if err := syscall.Kill(server.PID, syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	waitGone(t, server.PID, 15*time.Second)
	argv := append([]string{"env", "FERRY_FAILPOINTS=server/after-agent-start=error(reply lost)*1", "FERRY_FAILPOINTS_LOG=" + fpLog}, server.Argv...)
	if _, err := c.c.StartProcess("", filepath.Join(c.dir, "logs", "server.log"), argv); err != nil {
		t.Fatal(err)
	}
	if err := c.c.WaitHostsReady(ctxT(t, time.Minute), 30*time.Second); err != nil {
		t.Fatal(err)
	}

	const name = "lostreply"
	spec := c.writeSpec(name, "198.19.0.52", "")
	_, errOut, err := c.ferry("vm", "create", "-f", spec)
	t.Logf("ferry vm create with the reply lost: err %v, %s", err, strings.TrimSpace(errOut))
	if err == nil || !strings.Contains(errOut, "removed from host h1 and not recorded") {
		t.Fatalf("create with the reply lost: err %v, stderr %q; want a failure saying the VM was removed from h1", err, errOut)
	}
	if b, _ := os.ReadFile(fpLog); !strings.Contains(string(b), "server/after-agent-start") {
		t.Fatalf("failpoint server/after-agent-start did not fire (log %q)", b)
	}
	agentLog, _ := os.ReadFile(filepath.Join(c.dir, "logs", "h1-agent.log"))
	if !strings.Contains(string(agentLog), "VM started") || !strings.Contains(string(agentLog), name) {
		t.Fatalf("the agent never started %s, so the test proves nothing; agent log:\n%s", name, agentLog)
	}
	if _, errOut, err := c.ferry("vm", "get", name); err == nil || !strings.Contains(errOut, "not found") {
		t.Fatalf("vm get after the failed create: err %v, stderr %q; want not found", err, errOut)
	}
	if p := qemuPIDs(t, ns); len(p) != 0 {
		t.Fatalf("QEMU left in %s after the failed create: %v", ns, p)
	}
	if got := taps(t, ns); len(got) != 0 {
		t.Fatalf("taps left in %s: %v", ns, got)
	}
	if _, err := os.Stat(c.vmDir("h1", name)); !os.IsNotExist(err) {
		t.Fatalf("VM directory %s left (stat err %v)", c.vmDir("h1", name), err)
	}
	if !c.serverLogHas("undo create: VM removed from its host", name) {
		t.Errorf("server log does not record the undo removing %s from h1", name)
	}

	// The point fired once: the same create now works.
	c.mustFerry("vm", "create", "-f", spec)
	c.waitVM(name, 60*time.Second, "running", func(v *ferryv1.VM) bool { return v.State == "running" })
	c.mustFerry("vm", "delete", name)
	c.waitNoLeftovers("h1", name, 15*time.Second)
}

// inMountNS runs argv in the mount namespace of pid.
func inMountNS(pid int, argv ...string) (string, error) {
	out, err := exec.Command("nsenter", append([]string{"-t", fmt.Sprint(pid), "-m", "--"}, argv...)...).CombinedOutput()
	return string(out), err
}

// markers lists the shared-disk check markers in dir as seen by pid's mount
// namespace (0: this process's).
func markers(t *testing.T, pid int, dir string) []string {
	t.Helper()
	var names []string
	if pid == 0 {
		entries, err := os.ReadDir(dir)
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range entries {
			names = append(names, e.Name())
		}
	} else {
		out, err := inMountNS(pid, "ls", "-1", dir)
		if err != nil {
			t.Fatalf("ls %s in the mount namespace of %d: %v\n%s", dir, pid, err, out)
		}
		names = strings.Fields(out)
	}
	var found []string
	for _, n := range names {
		if strings.Contains(n, ".ferry-shared-check-") {
			found = append(found, n)
		}
	}
	return found
}

func qemuImg(t *testing.T, pid int, path string) {
	t.Helper()
	argv := []string{"qemu-img", "create", "-q", "-f", "qcow2", path, "64M"}
	var out []byte
	var err error
	if pid == 0 {
		out, err = exec.Command(argv[0], argv[1:]...).CombinedOutput()
	} else {
		var s string
		s, err = inMountNS(pid, argv...)
		out = []byte(s)
	}
	if err != nil {
		t.Fatalf("%v: %v\n%s", argv, err, out)
	}
}

// TestSharedDiskCheck: a live migration of a VM with a real shared qcow2
// image (in a directory both hosts see) completes, keeps the image and
// leaves no check marker. A disk whose path names a different file on the
// destination — h2's agent gets a tmpfs mounted over that directory in
// its own mount namespace (every `ip netns exec` process has one), holding
// another image of the same name, like a host where the NFS mount is
// missing — is refused, for --dry-run and for a real migration, with a
// message naming the disk and its path, and nothing changes. `shared`
// together with `size` is refused at create.
func TestSharedDiskCheck(t *testing.T) {
	c := upCluster(t, 2)

	// shared + size is refused by the spec check.
	bad := c.writeSpec("sharedsize", "198.19.0.55", "disks:\n  - size: 64MiB\n    shared: true\n")
	if _, errOut, err := c.ferry("vm", "create", "-f", bad); err == nil || !strings.Contains(errOut, "spec.disks[0].shared") {
		t.Fatalf("create with shared + size: err %v, stderr %q; want a refusal naming spec.disks[0].shared", err, errOut)
	}

	shared := filepath.Join(c.dir, "shared")
	if err := os.MkdirAll(shared, 0o755); err != nil {
		t.Fatal(err)
	}
	disk := filepath.Join(shared, "data.qcow2")
	qemuImg(t, 0, disk)
	before, err := os.Stat(disk)
	if err != nil {
		t.Fatal(err)
	}
	const name, ip = "shdisk", "198.19.0.53"
	c.mustFerry("vm", "create", "--host", "h1", "-f", c.writeSpec(name, ip, fmt.Sprintf("disks:\n  - path: %s\n    shared: true\n", disk)))
	c.checkOnHost(name, "h1")
	boot := c.bootID(ip, 60*time.Second)

	out, errOut, err := c.ferry("migrate", name, "--to", "h2", "--dry-run")
	if err != nil {
		t.Fatalf("dry run with a shared disk both hosts see: %v\n%s%s", err, out, errOut)
	}
	m, wall := c.mustMigrateWait(name, "h2")
	logReport(t, "shared-disk migration", m, wall)
	c.checkOnHost(name, "h2")
	if got := c.bootID(ip, 20*time.Second); got != boot {
		t.Errorf("boot_id changed across the live migration: %s -> %s", boot, got)
	}
	if after, err := os.Stat(disk); err != nil || after.Size() < before.Size() {
		t.Fatalf("shared image after the migration: %v (size %d before)", err, before.Size())
	}
	if left := markers(t, 0, shared); len(left) != 0 {
		t.Errorf("markers left in %s: %v", shared, left)
	}
	c.waitNoLeftovers("h1", name, 15*time.Second)

	// A path that names another file on h2.
	other := filepath.Join(c.dir, "notshared")
	if err := os.MkdirAll(other, 0o755); err != nil {
		t.Fatal(err)
	}
	disk2 := filepath.Join(other, "data.qcow2")
	qemuImg(t, 0, disk2)
	agent := c.process("agent", "h2")
	self, _ := os.Readlink("/proc/self/ns/mnt")
	theirs, _ := os.Readlink(fmt.Sprintf("/proc/%d/ns/mnt", agent.PID))
	if self == "" || self == theirs {
		t.Fatalf("h2's agent shares this process's mount namespace (%q): the test cannot give it a different file", self)
	}
	if out, err := inMountNS(agent.PID, "mount", "-t", "tmpfs", "-o", "size=16m", "ferry-e2e-notshared", other); err != nil {
		t.Fatalf("mount tmpfs over %s for h2's agent: %v\n%s", other, err, out)
	}
	t.Cleanup(func() { _, _ = inMountNS(agent.PID, "umount", other) })
	qemuImg(t, agent.PID, disk2)

	const name2, ip2 = "unshared", "198.19.0.54"
	c.mustFerry("vm", "create", "--host", "h1", "-f", c.writeSpec(name2, ip2, fmt.Sprintf("disks:\n  - path: %s\n    shared: true\n", disk2)))
	vm := c.checkOnHost(name2, "h1")
	for _, args := range [][]string{{"--dry-run"}, {"--wait"}} {
		_, errOut, err := c.ferry(append([]string{"migrate", name2, "--to", "h2"}, args...)...)
		t.Logf("ferry migrate %s --to h2 %v: err %v, %s", name2, args, err, strings.TrimSpace(errOut))
		if err == nil || !strings.Contains(errOut, "spec.disks[0]") || !strings.Contains(errOut, disk2) || !strings.Contains(errOut, "h2") {
			t.Fatalf("migrate %v of a disk h2 does not share: err %v, stderr %q; want a refusal naming spec.disks[0], %s and h2", args, err, errOut, disk2)
		}
	}
	after, err := c.getVM(name2)
	if err != nil {
		t.Fatal(err)
	}
	if after.Host != "h1" || after.Generation != vm.Generation || after.MigrationId != "" || after.State != "running" {
		t.Errorf("record changed by the refused migration: host %s generation %d→%d migrationId %q state %s", after.Host, vm.Generation, after.Generation, after.MigrationId, after.State)
	}
	for _, mm := range c.listMigrations() {
		if mm.Vm == name2 {
			t.Errorf("refused migration recorded: %s %s", mm.Id, mm.Status)
		}
	}
	if left := markers(t, 0, other); len(left) != 0 {
		t.Errorf("markers left in %s on h1's side: %v", other, left)
	}
	if left := markers(t, agent.PID, other); len(left) != 0 {
		t.Errorf("markers left in %s on h2's side: %v", other, left)
	}
	if p := qemuPIDs(t, c.hostNS("h2")); len(p) != 1 {
		t.Errorf("QEMUs on h2 = %v, want only %s's", p, name)
	}
	if _, err := os.Stat(c.vmDir("h2", name2)); !os.IsNotExist(err) {
		t.Errorf("refused migration left %s (stat err %v)", c.vmDir("h2", name2), err)
	}
}
