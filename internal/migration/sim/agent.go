package sim

import (
	"fmt"
	"time"

	"github.com/ferryvm/ferry/internal/migration/core"
)

func refused(format string, args ...any) core.Observation {
	return core.Observation{Err: core.Refused, ErrMsg: fmt.Sprintf(format, args...)}
}

func notFound(what string) core.Observation {
	return core.Observation{Err: core.NotFound, ErrMsg: what}
}

// alive reports whether the VM's QEMU runs here.
func (ag *FakeAgent) alive() bool { return ag.vm != nil && ag.vm.qemu != nil && ag.vm.qemu.Alive }

func (ag *FakeAgent) vmInfo() *core.VMInfo {
	v := ag.vm
	switch {
	case v == nil:
		return nil
	case v.qemu == nil:
		return &core.VMInfo{State: "stopped"}
	case !v.qemu.Alive:
		return &core.VMInfo{State: "failed"}
	case v.qemu.Run == "running":
		return &core.VMInfo{State: "running", PID: v.qemu.PID}
	}
	return &core.VMInfo{State: "paused", PID: v.qemu.PID}
}

func (ag *FakeAgent) outgoing() *core.Outgoing {
	q := ag.vm.qemu
	return &core.Outgoing{Status: q.Mig, QEMUStatus: q.Run, Transferred: q.Sent, RAMTransferred: q.RAM, Rounds: q.Rounds}
}

func (ag *FakeAgent) incoming() *core.Incoming {
	v := ag.vm
	in := &core.Incoming{State: v.inState, Ran: v.ran}
	if v.qemu != nil && v.qemu.Alive {
		in.PID, in.QEMUStatus = v.qemu.PID, v.qemu.Run
	} else if v.inState != "adopted" {
		in.State = "failed"
	}
	return in
}

// remove kills the QEMU (if any) and removes tap and directory.
func (ag *FakeAgent) remove() {
	if ag.vm != nil && ag.vm.qemu != nil {
		ag.w.kill(ag.vm.qemu)
	}
	ag.vm = nil
}

