package core

import (
	"fmt"
	"time"
)

// result folds the result of one action into the record. Results that no
// longer matter in the current state (a late reply) only update facts they
// prove.
func (r *Record) result(obs Observation) {
	now := obs.Now
	a, side := obs.Action, obs.Side
	r.destReachable(obs)
	if obs.Err == Transient {
		if a == ActStopVM {
			r.vol.stopRetried = true // that StopVM may still be on its way
		}
		r.vol.notBefore[a][side] = now.Add(RetryBackoff)
		r.Attempts++
		r.streamFailedDestSilent(obs)
		return
	}
	if obs.Out != nil {
		r.outgoing(now, obs.Out)
	}
	switch a {
	case ActPrepareIncoming:
		r.onPrepare(now, obs)
	case ActQueryIncoming:
		r.onQueryIncoming(now, obs)
	case ActStartOutgoing:
		r.onStartOutgoing(now, obs)
	case ActQueryOutgoing, ActStartPostcopy, ActContinueOutgoing, ActResumeOutgoing:
		r.onSourceStep(now, obs)
	case ActArmResume:
		r.onArm(now, obs)
	case ActFinishIncoming:
		r.onFinishIncoming(now, obs)
	case ActAbortIncoming:
		r.onAbort(now, obs)
	case ActCancelOutgoing:
		r.onCancel(now, obs)
	case ActFinishOutgoing:
		r.onFinishOutgoing(now, obs)
	case ActPauseMigration:
		// Errors are expected on a side that already noticed the broken link.
	case ActRecoverIncoming:
		r.onRecoverIncoming(now, obs)
	case ActStartVM, ActStopVM, ActDeleteVM, ActGetVM:
		r.onVMStep(now, obs)
	case ActPrepareDisks, ActCopyDisks:
		r.onDiskCopy(now, obs)
	case ActCASOwner:
		r.onCAS(now, obs)
	case ActUpdateVM:
		if r.State == Cleanup || r.State == RollingBack || r.Facts.GaveUp {
			if obs.Err == OK || (obs.StoreVM != nil && obs.StoreVM.MigrationID != r.ID) {
				r.Facts.VMRecordReleased = true // refused: the lock is no longer ours, the write was done
			} else {
				r.vol.notBefore[a][side] = now.Add(RetryBackoff)
			}
		}
	case ActReleaseReservation:
		if obs.Err == OK || obs.Err == NotFound {
			r.Facts.ReservationFreed = true
		}
	}
}

// outgoing folds a source status into the record.
func (r *Record) outgoing(now time.Time, out *Outgoing) {
	r.vol.lastOut = out.Status
	if out.Transferred > r.Transferred {
		r.Transferred = out.Transferred
		r.LastProgressAt = now
	}
	if out.Rounds > r.Rounds {
		r.Rounds = out.Rounds
	}
	switch out.Status {
	case "postcopy-active", "postcopy-paused", "postcopy-recover":
		if r.Facts.ContinueSent || r.Facts.OwnerSwitched {
			r.Facts.PostcopyStarted = true
		}
	}
}

func (r *Record) onPrepare(now time.Time, obs Observation) {
	if r.State != Preparing {
		return
	}
	switch obs.Err {
	case OK:
		r.Facts.DestPrepared, r.DestURI, r.DiskURI = true, obs.URI, obs.DiskURI
		if obs.DiskURI != "" {
			r.enter(now, Mirroring, "mirroring the local disks to "+obs.DiskURI+"; RAM to "+obs.URI+" when they are ready")
		} else {
			r.enter(now, Transferring, "sending RAM to "+obs.URI)
		}
	default:
		r.rollback(now, fmt.Sprintf("prepare the destination on %s: %s: %s", r.To, obs.Err, obs.ErrMsg), false)
	}
}

// destGone reports whether an incoming status shows the destination QEMU gone.
func destGone(in *Incoming) bool {
	return in != nil && (in.PID == 0 || in.State == "aborted" || in.State == "failed")
}

