package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	ferryv1 "github.com/ferryvm/ferry/gen/ferry/v1"
)

// TestLiveMigrationKeepsTCPSessions migrates a guest that dirties memory
// h1→h2 and back while a client reads its TCP counter stream: the
// connection survives, no counter is lost or repeated, the guest does not
// reboot, the longest stall stays under a second, and at no sample do the
// two QEMUs run at once.
func TestLiveMigrationKeepsTCPSessions(t *testing.T) {
	c := upCluster(t, 2)
	const name, ip = "live", "198.19.0.31"
	boot := c.bootGuest(name, ip, "64:16")

	obs := c.startObserver(name)
	stream := c.watchStream(ip)
	time.Sleep(500 * time.Millisecond)
	if n, _ := stream.snapshot(); n == 0 {
		t.Fatal("no counter line within 500 ms of connecting")
	}

	type leg struct{ from, to string }
	for i, l := range []leg{{"h1", "h2"}, {"h2", "h1"}} {
		start := time.Now()
		m, wall := c.mustMigrateWait(name, l.to)
		end := time.Now()
		logReport(t, fmt.Sprintf("migration %d", i+1), m, wall)
		checkLiveReport(t, m, name, l.from, l.to)
		// An unlimited link moves this guest in about a second; a source that
		// sends nothing for seconds cannot reach the destination.
		firstByte := int64(-1)
		for _, s := range m.Samples {
			if s.TransferredBytes > 0 {
				firstByte = s.TMs
				break
			}
		}
		t.Logf("migration %d: first byte sent %d ms after the start", i+1, firstByte)
		if m.TotalMs > 5000 {
			t.Errorf("migration %d %s→%s took %d ms on an unlimited link (first byte sent after %d ms), want < 5 s", i+1, l.from, l.to, m.TotalMs, firstByte)
		}
		if !stream.flowing(time.Second) {
			if crash := c.guestCrash(name); crash != "" {
				t.Fatalf("migration %d %s→%s: the guest kernel crashed on the destination (its RAM or CPU state arrived corrupted); console:\n%s", i+1, l.from, l.to, crash)
			}
			t.Fatalf("migration %d %s→%s: the TCP stream did not resume within 1s of the migration's end (no guest crash on the console)", i+1, l.from, l.to)
		}
		vm := c.checkOnHost(name, l.to)
		t.Logf("after migration %d: record host %s state %s generation %d", i+1, vm.Host, vm.State, vm.Generation)
		if n := obs.bothPresent(start, end); n < 1 {
			t.Errorf("migration %d: the observer never saw the destination QEMU (%d samples with both QEMUs)", i+1, n)
		} else {
			t.Logf("migration %d: %d observer samples with both QEMUs present", i+1, n)
		}
		if l.to == "h2" {
			if p := qemuPIDs(t, c.hostNS("h1")); len(p) != 0 {
				t.Errorf("QEMU left on h1 after migrating away: %v", p)
			}
		}
	}

	linesBefore, _ := stream.snapshot()
	time.Sleep(time.Second)
	linesAfter, lastAt := stream.snapshot()
	stream.stop()

	stream.mu.Lock()
	defer stream.mu.Unlock()
	fmt.Printf("LIVE-MIGRATION longest TCP stream gap: %s (before line %d), %d lines\n", stream.maxGap.Round(time.Millisecond), stream.maxGapLine, stream.lines)
	t.Logf("stream: %d lines, last counter %d, longest gap %s before line %d at %s; gaps > 100 ms: %v",
		stream.lines, stream.last, stream.maxGap.Round(time.Millisecond), stream.maxGapLine, stream.maxGapAt.Format("15:04:05.000"), stream.bigGaps)
	if stream.readErr != nil {
		t.Errorf("stream connection broke: %v", stream.readErr)
	}
	if len(stream.anomalies) > 0 {
		t.Errorf("stream counter irregular (%d): %v", len(stream.anomalies), first(stream.anomalies, 20))
	}
	if stream.maxGap >= time.Second {
		t.Errorf("longest gap in the stream %s, want < 1s", stream.maxGap)
	}
	if linesAfter-linesBefore < 100 || time.Since(lastAt) > 500*time.Millisecond {
		t.Errorf("stream not flowing after the migrations: %d lines in the last second, last line %s ago", linesAfter-linesBefore, time.Since(lastAt))
	}

	checkNeverBoth(t, obs)

	if got := c.bootID(ip, 10*time.Second); got != boot {
		t.Errorf("boot_id changed: %s -> %s (the guest rebooted)", boot, got)
	}
}