// handle runs one RPC of the agent contract against this host's state.
func (ag *FakeAgent) handle(a core.Action, id string) core.Observation {
	w := ag.w
	v := ag.vm
	switch a.Kind {
	case core.ActPrepareIncoming:
		if ag.ended[id] {
			return refused("migration %s already ended on this host: start a new migration", id)
		}
		if v != nil && v.inID == id {
			if !ag.alive() {
				return refused("the destination QEMU of %s exited", id)
			}
			return core.Observation{URI: v.uri, DiskURI: v.diskURI}
		}
		if v != nil {
			return refused("VM already on this host")
		}
		q := w.newQEMU(0)
		q.Run, q.In, q.Postcopy = "inmigrate", "listening", a.Postcopy
		ag.vm = &vmOnHost{qemu: q, tap: true, dir: true, inID: id, inState: "listening", uri: fmt.Sprintf("tcp:%s:%d", ag.Host, 4000+q.PID)}
		if w.disks {
			// An empty disk of the same size, exported over NBD.
			ag.vm.disk, ag.vm.diskURI = true, fmt.Sprintf("%s:%d", ag.Host, 10800+q.PID)
		}
		return core.Observation{URI: ag.vm.uri, DiskURI: ag.vm.diskURI}
	case core.ActQueryIncoming:
		if v == nil || v.inID != id {
			return notFound("no incoming migration " + id)
		}
		return core.Observation{In: ag.incoming()}
	case core.ActArmResume:
		if v == nil || v.inID != id {
			return notFound("no incoming migration " + id)
		}
		switch v.inState {
		case "armed", "running", "adopted":
			return core.Observation{In: ag.incoming()}
		}
		if !ag.alive() {
			return refused("the destination QEMU exited")
		}
		v.inState = "armed"
		return core.Observation{In: ag.incoming()}
	case core.ActFinishIncoming:
		if v == nil || v.inID != id {
			return notFound("no incoming migration " + id)
		}
		if v.inState == "adopted" {
			return core.Observation{In: ag.incoming()}
		}
		if !ag.alive() {
			return refused("the destination QEMU exited (ran=%v)", v.ran)
		}
		if v.inState == "running" {
			v.inState = "adopted"
			return core.Observation{In: ag.incoming()}
		}
		if v.inState != "armed" {
			return refused("not armed")
		}
		return core.Observation{Err: core.Transient, ErrMsg: "the destination does not run yet"}
	case core.ActAbortIncoming:
		if v == nil || v.inID != id {
			return core.Observation{}
		}
		if v.ran {
			return refused("the destination has run: never aborted")
		}
		ag.end(id)
		ag.remove()
		return core.Observation{}
	case core.ActRecoverIncoming:
		if v == nil || v.inID != id {
			return notFound("no incoming migration " + id)
		}
		if !ag.alive() {
			return refused("the destination QEMU exited")
		}
		switch v.qemu.In {
		case "postcopy-paused":
			v.qemu.In = "postcopy-recover"
			return core.Observation{URI: v.uri + "-r"}
		case "postcopy-recover":
			return core.Observation{URI: v.uri + "-r"}
		}
		return refused("not paused in post-copy (%s)", v.qemu.In)
	case core.ActStartOutgoing, core.ActQueryOutgoing, core.ActContinueOutgoing, core.ActStartPostcopy,
		core.ActCancelOutgoing, core.ActFinishOutgoing, core.ActResumeOutgoing, core.ActPauseMigration:
		return ag.handleOutgoing(a, id)
	case core.ActStartVM:
		if v != nil && ag.alive() {
			if v.inID != "" && v.inState != "adopted" {
				return refused("an incoming migration holds the VM here")
			}
			return core.Observation{VM: ag.vmInfo()}
		}
		if v != nil && v.diskInID != "" && !v.diskSynced {
			return refused("the local disks' copy of %s is not verified here", v.diskInID)
		}
		if w.disks && (v == nil || !v.disk) {
			// The agent would create an empty disk from the spec's size.
			w.violate("the VM was booted on %s without its local disk (an empty one)", ag.Host)
		}
		q := w.newQEMU(w.newBoot())
		q.Run = "running"
		nv := &vmOnHost{qemu: q, tap: true, dir: true}
		if v != nil {
			nv.disk, nv.diskSynced = v.disk, v.diskSynced
		}
		ag.vm = nv
		return core.Observation{VM: ag.vmInfo()}
	case core.ActPrepareDisks:
		if ag.ended[id] {
			return refused("migration %s already ended on this host: start a new migration", id)
		}
		if v != nil && v.diskInID == id {
			return core.Observation{DiskURI: v.diskURI}
		}
		if v != nil {
			return refused("VM already on this host")
		}
		ag.vm = &vmOnHost{dir: true, disk: true, diskInID: id, diskURI: ag.Host + ":9900"}
		return core.Observation{DiskURI: ag.vm.diskURI}
	case core.ActCopyDisks:
		return ag.copyDisks(a, id)
	case core.ActStopVM:
		if v == nil || v.qemu == nil {
			return core.Observation{VM: ag.vmInfo()}
		}
		w.kill(v.qemu) // a power-off: the QEMU quits
		v.qemu, v.tap = nil, false
		return core.Observation{VM: ag.vmInfo()}
	case core.ActDeleteVM:
		if v != nil && v.disk && v.diskSynced && a.RemoveDisks {
			if o := w.Agents[1-ag.side].vm; o == nil || !o.disk || !o.diskSynced {
				w.violate("the local disk on %s was removed while %s held no verified copy", ag.Host, w.Agents[1-ag.side].Host)
			}
		}
		if v != nil && v.diskInID != "" {
			ag.end(v.diskInID)
		}
		keep := v != nil && v.disk && !a.RemoveDisks && w.strategy == core.Cold
		ag.remove()
		if keep {
			ag.vm = &vmOnHost{disk: true, diskSynced: v.diskSynced} // the agent keeps a cold source's local disks
		}
		return core.Observation{}
	case core.ActGetVM:
		if v == nil || v.diskInID != "" && v.qemu == nil {
			return notFound("no VM here")
		}
		return core.Observation{VM: ag.vmInfo()}
	}
	return refused("unknown action %s", a.Kind)
}

