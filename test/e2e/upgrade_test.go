package e2e

import (
	"fmt"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ferryvm/ferry/internal/devcluster"
)

// upgradeProcess stops a recorded daemon as `systemctl restart` would
// (SIGTERM, then wait), starts it again from binary newBin with the same
// arguments, and returns when every host is ready again.
func (c *cluster) upgradeProcess(p devcluster.Process, label, newBin string) {
	c.t.Helper()
	if err := syscall.Kill(p.PID, syscall.SIGTERM); err != nil {
		c.t.Fatalf("stop %s (pid %d): %v", label, p.PID, err)
	}
	waitGone(c.t, p.PID, 20*time.Second)
	argv := append([]string{newBin}, baseArgv(p.Argv)[1:]...)
	start := time.Now()
	if _, err := c.c.StartProcess(p.Netns, p.Log, argv); err != nil {
		c.t.Fatal(err)
	}
	if err := c.c.WaitHostsReady(ctxT(c.t, time.Minute), 45*time.Second); err != nil {
		c.t.Fatal(err)
	}
	c.t.Logf("upgraded %s to %s: hosts ready %s after the start", label, newBin, time.Since(start).Round(time.Millisecond))
}

// TestRollingUpgradeDuringMigration upgrades a cluster of three server
// replicas and two agents from ferry 1.4.0 to 1.5.0 (the same source
// linked with two injected versions) in the documented order, server
// replicas one by one and then agents one by one, each stopped with
// SIGTERM and started from the new binary, while a bandwidth-limited live
// migration is in flight. The migration completes h1→h2, the VM runs once,
// on h2, with the same boot and an unbroken TCP stream, and every agent
// reports 1.5.0.
func TestRollingUpgradeDuringMigration(t *testing.T) {
	oldBin, newBin := buildVersioned(t, "1.4.0"), buildVersioned(t, "1.5.0")
	c := upClusterBin(t, oldBin, 2, nil, "--servers", "3", "--leader-ttl", haLeaderTTL)
	c.waitLeader("", 30*time.Second)
	for name, h := range c.hostsByName() {
		if h.FerryVersion != "1.4.0" {
			t.Fatalf("host %s reports %q before the upgrade, want 1.4.0", name, h.FerryVersion)
		}
	}

	const name, ip = "roll", "198.19.0.63"
	boot := c.bootGuest(name, ip, "96:0")
	obs := c.startObserver(name)
	t.Cleanup(func() { checkNeverBoth(t, obs) })
	stream := c.watchStream(ip)
	// 2 MiB/s for ~100 MiB of filled (not dirtied) guest memory: about 50 s
	// of transfer, well past the five restarts.
	m := c.startMigration(name, "h2", "--bandwidth", "2")
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
			t.Fatalf("the migration ended (%s: %s) before %s: the upgrade was not done during it", got.Status, got.Error, step)
		}
	}
	for i := 1; i <= 3; i++ {
		rep := devcluster.ServerName(i)
		c.upgradeProcess(c.serverProcess(rep), "server "+rep, newBin)
		c.waitLeader("", 30*time.Second)
		inFlight("server " + rep)
	}
	for _, h := range []string{"h1", "h2"} {
		c.upgradeProcess(c.process("agent", h), "agent "+h, newBin)
		inFlight("agent " + h)
	}

	final, _ := c.waitFinal(m.Id, 4*time.Minute)
	if final.Status != "completed" {
		c.logMigrations()
		t.Fatalf("migration %s ended %s (%s) after the rolling upgrade, want completed", m.Id, final.Status, final.Error)
	}
	t.Logf("migration completed %s after its start; the upgrade took part of it", time.Since(started).Round(time.Millisecond))
	vm := checkRunsOnceWhereRecorded(t, c, name, obs)
	if vm.Host != "h2" {
		t.Fatalf("VM on %s after the migration, want h2", vm.Host)
	}
	checkStream(t, stream, "after the rolling upgrade")
	if got := c.bootID(ip, 20*time.Second); got != boot {
		t.Fatalf("boot_id %s after the upgrade, want %s", got, boot)
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