// checkNeverBoth stops the observer and checks it never saw both QEMUs
// running at once.
func checkNeverBoth(t *testing.T, obs *observer) {
	obs.stop()
	obs.mu.Lock()
	defer obs.mu.Unlock()
	t.Logf("observer: %d samples; state sequence: %s", len(obs.samples), strings.Join(first(obs.changes, 40), " | "))
	if len(obs.bothRunning) > 0 {
		t.Errorf("both QEMUs running at once in %d samples, first at %s: %v", len(obs.bothRunning), obs.bothRunning[0].at.Format("15:04:05.000"), obs.bothRunning[0])
	}
}

func first(s []string, n int) []string {
	if len(s) > n {
		return s[:n]
	}
	return s
}

// failureSetup boots a guest that dirties memory faster than an 8 MiB/s
// link sends it, starts a migration to h2 without waiting and returns once
// it is transferring.
func failureSetup(t *testing.T, name, ip string, args ...string) (c *cluster, boot string, m *ferryv1.Migration, obs *observer) {
	c = upCluster(t, 2)
	boot = c.bootGuest(name, ip, "64:16")
	obs = c.startObserver(name)
	t.Cleanup(func() { checkNeverBoth(t, obs) })
	m = c.startMigration(name, "h2", append([]string{"--bandwidth", "8"}, args...)...)
	c.waitTransferring(m.Id)
	return c, boot, m, obs
}

func checkFailed(t *testing.T, m *ferryv1.Migration, want string) {
	t.Helper()
	logReport(t, "final report", m, 0)
	if m.Status != want {
		t.Errorf("migration %s status %q (state %q, error %q), want %s", m.Id, m.Status, m.State, m.Error, want)
	}
	if want == "failed" && m.Error == "" {
		t.Errorf("failed migration %s has no error", m.Id)
	}
}