// copyDisks is CopyDisks on the source: the stopped VM's local disk is
// copied to the destination's receiver at a.DiskURI (keyed by id; a second
// call reports the copy).
func (ag *FakeAgent) copyDisks(a core.Action, id string) core.Observation {
	w := ag.w
	v := ag.vm
	if v == nil || !v.disk {
		return notFound("no local disk of the VM here")
	}
	if ag.alive() {
		return refused("the VM runs here: its disks are copied only while it is stopped")
	}
	if j := ag.copyJob; j == nil || j.id != id {
		j = &fakeCopy{id: id, uri: a.DiskURI, status: "copying", left: 10}
		if w.copyPeer(ag.side, j) == nil {
			j.status, j.err = "failed", "cannot connect to the destination's receiver" // (or it refuses the id)
		}
		ag.copyJob = j
	}
	j := ag.copyJob
	return core.Observation{Out: &core.Outgoing{Status: j.status, Transferred: j.sent, Error: j.err}}
}

// handleOutgoing runs the source steps.
func (ag *FakeAgent) handleOutgoing(a core.Action, id string) core.Observation {
	w := ag.w
	v := ag.vm
	if a.Kind == core.ActPauseMigration && v != nil && v.inID == id {
		if ag.alive() && v.qemu.In == "postcopy" {
			v.qemu.In = "postcopy-paused"
		}
		return core.Observation{}
	}
	if a.Kind == core.ActFinishOutgoing && (v == nil || v.qemu == nil || !v.qemu.Alive) {
		if v != nil && (v.outID == id || v.outID == "") && v.inID == "" {
			ag.vm = nil // nothing left but files: remove them
		}
		return core.Observation{}
	}
	if !ag.alive() {
		return notFound("the VM's QEMU is not running here")
	}
	q := v.qemu
	if a.Kind == core.ActCancelOutgoing {
		ag.remember(id)
	}
	if a.Kind != core.ActStartOutgoing && v.outID != id {
		if a.Kind == core.ActCancelOutgoing && v.outID != "" && q.Mig != "none" && q.Mig != "completed" && q.Mig != "failed" && q.Mig != "cancelled" {
			return refused("the VM is migrating by %s (%s), not %s", v.outID, q.Mig, id)
		}
		if a.Kind == core.ActCancelOutgoing {
			if q.Run != "running" && q.Mig != "completed" {
				q.Run = "running"
			}
			return core.Observation{VM: ag.vmInfo()}
		}
		return core.Observation{Out: &core.Outgoing{Status: "none", QEMUStatus: q.Run}}
	}
	switch a.Kind {
	case core.ActStartOutgoing:
		if v.outID == id {
			return core.Observation{Out: ag.outgoing()}
		}
		if ag.cancelled[id] {
			return refused("migration %s was cancelled here: it is not started again", id)
		}
		if q.Mig == "active" || q.Mig == "mirroring" || q.Mig == "pre-switchover" || q.Mig == "device" || q.Mig == "postcopy-active" {
			return refused("another migration is active")
		}
		v.outID = id
		q.Mig, q.Rounds, q.Sent, q.Postcopy, q.PCPending, q.AutoConverge = "active", 0, 0, a.Postcopy, false, a.AutoConverge
		q.RAM, q.ramTicks = 0, 0
		q.peer, q.diskPeer = w.peerFor(ag.side, a.URI), nil
		if w.disks {
			if a.DiskURI == "" {
				w.violate("the source started sending RAM without mirroring its local disk (no disk URI)")
			}
			// blockdev-add of the NBD target, blockdev-mirror of each disk;
			// migrate follows when every mirror is ready.
			q.diskPeer = w.diskPeerFor(ag.side, a.DiskURI)
			q.Mig, q.mirrorLeft = "mirroring", 3
			if q.diskPeer == nil || q.peer == nil || !w.linkUp() {
				q.Mig = "failed" // blockdev-add cannot connect: nothing started, the guest runs on
			}
			return core.Observation{Out: ag.outgoing()}
		}
		if q.peer == nil || !w.linkUp() {
			q.Mig = "failed" // migrate cannot connect: QEMU reports failed, the guest runs on
		} else {
			q.peer.In = "receiving"
		}
		return core.Observation{Out: ag.outgoing()}
	case core.ActQueryOutgoing:
		return core.Observation{Out: ag.outgoing()}
	case core.ActStartPostcopy:
		switch q.Mig {
		case "active":
			if !q.Postcopy {
				return refused("postcopy-ram is not enabled")
			}
			if b := w.rec.Options.PostcopyAtBytes; b > 0 && q.Rounds <= 1 && q.RAM < b {
				w.violate("post-copy asked in round %d after %d RAM bytes, before the switch point of %d bytes", q.Rounds, q.RAM, b)
			}
			if !q.PCPending {
				q.pcAskedRound, q.pcAskedRAM = q.Rounds, q.RAM
			}
			q.PCPending = true
		case "pre-switchover", "device", "postcopy-active", "postcopy-paused", "postcopy-recover", "completed":
		default:
			return refused("migration is %s", q.Mig)
		}
		return core.Observation{Out: ag.outgoing()}
	case core.ActContinueOutgoing:
		switch q.Mig {
		case "pre-switchover":
			q.Mig = "device"
		case "device", "completed", "postcopy-active", "postcopy-paused", "postcopy-recover":
		default:
			return refused("migration is %s, not at pre-switchover", q.Mig)
		}
		return core.Observation{Out: ag.outgoing()}
	case core.ActCancelOutgoing:
		switch q.Mig {
		case "completed", "postcopy-active", "postcopy-paused", "postcopy-recover":
			if !a.ResumeCompleted {
				return refused("the migration is %s: the source never runs again unless the destination provably never ran", q.Mig)
			}
			q.Mig = "cancelled"
		case "mirroring":
			q.Mig = "cancelled" // block-job-cancel: the destination's copy is left incomplete
		case "active", "pre-switchover", "device":
			q.Mig = "cancelled"
			if q.peer != nil && q.peer.Alive && q.peer.In != "" {
				w.kill(q.peer) // the destination's incoming stream fails: QEMU exits
			}
		}
		if q.Run != "running" {
			q.Run = "running"
		}
		return core.Observation{VM: ag.vmInfo()}
	case core.ActFinishOutgoing:
		if q.Mig != "completed" {
			return refused("the migration is %s: the source is quit only once it completed", q.Mig)
		}
		if v.disk {
			if dv := w.Agents[1-ag.side].vm; dv == nil || !dv.disk || !dv.diskSynced || !dv.ran {
				w.violate("the source's local disk was removed before the destination took over with a complete copy")
			}
		}
		ag.remove()
		return core.Observation{}
	case core.ActResumeOutgoing:
		switch q.Mig {
		case "postcopy-active":
			return core.Observation{Out: ag.outgoing()}
		case "postcopy-paused":
		default:
			return refused("migration is %s", q.Mig)
		}
		p := q.peer
		if p == nil || !p.Alive || p.In != "postcopy-recover" {
			return refused("the destination does not listen for a resume")
		}
		if w.stuckResume {
			w.stuckResume = false
			q.Mig, q.reconnectSince, q.stuck = "postcopy-recover", w.Clock.now, true
			return core.Observation{Out: ag.outgoing()}
		}
		if !w.linkUp() {
			// QEMU takes the resume and reconnects on its own (physics).
			q.Mig, q.reconnectSince = "postcopy-recover", w.Clock.now
			return core.Observation{Out: ag.outgoing()}
		}
		q.Mig, p.In = "postcopy-active", "postcopy"
		return core.Observation{Out: ag.outgoing()}
	case core.ActPauseMigration:
		// A reconnecting source is paused too (the agent closes its relay's
		// channels, then migrate-pause).
		if q.Mig == "postcopy-active" || q.Mig == "postcopy-recover" {
			q.Mig, q.stuck = "postcopy-paused", false
		}
		return core.Observation{}
	}
	return refused("unknown action %s", a.Kind)
}

