package e2e

// The migration engine under single faults with real QEMU: the server or
// the source agent SIGKILLed at each phase, the destination QEMU killed
// after migrate-continue but before it ever ran. Every test samples both
// QEMUs every 20 ms (never two running) and ends with the VM running
// exactly once, on the host its record names, with the same boot and the
// client's TCP stream unbroken.

import (
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	ferryv1 "github.com/ferryvm/ferry/gen/ferry/v1"
)

// faultRig is one fault test's cluster, guest and watchers.
type faultRig struct {
	c      *cluster
	name   string
	ip     string
	boot   string
	obs    *observer
	stream *streamWatch
}

// newFaultRig makes a two-host cluster, runs arm (if not nil: restart a
// daemon with failpoints) and boots a guest dirtying memory on h1 with
// the QMP observer and a client stream watching it.
func newFaultRig(t *testing.T, name, ip, dirty string, arm func(c *cluster)) *faultRig {
	c := upCluster(t, 2)
	if arm != nil {
		arm(c)
	}
	r := &faultRig{c: c, name: name, ip: ip}
	r.boot = c.bootGuest(name, ip, dirty)
	r.obs = c.startObserver(name)
	t.Cleanup(func() { checkNeverBoth(t, r.obs) })
	r.stream = c.watchStream(ip)
	if !r.stream.flowing(2 * time.Second) {
		t.Fatal("the guest's counter stream does not flow")
	}
	return r
}

// restartServer SIGKILLs the server and starts it again on the same data
// directory without failpoints.
func (r *faultRig) restartServer() {
	p := r.c.process("server")
	r.c.killProcess(p, "server")
	r.c.startProcessEnv(p, "server")
}

// finish waits for the migration's end, checks its status, the VM's single
// run on the host that status implies and the unbroken stream, and logs
// the figures.
func (r *faultRig) finish(t *testing.T, id, want string) *ferryv1.Migration {
	t.Helper()
	m, took := r.c.waitFinal(id, 3*time.Minute)
	logReport(t, "final report", m, 0)
	for _, e := range m.Events {
		t.Logf("  event %s %s: %s", e.At.AsTime().Format("15:04:05.000"), e.State, e.Message)
	}
	host := "h1"
	if m.Status == "completed" {
		host = "h2"
	}
	if want != "" && m.Status != want {
		r.c.logMigrations()
		t.Errorf("migration %s ended %s (state %s, error %q), want %s", id, m.Status, m.State, m.Error, want)
	}
	r.c.checkRunsOnceOn(r.name, r.ip, r.boot, host, r.obs)
	gap := r.c.checkStreamUnbroken(r.name, r.stream)
	t.Logf("ENGINE-E2E %s: migration %s %s on %s, ended %s after the fault, downtime %d ms, longest client gap %s",
		t.Name(), m.Id, m.Status, host, took.Round(time.Millisecond), m.GetDowntimePhases().GetTotalMs(), gap.Round(time.Millisecond))
	return m
}