// TestMigrationFailsWhenDestinationQEMUKilled: SIGKILL of the destination
// QEMU mid-transfer fails the migration and leaves the VM on h1.
func TestMigrationFailsWhenDestinationQEMUKilled(t *testing.T) {
	c, boot, m, obs := failureSetup(t, "dqemu", "198.19.0.32")
	pids := qemuPIDs(t, c.hostNS("h2"))
	if len(pids) != 1 {
		t.Fatalf("QEMUs in h2 during the transfer = %v, want one (the destination)", pids)
	}
	if err := syscall.Kill(pids[0], syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	t.Logf("killed destination QEMU pid %d", pids[0])
	m, _ = c.waitFinal(m.Id, 60*time.Second)
	checkFailed(t, m, "failed")
	c.checkRolledBack("dqemu", "198.19.0.32", boot, obs)
}

// TestMigrationFailsWhenDestinationAgentKilled: SIGKILL of the destination
// agent mid-transfer fails the migration; once the agent is back, nothing
// of the VM is left on h2.
func TestMigrationFailsWhenDestinationAgentKilled(t *testing.T) {
	c, boot, m, obs := failureSetup(t, "dagent", "198.19.0.33")
	agent := c.process("agent", "h2")
	if err := syscall.Kill(agent.PID, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	waitGone(t, agent.PID, 5*time.Second)
	t.Logf("killed h2 agent pid %d", agent.PID)
	m, _ = c.waitFinal(m.Id, 60*time.Second)
	checkFailed(t, m, "failed")

	restarted := time.Now()
	if _, err := c.c.StartProcess(agent.Netns, filepath.Join(c.dir, "logs", "h2-agent.log"), agent.Argv); err != nil {
		t.Fatal(err)
	}
	if err := c.c.WaitHostsReady(ctxT(t, time.Minute), 30*time.Second); err != nil {
		t.Fatal(err)
	}
	t.Logf("h2 agent ready again after %s", time.Since(restarted).Round(time.Millisecond))
	c.checkRolledBack("dagent", "198.19.0.33", boot, obs)
}

// TestMigrationFailsWhenLinkCut: with h2 cut off the segment the transfer
// stalls; the stall timeout fails the migration and the VM stays on h1.
func TestMigrationFailsWhenLinkCut(t *testing.T) {
	c, boot, m, obs := failureSetup(t, "linkcut", "198.19.0.34", "--stall-timeout", "3s")
	ns := c.hostNS("h2")
	t.Cleanup(func() { _ = setLink(ns, true) })
	if err := setLink(ns, false); err != nil {
		t.Fatal(err)
	}
	m, took := c.waitFinal(m.Id, 60*time.Second)
	checkFailed(t, m, "failed")
	if took > 20*time.Second {
		t.Errorf("migration took %s to fail after the link cut with --stall-timeout 3s, want < 20s", took)
	}
	// With multifd on the cut link, migrate_cancel leaves channels blocked
	// in a send until the agent yanks them; show whether it had to.
	if log, err := os.ReadFile(filepath.Join(c.dir, "logs", "h1-agent.log")); err == nil {
		for _, line := range strings.Split(string(log), "\n") {
			if strings.Contains(line, "yank") {
				t.Logf("h1 agent: %s", line)
			}
		}
	}
	c.checkOnHost("linkcut", "h1")
	c.waitNoLeftovers("h2", "linkcut", 15*time.Second)
	if err := setLink(ns, true); err != nil {
		t.Fatal(err)
	}
	c.checkRolledBack("linkcut", "198.19.0.34", boot, obs) // /status answers again
}

// TestMigrationCancel: `ferry migration cancel` mid-transfer rolls back.
func TestMigrationCancel(t *testing.T) {
	c, boot, m, obs := failureSetup(t, "cancel", "198.19.0.35")
	out := c.mustFerry("migration", "cancel", m.Id)
	t.Logf("ferry migration cancel: %s", strings.TrimSpace(out))
	m, _ = c.waitFinal(m.Id, 60*time.Second)
	checkFailed(t, m, "cancelled")
	c.checkRolledBack("cancel", "198.19.0.35", boot, obs)
}

// TestMigrationOwnershipCASFailure: a change of the VM record during the
// transfer makes the switchover compare-and-swap fail; the migration rolls
// back and the VM keeps running on h1.
func TestMigrationOwnershipCASFailure(t *testing.T) {
	c := upCluster(t, 2)
	const name, ip = "cas", "198.19.0.36"
	boot := c.bootGuest(name, ip, "0:0")
	st := c.etcdStore()
	obs := c.startObserver(name)
	m := c.startMigration(name, "h2", "--bandwidth", "32")
	cur := c.waitStateRPC(m.Id, "transferring", 30*time.Second)
	if cur.Status != "running" {
		c.logMigrations()
		t.Fatalf("migration ended %s (%s) before it was seen transferring", cur.Status, cur.Error)
	}
	vm, err := st.UpdateVM(context.Background(), name, true, func(*ferryv1.VM) error { return nil })
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("bumped %s to generation %d while transferring (migration expects %d, %d bytes sent)", name, vm.Generation, cur.VmGeneration, cur.TransferredBytes)
	m, _ = c.waitFinal(m.Id, 60*time.Second)
	checkFailed(t, m, "failed")
	if e := strings.ToLower(m.Error); !strings.Contains(e, "conflict") && !strings.Contains(e, "generation") && !strings.Contains(e, "changed") {
		t.Errorf("error %q does not mention the ownership conflict", m.Error)
	}
	c.checkRolledBack(name, ip, boot, obs)
	checkNeverBoth(t, obs)
}

// TestMigrationRefusals: impossible migrations are refused with a clear
// message and change nothing.
func TestMigrationRefusals(t *testing.T) {
	c := upCluster(t, 2)
	c.mustFerry("vm", "create", "-f", c.writeSpec("stay", "198.19.0.37", ""))
	before := c.waitVM("stay", 60*time.Second, "running", func(v *ferryv1.VM) bool { return v.State == "running" })

	cases := []struct {
		vm, to string
		want   []string // any of them
	}{
		{"stay", before.Host, []string{"already on"}},
		{"stay", "h9", []string{"h9"}},
		{"nosuchvm", "h2", []string{"nosuchvm", "not found"}},
	}
	for _, tc := range cases {
		out, errOut, err := c.ferry("migrate", tc.vm, "--to", tc.to, "--wait")
		t.Logf("ferry migrate %s --to %s: err %v, stderr %q", tc.vm, tc.to, err, strings.TrimSpace(errOut))
		if err == nil {
			t.Errorf("ferry migrate %s --to %s succeeded:\n%s", tc.vm, tc.to, out)
			continue
		}
		found := false
		for _, w := range tc.want {
			found = found || strings.Contains(errOut, w)
		}
		if !found {
			t.Errorf("ferry migrate %s --to %s: message %q names none of %q", tc.vm, tc.to, errOut, tc.want)
		}
	}
	after, err := c.getVM("stay")
	if err != nil {
		t.Fatal(err)
	}
	if after.Host != before.Host || after.Generation != before.Generation || after.State != "running" || after.MigrationId != "" {
		t.Errorf("record changed by refused migrations: host %s→%s generation %d→%d state %s migrationId %q",
			before.Host, after.Host, before.Generation, after.Generation, after.State, after.MigrationId)
	}
	for _, m := range c.listMigrations() {
		if m.Vm == "stay" || m.Vm == "nosuchvm" {
			t.Errorf("refused migration recorded: %s %s→%s %s", m.Id, m.From, m.To, m.Status)
		}
	}
	if left := c.leftovers("h2", "stay"); left != "" {
		t.Errorf("left on h2 by refused migrations: %s", left)
	}
}

// TestColdMigration: a cold migration stops the guest on h1 and boots it
// on h2 (a new boot), leaving nothing on h1.
func TestColdMigration(t *testing.T) {
	c := upCluster(t, 2)
	const name, ip = "cold", "198.19.0.38"
	boot := c.bootGuest(name, ip, "")
	m, wall := c.mustMigrateWait(name, "h2", "--strategy", "cold")
	logReport(t, "cold migration", m, wall)
	if m.Status != "completed" || m.Strategy != "cold" || m.From != "h1" || m.To != "h2" || m.TotalMs <= 0 {
		t.Errorf("report: strategy %q %s→%s status %q totalMs %d; want cold h1→h2 completed, totalMs > 0", m.Strategy, m.From, m.To, m.Status, m.TotalMs)
	}
	c.checkOnHost(name, "h2")
	newBoot := c.bootID(ip, 60*time.Second)
	if newBoot == boot {
		t.Errorf("boot_id unchanged (%s) after a cold migration: the guest did not boot on h2", boot)
	}
	t.Logf("boot_id %s on h1 → %s on h2", boot, newBoot)
	if p := qemuPIDs(t, c.hostNS("h2")); len(p) != 1 {
		t.Errorf("QEMUs on h2 = %v, want one", p)
	}
	c.waitNoLeftovers("h1", name, 15*time.Second)
}

// TestServerRestartMidMigrationContinues: the control plane dies
// (SIGKILL) while RAM moves; the restarted server finds the migration in
// etcd short of its owner switch and adopts it (the agents kept the
// transfer going): it completes on h2 with the same boot, its events name
// the adoption after a lost leader, nothing is rolled back.
func TestServerRestartMidMigrationContinues(t *testing.T) {
	// A guest that converges (96 MiB filled, not dirtied) at 2 MiB/s.
	c := upCluster(t, 2)
	boot := c.bootGuest("srvdie", "198.19.0.39", "96:0")
	obs := c.startObserver("srvdie")
	t.Cleanup(func() { checkNeverBoth(t, obs) })
	m := c.startMigration("srvdie", "h2", "--bandwidth", "2")
	c.waitTransferring(m.Id)
	server := c.process("server")
	if err := syscall.Kill(server.PID, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	waitGone(t, server.PID, 10*time.Second)
	t.Logf("killed the server (pid %d) mid-transfer", server.PID)
	if _, err := c.c.StartProcess("", filepath.Join(c.dir, "logs", "server.log"), server.Argv); err != nil {
		t.Fatal(err)
	}
	if err := c.c.WaitHostsReady(ctxT(t, time.Minute), 30*time.Second); err != nil {
		t.Fatal(err)
	}
	m, _ = c.waitFinal(m.Id, 60*time.Second)
	logReport(t, "final report", m, 0)
	if m.Status != "completed" {
		t.Fatalf("migration %s %s (%s) after the server's restart, want completed (adopted)", m.Id, m.Status, m.Error)
	}
	adopted := false
	for _, e := range m.Events {
		adopted = adopted || strings.Contains(e.Message, "adopted by a new leader: the previous leader was lost")
		if e.State == "rolling-back" {
			t.Errorf("the migration rolled back: %s", e.Message)
		}
	}
	if !adopted {
		t.Errorf("events %v: want the adoption after the lost leader", m.Events)
	}
	c.checkOnHost("srvdie", "h2")
	if got := c.bootID("198.19.0.39", 20*time.Second); got != boot {
		t.Errorf("boot_id %s after the adopted migration, want %s", got, boot)
	}
	if vm := checkRunsOnceWhereRecorded(t, c, "srvdie", obs); vm.Host != "h2" {
		t.Errorf("VM recorded on %s, want h2", vm.Host)
	}
}
