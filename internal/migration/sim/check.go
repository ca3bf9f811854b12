package sim

import (
	"fmt"
	"time"

	"github.com/ferryvm/ferry/internal/migration/core"
)

// OwnerLag bounds how long a QEMU of the VM may run on a host its record
// does not name while the server can act (QEMU itself restarts a source
// whose stream failed after the owner switch; the engine must move the
// owner back within this).
const OwnerLag = 3 * time.Second

// checkInstant: never two running QEMUs of the VM; a running QEMU on a
// host the VM record does not name only briefly.
func (w *World) checkInstant() {
	n := 0
	foreign := false
	for _, ag := range w.Agents {
		if ag.vm != nil && ag.vm.qemu.running() {
			n++
			if ag.Host != w.Store.VM.Host {
				foreign = true
			}
		}
	}
	switch {
	case !foreign:
		w.foreignSince = time.Time{}
	case !w.serverUp || w.Clock.now.Before(w.frozen) || !w.reach(core.Src) || !w.reach(core.Dst) || !w.Agents[core.Src].Up || !w.Agents[core.Dst].Up:
		w.foreignSince = w.Clock.now // counted from when the server can act (and learn what it needs)
	case w.foreignSince.IsZero():
		w.foreignSince = w.Clock.now
	case w.Clock.now.Sub(w.foreignSince) > OwnerLag && !w.lagSeen:
		w.lagSeen = true
		w.logf("VIOLATION: the VM runs on a host its record does not name for more than %s", OwnerLag)
		w.violate("the VM ran on a host its record does not name (%s) for more than %s", w.Store.VM.Host, OwnerLag)
	}
	if n > 1 && !w.twoSeen {
		w.twoSeen = true
		w.logf("VIOLATION: two running QEMUs")
		w.violate("two running QEMUs of the VM at %s", w.Clock.now.Sub(w.rec.StartedAt))
	}
	w.checkRetry()
}

// CheckEnd asserts the end state; call it after Run.
func (w *World) CheckEnd() {
	r := w.loadRecord()
	if !r.State.Terminal() {
		w.violate("migration not terminal: %s", r.State)
		return
	}
	vm := w.Store.VM
	if vm.MigrationID != "" || vm.State == string(core.VMMigrating) {
		w.violate("VM record still locked/migrating after the migration ended (%s, lock %q)", vm.State, vm.MigrationID)
	}
	if w.Store.Reservation {
		w.violate("the destination's reservation was not released")
	}
	owner := w.Agents[core.Src]
	other := w.Agents[core.Dst]
	switch vm.Host {
	case "h1":
	case "h2":
		owner, other = other, owner
	default:
		w.violate("VM record names unknown host %q", vm.Host)
		return
	}
	if other.vm != nil {
		w.violate("leftover on %s (not the owner): qemu=%v dir=%v tap=%v incoming=%q", other.Host,
			other.vm.qemu != nil && other.vm.qemu.Alive, other.vm.dir, other.vm.tap, other.vm.inState)
	}
	q := (*FakeQEMU)(nil)
	if owner.vm != nil && owner.vm.qemu != nil && owner.vm.qemu.Alive {
		q = owner.vm.qemu
	}
	if w.disks && (q != nil || w.strategy == core.Cold) && (owner.vm == nil || !owner.vm.disk || !owner.vm.diskSynced) {
		w.violate("the VM runs on %s without a complete copy of its local disk", owner.Host)
	}
	switch core.VMState(vm.State) {
	case core.VMRunning:
		if q == nil || q.Run != "running" {
			w.violate("VM recorded running on %s but its QEMU there is %s", owner.Host, runState(q))
		} else if w.strategy.Live() && q.Boot != w.origBoot {
			w.violate("VM runs with boot %d, want the same boot %d", q.Boot, w.origBoot)
		}
	case core.VMPaused:
		if q == nil || q.Run == "running" {
			w.violate("VM recorded paused on %s but its QEMU there is %s", owner.Host, runState(q))
		}
		if vm.Message == "" {
			w.violate("VM recorded paused without a reason")
		}
	case core.VMStopped:
		if q != nil {
			w.violate("VM recorded stopped but a QEMU runs on %s (%s)", owner.Host, q.Run)
		}
		if w.prev != core.VMStopped {
			w.violate("a running VM ended stopped")
		}
	case core.VMFailed:
		if vm.Message == "" {
			w.violate("VM recorded failed without a reason")
		}
		if q != nil {
			w.violate("VM recorded failed but its QEMU runs on %s (%s)", owner.Host, q.Run)
		}
		if !w.qemuKilled {
			w.violate("VM lost (failed: %s) though no fault killed its QEMU", vm.Message)
		}
	default:
		w.violate("VM record state %q", vm.State)
	}
	if w.prev == core.VMStopped && vm.State != string(core.VMStopped) {
		w.violate("a stopped VM ended %s (a cold migration never boots a stopped VM)", vm.State)
	}
	if r.State == core.Completed && vm.Host != "h2" {
		w.violate("migration completed but the VM record names %s", vm.Host)
	}
	if (r.State == core.Failed || r.State == core.Cancelled) && vm.State != string(core.VMFailed) && vm.Host != "h1" && r.Facts.OwnerSwitched == false {
		w.violate("migration %s before the switch but the VM record names %s", r.State, vm.Host)
	}
}

func runState(q *FakeQEMU) string {
	if q == nil {
		return "absent"
	}
	return fmt.Sprintf("%s (boot %d)", q.Run, q.Boot)
}