func (r *Record) onQueryIncoming(now time.Time, obs Observation) {
	r.vol.notBefore[ActQueryIncoming][Dst] = now.Add(IncomingPollEvery)
	r.vol.checkDst = false
	if obs.In != nil && obs.In.Ran {
		r.Facts.DestRan = true
	}
	gone := obs.Err == NotFound || destGone(obs.In)
	if !gone {
		r.streamFailedDestAlive(now)
		return
	}
	switch {
	case !r.Facts.OwnerSwitched && (r.State == Preparing || r.State == Mirroring || r.State == Transferring || r.State == Switchover):
		r.rollback(now, "destination QEMU is gone (it exited or was killed)", false)
	case r.Facts.OwnerSwitched && r.Facts.DestRan && r.State != Cleanup && r.State != Unswitching:
		r.Facts.DestLost = true
		r.lose(now, "the destination QEMU died after it ran: the VM is lost (its source QEMU had handed over)")
	case r.Facts.OwnerSwitched && !r.Facts.DestRan && (r.State == Resuming || isPostcopy(r.State)):
		r.unswitch(now, "the destination QEMU is gone and never ran")
	}
}

func isPostcopy(s State) bool {
	return s == PostcopyActive || s == PostcopyPaused || s == PostcopyRecovering
}

func (r *Record) onStartOutgoing(now time.Time, obs Observation) {
	if r.State != Transferring && r.State != Mirroring {
		return
	}
	switch obs.Err {
	case OK:
		r.Facts.OutgoingStarted = true
		r.sourceStatus(now, obs.Out)
	case NotFound:
		r.vol.checkSrc = true
	default:
		r.rollback(now, fmt.Sprintf("start sending from %s: %s", r.From, obs.ErrMsg), false)
	}
}

// onSourceStep handles QueryOutgoing, StartPostcopy, ContinueOutgoing and ResumeOutgoing.
func (r *Record) onSourceStep(now time.Time, obs Observation) {
	a := obs.Action
	if a == ActQueryOutgoing {
		r.vol.checkOut = false
	}
	if obs.Err == NotFound {
		r.vol.checkSrc = true
		r.vol.notBefore[a][Src] = now.Add(RetryBackoff)
		return
	}
	switch a {
	case ActStartPostcopy:
		if obs.Err == OK {
			r.Facts.PostcopyAsked = true
		} else if r.State == Transferring {
			r.rollback(now, "switch to post-copy refused: "+obs.ErrMsg, false)
		}
	case ActContinueOutgoing:
		if r.State != Resuming {
			break
		}
		if obs.Err == OK {
			r.Facts.ContinueSent = true
		} else {
			// Not at pre-switchover any more: the stream failed (QEMU may
			// have resumed the source itself). Only removing the
			// destination proves it never ran.
			r.unswitch(now, "migrate-continue refused: "+obs.ErrMsg)
		}
	case ActResumeOutgoing:
		if r.State != PostcopyRecovering {
			break
		}
		if obs.Err == OK {
			// QEMU took the resume and reconnects on its own: only its
			// status (postcopy-active) says the post-copy runs again
			// (sourceStatus); a link still down keeps it reconnecting.
			r.vol.resumeSent = true
		} else {
			r.RecoverURI = ""
			r.vol.notBefore[ActRecoverIncoming][Dst] = now.Add(RecoverEvery)
			r.enter(now, PostcopyPaused, "post-copy resume refused: "+obs.ErrMsg)
		}
	}
	if obs.Err == OK {
		r.sourceStatus(now, obs.Out)
	}
}