// waitPostcopyRunning waits until the guest runs on h2 while the migration
// still runs: the owner is h2 and the source QEMU still holds pages.
func (r *faultRig) waitPostcopyRunning(t *testing.T, id string, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		m, err := r.c.getMigration(id)
		if err == nil && m.Status != "running" {
			r.c.logMigrations()
			t.Fatalf("migration %s ended %s before post-copy could be interrupted", id, m.Status)
		}
		vm, verr := r.c.getVM(r.name)
		s, ok := r.obs.sampleAfter(time.Now(), time.Second)
		if err == nil && verr == nil && ok && vm.Host == "h2" && s.running[1] && s.status[0] != "" {
			t.Logf("post-copy running: migration state %s, %d bytes sent, %d remaining; QEMUs %v", m.State, m.TransferredBytes, m.RemainingBytes, s)
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	r.c.logMigrations()
	t.Fatalf("migration %s not in post-copy with the guest running on h2 within %s", id, timeout)
}

// TestEngineServerKilledDuringTransfer: the server is SIGKILLed while RAM
// moves (before the owner switch) and restarted on the same data: the
// restarted engine adopts the transfer the agents kept going
// (core/handover.go), and the migration completes on h2. (A guest that
// converges: 96 MiB filled, not dirtied, at 2 MiB/s of stream.)
func TestEngineServerKilledDuringTransfer(t *testing.T) {
	r := newFaultRig(t, "esrvx", "198.19.0.61", "96:0", nil)
	m := r.c.startMigration(r.name, "h2", "--bandwidth", "2")
	r.c.waitTransferring(m.Id)
	r.restartServer()
	m = r.finish(t, m.Id, "completed")
	if !slices.ContainsFunc(m.Events, func(e *ferryv1.MigrationEvent) bool {
		return strings.Contains(e.Message, "adopted by a new leader: the previous leader was lost")
	}) {
		t.Errorf("the restarted server did not adopt the migration mid-transfer (events above)")
	}
}

// TestEngineServerKilledAtSwitchover: the server is SIGKILLed between the
// owner switch (one transaction with the switched record; the destination
// was armed before it) and migrate-continue, both QEMUs paused, and
// restarted: the record says resuming and the owner names h2, so the
// migration completes there.
func TestEngineServerKilledAtSwitchover(t *testing.T) {
	var log string
	r := newFaultRig(t, "esrvs", "198.19.0.62", "64:16", func(c *cluster) {
		log = c.armFailpoints(c.process("server"), "server", "engine/after-owner-cas=sleep(30s)*1")
	})
	m := r.c.startMigration(r.name, "h2")
	waitFailpoint(t, log, "engine/after-owner-cas", 90*time.Second)
	r.restartServer()
	r.finish(t, m.Id, "completed")
}

// TestEngineServerKilledDuringPostcopy: the server is SIGKILLed while the
// guest runs on h2 and pulls its last pages from h1, and restarted: the
// restarted engine supervises the post-copy to its end.
func TestEngineServerKilledDuringPostcopy(t *testing.T) {
	r := newFaultRig(t, "esrvp", "198.19.0.63", "64:16", nil)
	m := r.c.startMigration(r.name, "h2", "--strategy", "postcopy", "--bandwidth", "12")
	r.waitPostcopyRunning(t, m.Id, 2*time.Minute)
	r.restartServer()
	r.finish(t, m.Id, "completed")
}

// TestEngineSourceAgentKilledMidTransfer: the source agent is SIGKILLed
// while RAM moves and restarted two seconds later. Either outcome is
// allowed (the migration completes, or it rolls back), but the VM must
// run exactly once, where its record says, with the same boot.
func TestEngineSourceAgentKilledMidTransfer(t *testing.T) {
	// A link that outruns the dirtier (32 vs 8 MiB/s): the migration can
	// end either way once the agent is back.
	r := newFaultRig(t, "esagx", "198.19.0.64", "64:8", nil)
	m := r.c.startMigration(r.name, "h2", "--bandwidth", "32")
	r.c.waitTransferring(m.Id)
	p := r.c.process("agent", "h1")
	r.c.killProcess(p, "h1 agent")
	time.Sleep(2 * time.Second)
	r.c.startProcessEnv(p, "h1 agent")
	r.finish(t, m.Id, "")
}

// TestEngineSourceAgentKilledAfterOwnerSwitch: the source agent is
// SIGKILLed right after the owner CAS (both QEMUs paused, continue not yet
// sent) and restarted a second later: the migration completes on h2.
func TestEngineSourceAgentKilledAfterOwnerSwitch(t *testing.T) {
	var log string
	r := newFaultRig(t, "esags", "198.19.0.65", "64:16", func(c *cluster) {
		log = c.armFailpoints(c.process("server"), "server", "engine/after-owner-cas=sleep(4s)*1")
	})
	m := r.c.startMigration(r.name, "h2")
	waitFailpoint(t, log, "engine/after-owner-cas", 90*time.Second)
	p := r.c.process("agent", "h1")
	r.c.killProcess(p, "h1 agent")
	time.Sleep(time.Second)
	r.c.startProcessEnv(p, "h1 agent")
	r.finish(t, m.Id, "completed")
}

// TestEngineDestinationKilledBeforeItRan: the destination QEMU is killed
// after migrate-continue, once its state arrived but before it ever ran
// (the destination agent holds it paused at a failpoint): the source,
// whose migration completed, is resumed with the same boot.
func TestEngineDestinationKilledBeforeItRan(t *testing.T) {
	var log string
	r := newFaultRig(t, "edstk", "198.19.0.66", "64:16", func(c *cluster) {
		log = c.armFailpoints(c.process("agent", "h2"), "h2-agent", "agent/before-resume-incoming=sleep(20s)*1")
	})
	m := r.c.startMigration(r.name, "h2")
	waitFailpoint(t, log, "agent/before-resume-incoming", 90*time.Second)
	pids := qemuPIDs(t, r.c.hostNS("h2"))
	if len(pids) != 1 {
		t.Fatalf("QEMUs on h2 at the failpoint = %v, want one (the loaded destination)", pids)
	}
	if s, ok := r.obs.sampleAfter(time.Now(), time.Second); ok && s.running[1] {
		t.Fatalf("the destination already runs at the failpoint: %v", s)
	}
	if err := syscall.Kill(pids[0], syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	t.Logf("killed the loaded, never-run destination QEMU pid %d", pids[0])
	r.finish(t, m.Id, "failed")
}