// reconcile is what an agent does on its own: an armed destination whose
// state has arrived is resumed (only while the agent runs).
func (ag *FakeAgent) reconcile() {
	v := ag.vm
	if !ag.Up || v == nil || !ag.alive() || v.inState != "armed" {
		return
	}
	switch v.qemu.In {
	case "loaded", "postcopy", "postcopy-paused", "postcopy-recover", "done":
		if v.qemu.loadedTicks < 1 {
			return // the agent reacts to MIGRATION completed on its next look
		}
		if ag.w.disks && !v.diskSynced && !v.ran {
			ag.w.violate("the destination ran on a copy of the local disk its mirror had not completed")
		}
		v.qemu.Run = "running"
		v.ran = true
		v.inState = "running"
	}
}

// reap is the agent's orphan reaper (internal/agent/reaper.go) as far as
// the engine relies on it: an arrival that never ran, which no migration in
// flight names (the store's record is terminal), is removed after
// OrphanGrace. It needs the agent up and its heartbeat answered.
func (ag *FakeAgent) reap() {
	v := ag.vm
	w := ag.w
	if ag.Up && w.serverUp && w.reach(ag.side) && v != nil && v.diskInID != "" && v.qemu == nil {
		// A cold migration's disk copy that no migration in flight names,
		// for a VM the store places elsewhere.
		if !w.rec.State.Terminal() || w.Store.VM.Host == ag.Host {
			v.orphanSince = time.Time{}
		} else if v.orphanSince.IsZero() {
			v.orphanSince = w.Clock.now
		} else if w.Clock.now.Sub(v.orphanSince) >= OrphanGrace {
			w.logf("agent %s reaper: removed the disk copy of %s", ag.side, v.diskInID)
			ag.end(v.diskInID)
			ag.vm = nil
		}
		return
	}
	if !ag.Up || !w.serverUp || !w.reach(ag.side) || v == nil || v.inID == "" || v.ran || v.inState == "adopted" {
		return
	}
	if !w.rec.State.Terminal() {
		v.orphanSince = time.Time{}
		return
	}
	if v.orphanSince.IsZero() {
		v.orphanSince = w.Clock.now
		return
	}
	if w.Clock.now.Sub(v.orphanSince) >= OrphanGrace {
		w.logf("agent %s reaper: removed the arrival of %s (no migration in flight names it)", ag.side, v.inID)
		ag.remove()
	}
}

// reapPending reports whether an agent still holds an arrival its reaper will remove.
func (w *World) reapPending() bool {
	for _, ag := range w.Agents {
		if v := ag.vm; v != nil && (v.inID != "" && !v.ran && v.inState != "adopted" || v.diskInID != "" && v.qemu == nil) {
			return true
		}
	}
	return false
}

// end keeps an aborted incoming id (like the agent's ended list): a
// PrepareIncoming of it arriving late is refused.
func (ag *FakeAgent) end(id string) {
	if ag.ended == nil {
		ag.ended = map[string]bool{}
	}
	ag.ended[id] = true
}

// remember keeps a cancelled migration id (a small file): a StartOutgoing
// of it arriving late is refused.
func (ag *FakeAgent) remember(id string) {
	if ag.cancelled == nil {
		ag.cancelled = map[string]bool{}
	}
	ag.cancelled[id] = true
}