// sourceStatus reacts to the source QEMU's migration status.
func (r *Record) sourceStatus(now time.Time, out *Outgoing) {
	fresh := r.vol.freshOut
	r.vol.freshOut = false
	if out == nil {
		return
	}
	switch r.State {
	case Mirroring:
		switch out.Status {
		case "mirroring":
			// Progress is the disks' bytes (Transferred): the stall timer runs.
		case "none", "":
			r.Facts.OutgoingStarted = false // the source knows no migration: start it (again)
		case "failed", "cancelled":
			r.rollback(now, fmt.Sprintf("source reports the disk mirror or migration %s: %s", out.Status, orUnknown(out.Error)), false)
		case "completed", "postcopy-active", "postcopy-paused", "postcopy-recover":
			r.rollback(now, "source QEMU reports "+out.Status+" before the owner switch", false)
		case "pre-switchover":
			r.enter(now, Transferring, "every disk mirror is ready; RAM sent")
			r.enter(now, Switchover, "source paused with the last RAM owed and the disks in sync; switching the owner")
		default:
			r.enter(now, Transferring, "every disk mirror is ready; sending RAM")
		}
	case Transferring:
		switch out.Status {
		case "pre-switchover":
			r.enter(now, Switchover, "source paused with the last RAM owed; switching the owner")
		case "failed":
			// The stream broke: the link's fault (retried) unless the
			// destination QEMU is gone — a fresh QueryIncoming says (retry.go).
			r.streamFailed(fmt.Sprintf("source QEMU reports the migration failed: %s", orUnknown(out.Error)))
		case "cancelled":
			r.rollback(now, fmt.Sprintf("source QEMU reports the migration %s: %s", out.Status, orUnknown(out.Error)), false)
		case "completed", "postcopy-active", "postcopy-paused", "postcopy-recover":
			r.rollback(now, "source QEMU reports "+out.Status+" before the owner switched", false)
		case "none", "":
			r.Facts.OutgoingStarted = false // the source knows no migration: start it (again)
		default:
			if r.Strategy == Postcopy && (out.Rounds >= 2 || r.postcopyDue(out)) {
				r.PostcopyWanted = true
			}
		}
	case Resuming:
		if out.Status == "failed" || out.Status == "cancelled" {
			r.unswitch(now, fmt.Sprintf("the source's stream %s after the switchover: %s", out.Status, orUnknown(out.Error)))
		}
	case PostcopyActive:
		switch out.Status {
		case "completed":
			r.enter(now, Cleanup, "post-copy completed")
		case "postcopy-paused":
			r.PausedAt = now
			r.enter(now, PostcopyPaused, "post-copy paused: the link broke; the guest waits on the destination")
		case "failed":
			r.lose(now, "post-copy failed on the source ("+orUnknown(out.Error)+"): the guest's memory is split between the hosts")
		}
	case Cleanup:
		// The source is still in post-copy (a lost write forgot that it
		// switched): supervise the post-copy before quitting it. Only a
		// status asked after FinishOutgoing was refused counts (an older
		// one may be stale).
		if r.Error == "" && !r.Facts.SourceQuit && fresh {
			switch out.Status {
			case "postcopy-active", "postcopy-recover":
				r.enter(now, PostcopyActive, "the source is still in post-copy: supervising it")
			case "postcopy-paused":
				r.PausedAt = now
				r.enter(now, PostcopyPaused, "the source is in a paused post-copy: recovering it")
			}
		}
	case PostcopyPaused, PostcopyRecovering:
		switch out.Status {
		case "completed":
			r.enter(now, Cleanup, "post-copy completed")
		case "postcopy-active":
			r.PausedAt = time.Time{}
			r.enter(now, PostcopyActive, "post-copy recovered: the link is back")
		}
	}
}

func orUnknown(s string) string {
	if s == "" {
		return "no reason given"
	}
	return s
}

func (r *Record) onArm(now time.Time, obs Observation) {
	if (r.State == Transferring || r.State == Switchover) && r.Strategy.Live() && !r.Facts.OwnerSwitched {
		// Armed before the CAS (planTransfer, planSwitchover).
		switch obs.Err {
		case OK:
			r.Facts.DestArmed = true
			if r.State == Switchover {
				r.LastProgressAt = now // a step forward: the CAS gets its own stall timeout
			}
		default:
			r.rollback(now, fmt.Sprintf("the destination refused to arm (%s): %s", obs.Err, obs.ErrMsg), false)
		}
		return
	}
	if r.State != Resuming {
		return
	}
	switch obs.Err {
	case OK:
		r.Facts.DestArmed = true
		if obs.In != nil && obs.In.Ran {
			r.Facts.DestRan = true
		}
	default:
		r.unswitch(now, fmt.Sprintf("the destination refused to arm (%s): %s", obs.Err, obs.ErrMsg))
	}
}

