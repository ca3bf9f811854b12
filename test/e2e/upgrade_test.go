package e2e

import (
	"fmt"
	"os"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	ferryv1 "github.com/ferryvm/ferry/gen/ferry/v1"
	"github.com/ferryvm/ferry/internal/devcluster"
)

// upgradeProcess stops a recorded daemon as `systemctl restart` would
// (SIGTERM, then wait), starts it again from binary newBin with the same
// arguments, and returns when every host is ready again and, for a server
// replica, when that replica itself answers and is registered; for an
// agent, when its log shows it reattached to every VM in reattach.
func (c *cluster) upgradeProcess(p devcluster.Process, label, newBin string, reattach ...string) {
	c.t.Helper()
	off := fileSize(p.Log)
	if err := syscall.Kill(p.PID, syscall.SIGTERM); err != nil {
		c.t.Fatalf("stop %s (pid %d): %v", label, p.PID, err)
	}
	waitGone(c.t, p.PID, 20*time.Second)
	argv := append([]string{newBin}, baseArgv(p.Argv)[1:]...)
	start := time.Now()
	if _, err := c.c.StartProcess(p.Netns, p.Log, argv); err != nil {
		c.t.Fatal(err)
	}
	if i := slices.Index(argv, "--listen"); argv[1] == "server" && i > 0 {
		name := argv[slices.Index(argv, "--name")+1]
		deadline := time.Now().Add(30 * time.Second)
		for {
			st, err := c.serverStatus(argv[i+1])
			if err == nil && slices.ContainsFunc(st.Replicas, func(r *ferryv1.ServerReplica) bool { return r.Name == name }) {
				break
			}
			if time.Now().After(deadline) {
				c.t.Fatalf("%s does not answer as a registered replica 30s after its restart: %v %v", label, st, err)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	for _, vm := range reattach {
		c.t.Logf("%s: %s", label, waitLogLine(c.t, p.Log, off, 30*time.Second, `msg="reattached VM"`, "vm="+vm))
	}
	if err := c.c.WaitHostsReady(ctxT(c.t, time.Minute), 45*time.Second); err != nil {
		c.t.Fatal(err)
	}
	c.t.Logf("upgraded %s to %s: back %s after the start", label, newBin, time.Since(start).Round(time.Millisecond))
}

// TestRollingUpgradeDuringMigration upgrades a cluster of three server
// replicas and two agents from ferry 1.4.0 to 1.5.0 (the same source
// linked with two injected versions), each daemon stopped with SIGTERM and
// started from the new binary, in the order docs/operations.md gives,
// all while one bandwidth-limited live migration h1→h2 is in flight: the
// follower replicas one by one, then the leading replica — before the
// migration's owner switch: it hands the migration over and the next
// leader adopts it (internal/migration/core/handover.go) — then the agents
// one by one. The migration completes without a rollback (one attempt, the
// adoption of the handed-over record in its events), the VM runs once, on
// h2, with the same boot and an unbroken TCP stream. Every agent reports
// 1.5.0 at the end.
func TestRollingUpgradeDuringMigration(t *testing.T) {
	oldBin, newBin := buildVersioned(t, "1.4.0"), buildVersioned(t, "1.5.0")
	c := upClusterBin(t, oldBin, 2, nil, "--servers", "3", "--leader-ttl", haLeaderTTL)
	st, _ := c.waitLeader("", 30*time.Second)
	for name, h := range c.hostsByName() {
		if h.FerryVersion != "1.4.0" {
			t.Fatalf("host %s reports %q before the upgrade, want 1.4.0", name, h.FerryVersion)
		}
	}

	const name, ip = "roll", "198.19.0.63"
	boot := c.bootGuest(name, ip, "160:0")
	obs := c.startObserver(name)
	t.Cleanup(func() { checkNeverBoth(t, obs) })
	stream := c.watchStream(ip)
	// 1 MiB/s of (compressed) stream for 256 MiB of guest memory, 160 MiB
	// of it filled: long enough for the five restarts.
	m := c.startMigration(name, "h2", "--bandwidth", "1")
	c.waitTransferring(m.Id)
	started := time.Now()

	inFlight := func(step string) {
		t.Helper()
		got, err := c.getMigration(m.Id)
		if err != nil {
			t.Fatalf("after %s: %v", step, err)
		}
		t.Logf("after %s (%s into the migration): status %s state %s, %d MiB sent, %d MiB remaining", step,
			time.Since(started).Round(time.Millisecond), got.Status, got.State, got.TransferredBytes>>20, got.RemainingBytes>>20)
		if got.Status != "running" {
			t.Fatalf("the migration ended (%s: %s) by the end of %s: the upgrade was not done during it", got.Status, got.Error, step)
		}
	}
	leader := st.Leader
	for i := 1; i <= 3; i++ {
		rep := devcluster.ServerName(i)
		if rep == leader {
			continue
		}
		c.upgradeProcess(c.serverProcess(rep), "follower "+rep, newBin)
		inFlight("follower " + rep)
	}
	// The leader, before the owner switch: it hands the migration over.
	if got, err := c.getMigration(m.Id); err != nil || got.Status != "running" || got.State != "transferring" {
		t.Fatalf("before the leader's restart: migration %v (err %v), want running in transferring (before its owner switch)", got, err)
	}
	c.upgradeProcess(c.serverProcess(leader), "leader "+leader, newBin)
	st, _ = c.waitLeader(leader, 30*time.Second)
	t.Logf("leader after the upgrade: %s (was %s)", st.Leader, leader)
	inFlight("leader " + leader)
	for _, h := range []string{"h1", "h2"} {
		c.upgradeProcess(c.process("agent", h), "agent "+h, newBin, name)
		inFlight("agent " + h)
	}

	final, _ := c.waitFinal(m.Id, 4*time.Minute)
	if final.Status != "completed" {
		c.logMigrations()
		t.Fatalf("migration %s ended %s (%s) after the rolling upgrade, want completed", m.Id, final.Status, final.Error)
	}
	t.Logf("migration completed %s after the upgrade began", time.Since(started).Round(time.Millisecond))
	vm := checkRunsOnceWhereRecorded(t, c, name, obs)
	if vm.Host != "h2" {
		t.Fatalf("VM on %s after the migration, want h2", vm.Host)
	}
	checkStream(t, stream, "after the migration")
	if got := c.bootID(ip, 20*time.Second); got != boot {
		t.Fatalf("boot_id %s after the upgrade, want %s", got, boot)
	}
	adopted := false
	for _, e := range final.Events {
		t.Logf("  event %s %s: %s", e.At.AsTime().Format("15:04:05.000"), e.State, e.Message)
		if e.State == "rolling-back" || e.State == "retry-wait" || e.State == "unswitching" {
			t.Errorf("the migration went through %s across the leader's restart: %s", e.State, e.Message)
		}
		adopted = adopted || strings.Contains(e.Message, "adopted by a new leader: the leader of term")
	}
	if !adopted {
		t.Errorf("the migration's events do not show the next leader adopting the handed-over record")
	}
	if final.Attempt > 1 {
		t.Errorf("the migration made %d attempts, want 1", final.Attempt)
	}
	for hn, h := range c.hostsByName() {
		if h.FerryVersion != "1.5.0" {
			t.Errorf("host %s reports %q after the upgrade, want 1.5.0", hn, h.FerryVersion)
		}
	}
	for i := 1; i <= 3; i++ {
		p := c.serverProcess(devcluster.ServerName(i))
		if exe, _ := os.Readlink(fmt.Sprintf("/proc/%d/exe", p.PID)); exe != newBin {
			t.Errorf("server %s runs %q, want %s", devcluster.ServerName(i), exe, newBin)
		}
	}
	if hl := c.mustFerry("host", "list"); !strings.Contains(hl, "1.5.0") {
		t.Errorf("host list does not show 1.5.0:\n%s", hl)
	}
}