func (r *Record) onFinishIncoming(now time.Time, obs Observation) {
	if r.State != Resuming {
		return
	}
	if obs.Err == OK && obs.In != nil && obs.In.Ran {
		r.Facts.DestRan = true
	}
	switch obs.Err {
	case OK:
		if obs.In != nil && obs.In.PID == 0 {
			// Adopted before (a lost reply) and gone since.
			if r.Facts.DestRan {
				r.Facts.DestLost = true
				r.lose(now, "the destination QEMU died after it ran: the VM is lost (its source QEMU had handed over)")
			} else {
				r.unswitch(now, "the destination QEMU is gone and never ran")
			}
			return
		}
		if obs.In != nil {
			r.Facts.DestRan = true
			if r.Facts.PostcopyAsked {
				r.enter(now, PostcopyActive, "destination runs and announced itself; pulling the rest of RAM")
			} else {
				r.enter(now, Cleanup, "destination runs and announced itself")
			}
		}
	default:
		if r.Facts.DestRan {
			r.vol.checkDst = true // gone after it ran? QueryIncoming says
			r.vol.notBefore[ActFinishIncoming][Dst] = now.Add(RetryBackoff)
			return
		}
		r.unswitch(now, fmt.Sprintf("the destination did not resume (%s): %s", obs.Err, obs.ErrMsg))
	}
}

func (r *Record) onAbort(now time.Time, obs Observation) {
	switch obs.Err {
	case OK, NotFound:
		r.Facts.DestAborted = true
	case Refused:
		// It ran: the VM lives there. Never roll back to the source.
		r.Facts.DestRan = true
		if r.State == Unswitching {
			r.Error = ""
			r.enter(now, Resuming, "the destination has run: driving forward")
		}
	}
}

func (r *Record) onCancel(now time.Time, obs Observation) {
	if r.State != RollingBack {
		return
	}
	switch obs.Err {
	case OK:
		r.Facts.SourceResumed = true
		if obs.VM != nil {
			r.vol.finalVM, r.vol.finalSeen = vmState(obs.VM.State), true
		}
	case NotFound:
		r.vol.checkSrc = true
	case Refused:
		r.vol.notBefore[ActCancelOutgoing][Src] = now.Add(RetryBackoff)
	}
}

func (r *Record) onFinishOutgoing(now time.Time, obs Observation) {
	if obs.Err == OK {
		// A fact in any state: the agent quits a source only once its
		// migration completed — the VM is on the destination.
		r.Facts.SourceQuit = true
	}
	if r.State != Cleanup {
		if obs.Err == OK && isPostcopy(r.State) {
			r.enter(now, Cleanup, "post-copy completed: the source quit")
		}
		return
	}
	switch obs.Err {
	case OK, NotFound:
		r.Facts.SourceQuit = true
	default:
		r.vol.notBefore[ActFinishOutgoing][Src] = now.Add(RetryBackoff)
		r.vol.checkOut = true // why not completed? QueryOutgoing says
	}
}

func (r *Record) onRecoverIncoming(now time.Time, obs Observation) {
	if r.State != PostcopyPaused {
		return
	}
	switch obs.Err {
	case OK:
		r.RecoverURI = obs.URI
		r.enter(now, PostcopyRecovering, "destination listens again at "+obs.URI)
	default:
		r.vol.checkDst = true
		r.vol.notBefore[ActRecoverIncoming][Dst] = now.Add(RecoverEvery)
	}
}

// vmState maps an agent's VM state to the record's.
func vmState(s string) VMState {
	switch s {
	case "running":
		return VMRunning
	case "paused":
		return VMPaused
	case "stopped":
		return VMStopped
	}
	return VMFailed
}

// onVMStep handles StartVM, StopVM, DeleteVM and GetVM.
func (r *Record) onVMStep(now time.Time, obs Observation) {
	a, side := obs.Action, obs.Side
	switch a {
	case ActGetVM:
		r.onGetVM(now, obs)
	case ActStopVM:
		if r.State == Stopping && side == Src && (obs.Err == OK || obs.Err == NotFound) {
			r.Facts.SourceStopped = true
			r.vol.soleStop = r.vol.loadedIn != Stopping && !r.vol.stopRetried
			if r.CopyDisks {
				r.enter(now, Copying, "guest stopped on "+r.From+"; copying its local disks to "+r.To)
			} else {
				r.enter(now, Switchover, "guest stopped on "+r.From)
			}
		} else if r.State == Stopping && side == Src {
			r.rollback(now, "stop the guest on "+r.From+": "+obs.ErrMsg, false)
		} else if obs.Err != OK && obs.Err != NotFound {
			r.vol.notBefore[a][side] = now.Add(RetryBackoff)
		}
	case ActStartVM:
		switch {
		case side == Dst && r.State == Starting && obs.Err == OK:
			r.Facts.DestRan = true
			r.enter(now, Cleanup, "guest booted on "+r.To)
		case side == Dst && r.State == Starting:
			r.vol.checkDst = true // query before acting: does it run there after all?
		case side == Src && r.State == RollingBack && obs.Err == OK:
			r.Facts.SourceResumed = true
			if obs.VM != nil {
				r.vol.finalVM, r.vol.finalSeen = vmState(obs.VM.State), true
			}
		case side == Src && r.State == RollingBack:
			r.vol.notBefore[a][side] = now.Add(RetryBackoff)
		}
	case ActDeleteVM:
		if obs.Err != OK && obs.Err != NotFound {
			r.vol.notBefore[a][side] = now.Add(RetryBackoff)
			return
		}
		switch {
		case side == Src && r.State == Cleanup:
			r.Facts.SourceQuit = true
		case side == Dst && (r.State == Unswitching || r.State == Cleanup):
			r.Facts.DestAborted = true
		case side == Dst && r.State == RollingBack && r.Strategy == Cold:
			r.Facts.DestAborted = true // the destination's disk copies are removed
		}
	}
}

// onGetVM: what a host really runs.
func (r *Record) onGetVM(now time.Time, obs Observation) {
	side := obs.Side
	if r.Facts.GaveUp {
		switch obs.Err {
		case OK:
			if obs.VM != nil {
				r.vol.finalVM, r.vol.finalSeen = vmState(obs.VM.State), true
			}
		case NotFound:
			r.vol.finalVM, r.vol.finalSeen = VMFailed, true
		}
		return
	}
	st := VMFailed
	if obs.Err == OK && obs.VM != nil {
		st = vmState(obs.VM.State)
	} else if obs.Err != NotFound {
		r.vol.notBefore[ActGetVM][side] = now.Add(RetryBackoff)
		return
	}
	absent := obs.Err == NotFound
	if side == Src && r.vol.checkSrc {
		r.vol.checkSrc = false
		if absent || st == VMFailed || st == VMStopped {
			r.Facts.SourceLost = true
			r.sourceLost(now)
			return
		}
	}
	if side == Dst && r.Strategy == Cold && r.State == Unswitching {
		if st == VMRunning || st == VMPaused {
			r.Facts.DestRan = true
			r.Error = ""
			r.enter(now, Cleanup, "the guest runs on "+r.To+" after all: driving forward")
			return
		}
		r.vol.dstChecked = true
		return
	}
	if side == Dst && r.vol.checkDst && r.Strategy == Cold {
		r.vol.checkDst = false
		if st == VMRunning || st == VMPaused {
			r.Facts.DestRan = true
			if r.State == Starting {
				r.enter(now, Cleanup, "guest runs on "+r.To)
			}
			return
		}
		if r.State == Starting {
			r.unswitch(now, "the guest could not be booted on "+r.To)
		}
		return
	}
	if r.State == Cleanup || r.State == RollingBack {
		owner := r.From
		if r.State == Cleanup {
			owner = r.To
		}
		if r.Host(side) == owner && !r.vol.finalSeen {
			r.vol.finalVM, r.vol.finalSeen = st, true
			if absent && r.Strategy == Cold && r.PrevVMState == VMStopped {
				r.vol.finalVM = VMStopped
			}
		}
	}
}

// sourceLost reacts to the source QEMU being gone.
func (r *Record) sourceLost(now time.Time) {
	switch {
	case r.Facts.SourceQuit || r.vol.inflight[ActFinishOutgoing][Src]:
		// Gone because FinishOutgoing quit it: its migration had completed.
	case r.State == Cleanup || r.State == Unswitching:
		// Expected (the source is being removed) or handled (the
		// destination is being removed first, then the rollback sees it).
	case r.State == RollingBack:
		r.vol.finalVM, r.vol.finalSeen = VMFailed, true
		if r.Error == "" || r.CancelRequested {
			r.Error = "the source QEMU is gone (it exited or was killed): the VM is lost"
		}
	case !r.Facts.OwnerSwitched && r.Strategy.Live():
		r.rollback(now, "the source QEMU is gone (it exited or was killed): the VM is lost", false)
	case r.Facts.OwnerSwitched && r.Strategy.Live() && (r.Facts.PostcopyStarted || r.Facts.DestRan && r.Facts.PostcopyAsked):
		r.lose(now, "the source QEMU died during post-copy: the guest's remaining memory is lost")
	case r.Facts.OwnerSwitched && r.Strategy.Live() && !r.Facts.DestRan && r.State == Resuming:
		r.unswitch(now, "the source QEMU died at the switchover, before the destination had the device state")
	}
}

// switched is the record once the owner CAS wrote generation gen at at:
// past the point of no return (a copy; r is unchanged).
func (r *Record) switched(at time.Time, gen int64) Record {
	n := *r
	n.History = append([]Event(nil), r.History...)
	n.Generation = gen
	n.Facts.OwnerSwitched = true
	n.SwitchedAt = at
	n.GiveUpAt = at.Add(r.Options.RecoveryWindow)
	if r.Strategy.Live() {
		n.enter(at, Resuming, "owner is now "+r.To+" (generation CAS succeeded)")
	} else {
		n.enter(at, Starting, "owner is now "+r.To)
	}
	return n
}

// onCAS handles an owner compare-and-swap.
func (r *Record) onCAS(now time.Time, obs Observation) {
	cur := obs.StoreVM
	switch r.State {
	case Switchover:
		prep := r.vol.prepared
		r.vol.prepared = nil
		switch {
		case obs.Err == OK && cur != nil && prep != nil && cur.Generation == prep.Generation:
			// The transaction wrote prep with the owner: switch as it says
			// (its time), so that nothing is left to write.
			*r = r.switched(prep.SwitchedAt, cur.Generation)
			r.vol.wrote = prep
			return
		case obs.Err == OK && cur != nil:
		case cur != nil && cur.Host == r.To && cur.MigrationID == r.ID:
			// Our earlier CAS (its reply was lost): its transaction wrote
			// an earlier switched record; this step writes the current one.
		default:
			r.rollback(now, "ownership compare-and-swap lost: the VM record changed during the migration", false)
			return
		}
		*r = r.switched(now, cur.Generation)
	case Unswitching:
		switch {
		case obs.Err == OK && cur != nil:
			r.Generation = cur.Generation
		case cur != nil && cur.MigrationID == r.ID && cur.Host == r.From:
			r.Generation = cur.Generation
		case cur != nil && cur.MigrationID != r.ID:
			r.Note = "the VM record is no longer locked by this migration"
		default:
			r.vol.notBefore[ActCASOwner][Src] = now.Add(RetryBackoff)
			return
		}
		r.Facts.OwnerSwitched = false
		r.GiveUpAt = now.Add(r.rollbackWindow())
		r.enter(now, RollingBack, "owner back to "+r.From+": the destination never ran")
	}
}

// onDiskCopy handles PrepareDisks and CopyDisks (cold, local disks).
func (r *Record) onDiskCopy(now time.Time, obs Observation) {
	if r.State != Copying {
		return
	}
	switch {
	case obs.Action == ActPrepareDisks && obs.Err == OK && obs.DiskURI != "":
		r.DiskURI = obs.DiskURI
		r.LastProgressAt = now
		r.Note = "the destination receives the local disks at " + obs.DiskURI
	case obs.Action == ActPrepareDisks && obs.Err == OK:
		r.rollback(now, "the destination on "+r.To+" answered no address for the local disks' copy", false)
	case obs.Action == ActPrepareDisks:
		r.rollback(now, fmt.Sprintf("prepare the disk copies on %s: %s: %s", r.To, obs.Err, obs.ErrMsg), false)
	case obs.Err != OK:
		r.rollback(now, fmt.Sprintf("copy the local disks from %s: %s: %s", r.From, obs.Err, obs.ErrMsg), false)
	case obs.Out == nil:
	default:
		switch obs.Out.Status {
		case "completed":
			r.Facts.DisksCopied = true
			r.enter(now, Switchover, "local disks copied and their checksums verified on "+r.To+"; switching the owner")
		case "failed", "cancelled":
			r.rollback(now, "the local disks' copy "+obs.Out.Status+": "+orUnknown(obs.Out.Error), false)
		}
	}
}
