package core

import "time"

// planner collects the actions of one step.
type planner struct {
	r    *Record
	now  time.Time
	acts []Action
	wake time.Time // earliest time a gated action may go
}

// want asks for action a unless one like it is in flight or its retry
// time has not come.
func (p *planner) want(a Action) {
	v := &p.r.vol
	if v.inflight[a.Kind][a.Side] {
		return
	}
	if nb := v.notBefore[a.Kind][a.Side]; nb.After(p.now) {
		p.wakeAt(nb)
		return
	}
	v.inflight[a.Kind][a.Side] = true
	if a.Kind.IsAgent() {
		a.MigrationID = p.r.AttemptID()
	}
	p.acts = append(p.acts, a)
}

func (p *planner) wakeAt(t time.Time) {
	if !t.After(p.now) {
		return // already due: whatever it waits for is in flight, its result wakes the core
	}
	if p.wake.IsZero() || t.Before(p.wake) {
		p.wake = t
	}
}

// plan returns the actions the current state needs now. It runs after
// every observation; the state and facts alone decide, so a restarted
// executor (Loaded, nothing in flight) asks for the same steps again —
// every one of them idempotent.
func (r *Record) plan(now time.Time) []Action {
	p := &planner{r: r, now: now}
	if r.State.Terminal() {
		return nil
	}
	if r.Facts.GaveUp {
		r.planGaveUp(p)
		r.deadlineWake(p)
		if !p.wake.IsZero() && (r.vol.timerAt.IsZero() || p.wake.Before(r.vol.timerAt) || !r.vol.timerAt.After(now)) {
			r.vol.timerAt = p.wake
			p.acts = append(p.acts, Action{Kind: ActSetTimer, At: p.wake})
		}
		return p.acts
	}
	if r.vol.checkSrc {
		p.want(Action{Kind: ActGetVM, Side: Src})
	}
	switch r.State {
	case Preparing:
		p.want(Action{Kind: ActPrepareIncoming, Side: Dst, Postcopy: r.Strategy.UsesPostcopy()})
	case Transferring, Mirroring:
		r.planTransfer(p)
	case Switchover:
		r.planSwitchover(p)
	case Resuming:
		r.planResume(p)
	case PostcopyActive, PostcopyPaused, PostcopyRecovering:
		r.planPostcopy(p)
	case Stopping:
		if r.PrevVMState == VMRunning {
			p.want(Action{Kind: ActStopVM, Side: Src})
		} else {
			r.Facts.SourceStopped = true
			if r.CopyDisks {
				r.enter(now, Copying, "the VM is stopped: copying its local disks to "+r.To)
			} else {
				r.enter(now, Switchover, "the VM is stopped: nothing to stop")
			}
			return r.plan(now)
		}
	case Copying:
		r.planCopy(p)
	case Starting:
		switch {
		case r.PrevVMState != VMRunning:
			r.enter(now, Cleanup, "the VM stays stopped on "+r.To)
			return r.plan(now)
		case r.vol.checkDst:
			p.want(Action{Kind: ActGetVM, Side: Dst})
		default:
			p.want(Action{Kind: ActStartVM, Side: Dst})
		}
	case RetryWait:
		r.planRetryWait(p)
		if r.State == Preparing {
			return r.plan(now)
		}
	case Unswitching:
		r.planUnswitch(p)
	case Cleanup:
		r.planCleanup(p)
	case RollingBack:
		r.planRollback(p)
	}
	if r.State.Terminal() {
		return nil
	}
	r.deadlineWake(p)
	if !p.wake.IsZero() && (r.vol.timerAt.IsZero() || p.wake.Before(r.vol.timerAt) || !r.vol.timerAt.After(now)) {
		r.vol.timerAt = p.wake
		p.acts = append(p.acts, Action{Kind: ActSetTimer, At: p.wake})
	}
	return p.acts
}

// deadlineWake makes sure a tick comes when a bound expires.
func (r *Record) deadlineWake(p *planner) {
	if !r.Facts.OwnerSwitched {
		switch r.State {
		case Preparing, Mirroring, Transferring, Copying, Switchover:
			p.wakeAt(r.Deadline)
			p.wakeAt(r.LastProgressAt.Add(r.Options.StallTimeout + time.Millisecond))
		case Stopping, RetryWait:
			p.wakeAt(r.Deadline)
		}
	}
	if r.State == Resuming && !r.Facts.DestArmed {
		p.wakeAt(r.SwitchedAt.Add(r.Options.StallTimeout + time.Millisecond))
	}
	if !r.GiveUpAt.IsZero() {
		p.wakeAt(r.GiveUpAt)
	}
}

// planCopy: the destination creates empty copies and listens, then the
// source copies the disks' allocated extents to it and reports the copy
// completed once the destination verified each checksum (polled).
func (r *Record) planCopy(p *planner) {
	if r.DiskURI == "" {
		p.want(Action{Kind: ActPrepareDisks, Side: Dst})
		return
	}
	p.want(Action{Kind: ActCopyDisks, Side: Src, DiskURI: r.DiskURI, Wait: PollWait, KnownStatus: r.vol.lastOut})
}

func (r *Record) planTransfer(p *planner) {
	if r.vol.streamFailed != "" {
		r.planStreamCheck(p)
		return
	}
	if !r.Facts.OutgoingStarted {
		p.want(Action{Kind: ActStartOutgoing, Side: Src, URI: r.DestURI, DiskURI: r.DiskURI, Postcopy: r.Strategy.UsesPostcopy(),
			AutoConverge: r.Strategy == Converge || r.Strategy == Hybrid})
	} else {
		if r.PostcopyWanted && !r.Facts.PostcopyAsked {
			p.want(Action{Kind: ActStartPostcopy, Side: Src})
		}
		p.want(Action{Kind: ActQueryOutgoing, Side: Src, Wait: PollWait, KnownStatus: r.vol.lastOut})
		if !r.Facts.DestArmed {
			// Pre-armed while RAM moves, so that the arm is not inside the
			// guest's pause: the source (pause-before-switchover, set by the
			// StartOutgoing that answered) sends the device state only on
			// migrate-continue, which follows the owner CAS.
			p.want(Action{Kind: ActArmResume, Side: Dst})
		}
	}
	p.want(Action{Kind: ActQueryIncoming, Side: Dst})
}

// planSwitchover: a live migration's destination is armed (normally while
// RAM moved, planTransfer; else now) — the source waits at pre-switchover
// for migrate-continue, which the engine sends only after the CAS, so an
// armed destination cannot get the device state (and run) before the owner
// names it — then the owner switches with the switched record prepared
// (one store transaction).
func (r *Record) planSwitchover(p *planner) {
	a := Action{Kind: ActCASOwner, Side: Dst, Owner: r.To, Generation: r.Generation}
	if r.Strategy.Live() {
		if !r.Facts.DestArmed {
			p.want(Action{Kind: ActArmResume, Side: Dst})
			return
		}
		if r.vol.inflight[ActCASOwner][Dst] {
			return
		}
		prep := r.switched(p.now, r.Generation+1)
		a.Record = &prep
		p.want(a)
		if r.vol.inflight[ActCASOwner][Dst] {
			r.vol.prepared = a.Record
		}
		return
	}
	p.want(a)
}

func (r *Record) planResume(p *planner) {
	switch {
	case !r.Facts.DestArmed:
		p.want(Action{Kind: ActArmResume, Side: Dst})
	case !r.Facts.ContinueSent && !r.Facts.DestRan:
		// (A destination that ran proves the continue happened, its reply lost.)
		p.want(Action{Kind: ActContinueOutgoing, Side: Src})
	default:
		if r.vol.checkDst {
			p.want(Action{Kind: ActQueryIncoming, Side: Dst})
		} else {
			p.want(Action{Kind: ActFinishIncoming, Side: Dst})
		}
		p.want(Action{Kind: ActQueryOutgoing, Side: Src, Wait: PollWait, KnownStatus: r.vol.lastOut})
	}
}

func (r *Record) planPostcopy(p *planner) {
	p.want(Action{Kind: ActQueryOutgoing, Side: Src, Wait: PollWait, KnownStatus: r.vol.lastOut})
	p.want(Action{Kind: ActQueryIncoming, Side: Dst})
	switch r.State {
	case PostcopyActive:
		if p.now.Sub(r.LastProgressAt) > r.Options.StallTimeout {
			// A dead link does not error for minutes: pause both sides so
			// they can recover.
			p.want(Action{Kind: ActPauseMigration, Side: Src})
			p.want(Action{Kind: ActPauseMigration, Side: Dst})
			r.PausedAt = p.now
			r.LastProgressAt = p.now
			r.enter(p.now, PostcopyPaused, "post-copy made no progress: pausing it to recover")
		} else {
			p.wakeAt(r.LastProgressAt.Add(r.Options.StallTimeout + time.Millisecond))
		}
	case PostcopyPaused:
		r.vol.resumeSent = false
		switch r.vol.lastOut {
		case "postcopy-paused":
			p.want(Action{Kind: ActRecoverIncoming, Side: Dst})
		case "postcopy-recover", "postcopy-recover-setup":
			r.planRepause(p)
		}
	case PostcopyRecovering:
		r.planRecovering(p)
	}
}

func (r *Record) planUnswitch(p *planner) {
	// A live destination that was never armed was never sent the device
	// state (ContinueOutgoing follows a persisted DestArmed): it cannot run,
	// so the owner may move back before it is removed (rolling-back
	// removes it).
	neverArmed := r.Strategy.Live() && !r.Facts.DestArmed
	if !r.Facts.DestAborted && !neverArmed {
		if r.Strategy.Live() {
			p.want(Action{Kind: ActAbortIncoming, Side: Dst})
			return
		}
		if r.vol.inflight[ActStartVM][Dst] {
			return // query before acting: wait for the start's answer
		}
		if r.vol.loadedIn == Starting || r.vol.loadedIn == Unswitching {
			// A previous executor may still have a StartVM on its way to the
			// destination: look only once it must have ended.
			if grace := r.entered(Unswitching).Add(StartGrace); p.now.Before(grace) {
				p.wakeAt(grace)
				return
			}
		}
		if !r.vol.dstChecked {
			p.want(Action{Kind: ActGetVM, Side: Dst})
			return
		}
		p.want(Action{Kind: ActDeleteVM, Side: Dst, RemoveDisks: r.CopyDisks})
		return
	}
	if r.Facts.OwnerSwitched {
		p.want(Action{Kind: ActCASOwner, Side: Src, Owner: r.From, Generation: r.Generation})
	}
}

// planRecord writes the VM record from what the owner's QEMU does and
// unlocks it; it reports whether that is done.
func (r *Record) planRecord(p *planner, owner Side) bool {
	if r.State == Cleanup && r.Error != "" || r.State == RollingBack && r.Facts.SourceLost {
		r.vol.finalVM, r.vol.finalSeen = VMFailed, true // the VM's only QEMU is gone
	}
	if r.Facts.VMRecordReleased {
		return true
	}
	if !r.vol.finalSeen {
		if r.Strategy == Cold && r.PrevVMState == VMStopped {
			r.vol.finalVM, r.vol.finalSeen = VMStopped, true
		} else {
			p.want(Action{Kind: ActGetVM, Side: owner})
			return false
		}
	}
	if r.vol.inflight[ActCASOwner][Src] || r.vol.inflight[ActCASOwner][Dst] {
		return false // a CAS still in flight could land after the release: wait for its answer
	}
	u := VMUpdate{State: r.vol.finalVM, Host: r.Host(owner), Unlock: true}
	if u.State == VMFailed || u.State == VMPaused {
		u.Reason = r.Error
		if u.Reason == "" {
			u.Reason = "its QEMU is " + string(u.State) + " after migration " + r.ID
		}
	}
	p.want(Action{Kind: ActUpdateVM, Side: owner, Update: u})
	return false
}

// planFinal writes the VM record, frees the reservation and ends the migration.
func (r *Record) planFinal(p *planner, owner Side) {
	if !r.planRecord(p, owner) {
		return
	}
	if r.FinalVMState == "" {
		r.FinalVMState = r.vol.finalVM
	}
	if !r.Facts.ReservationFreed {
		p.want(Action{Kind: ActReleaseReservation, Side: Dst})
		return
	}
	switch {
	case r.State == Cleanup && r.Error == "":
		r.enter(p.now, Completed, "the VM runs on "+r.To)
	case r.State == RollingBack && r.Error == "" && r.CancelRequested:
		r.enter(p.now, Cancelled, "the VM is back on "+r.From)
	default:
		r.enter(p.now, Failed, r.Error)
	}
}

func (r *Record) planCleanup(p *planner) {
	lost := r.Error != "" // Cleanup with an error: the VM was lost forward (see lose)
	if r.Strategy.Live() {
		if !r.Facts.SourceQuit {
			if lost || r.Facts.SourceLost {
				p.want(Action{Kind: ActDeleteVM, Side: Src})
			} else {
				p.want(Action{Kind: ActFinishOutgoing, Side: Src})
				if r.vol.checkOut && !r.vol.inflight[ActQueryOutgoing][Src] {
					p.want(Action{Kind: ActQueryOutgoing, Side: Src})
					r.vol.freshOut = true
				}
			}
			return
		}
		if lost && !r.Facts.DestAborted {
			p.want(Action{Kind: ActDeleteVM, Side: Dst})
			return
		}
	} else if !r.Facts.SourceQuit {
		// The source's local disks go only once the destination verified
		// its copies (DisksCopied, before the owner switched).
		p.want(Action{Kind: ActDeleteVM, Side: Src, RemoveDisks: r.CopyDisks && r.Facts.DisksCopied})
		return
	}
	r.planFinal(p, Dst)
}

func (r *Record) planRollback(p *planner) {
	if r.Retrying {
		r.planRetryCleanup(p)
		return
	}
	if r.Strategy.Live() {
		if !r.Facts.DestAborted {
			p.want(Action{Kind: ActAbortIncoming, Side: Dst})
		}
		if !r.Facts.SourceResumed && !r.Facts.SourceLost {
			if r.vol.inflight[ActStartOutgoing][Src] {
				return // a StartOutgoing landing after the cancel would start the transfer again
			}
			p.want(Action{Kind: ActCancelOutgoing, Side: Src, ResumeCompleted: r.Facts.DestAborted})
			return
		}
		if !r.Facts.DestAborted && !r.destLeftToAgent(p.now) {
			// The source is settled: release the VM record now (it can be
			// stopped or migrated again), keep removing the destination.
			r.planRecord(p, Src)
			if !r.vol.dstDown.IsZero() {
				p.wakeAt(r.vol.dstDown.Add(DestUnreachable))
			}
			return
		}
		if !r.Facts.DestAborted && r.Note == "" {
			r.Note = "the destination agent on " + r.To + " does not answer: it removes the never-armed destination QEMU itself when it is back"
		}
	} else if r.PrevVMState == VMRunning && !r.Facts.SourceResumed && !r.Facts.SourceLost {
		r.planRemoveCopies(p)
		if r.vol.inflight[ActStopVM][Src] {
			return // query before acting: a StopVM landing after the StartVM would stop the guest again
		}
		if r.cameFrom(RollingBack) != Pending && !r.vol.soleStop {
			// A StopVM that timed out may still be on its way: start the
			// guest again only once it must have ended.
			if grace := r.entered(RollingBack).Add(StartGrace); p.now.Before(grace) {
				p.wakeAt(grace)
				return
			}
		}
		p.want(Action{Kind: ActStartVM, Side: Src})
		return
	}
	if !r.Strategy.Live() && !r.planRemoveCopies(p) {
		return
	}
	r.planFinal(p, Src)
}

// planRemoveCopies (cold rollback with local disks) removes whatever the
// destination holds of the disk copies (DeleteVM with RemoveDisks: its
// empty or partial copies, its receiver); it reports whether that is done
// or left to the destination agent (silent for DestUnreachable: it drops
// an unverified arrival when it starts and reaps a verified one no
// migration in flight names).
func (r *Record) planRemoveCopies(p *planner) bool {
	if !r.CopyDisks || r.Facts.DestAborted || !r.visited(Copying) || r.destLeftToAgent(p.now) {
		return true
	}
	p.want(Action{Kind: ActDeleteVM, Side: Dst, RemoveDisks: true})
	if !r.vol.dstDown.IsZero() {
		p.wakeAt(r.vol.dstDown.Add(DestUnreachable))
	}
	return false
}

// entered is when the record last entered state s (from its history;
// events within a state, such as an adoption's, are not entries).
func (r *Record) entered(s State) time.Time {
	for i := len(r.History) - 1; i >= 0; i-- {
		if r.History[i].State == s {
			for i > 0 && r.History[i-1].State == s {
				i--
			}
			return r.History[i].At
		}
	}
	return r.StartedAt
}

// planGaveUp writes the VM record failed with the reason (its QEMUs are
// left as they are: the operator decides), frees the reservation and ends.
func (r *Record) planGaveUp(p *planner) {
	owner := Src
	if r.Facts.OwnerSwitched {
		owner = Dst
	}
	if !r.Facts.VMRecordReleased {
		if !r.vol.finalSeen && !r.vol.giveUpAsked {
			r.vol.giveUpAsked = true // one look at the owner's QEMU, then write what is known
			p.want(Action{Kind: ActGetVM, Side: owner})
			return
		}
		if r.vol.inflight[ActGetVM][owner] {
			return
		}
		st := VMFailed
		if r.vol.finalSeen {
			st = r.vol.finalVM
		}
		p.want(Action{Kind: ActUpdateVM, Side: owner, Update: VMUpdate{State: st, Host: r.Host(owner), Reason: r.Error, Unlock: true}})
		return
	}
	if r.FinalVMState == "" {
		r.FinalVMState = VMFailed
		if r.vol.finalSeen {
			r.FinalVMState = r.vol.finalVM
		}
	}
	if !r.Facts.ReservationFreed {
		p.want(Action{Kind: ActReleaseReservation, Side: Dst})
		return
	}
	r.enter(p.now, Failed, r.Error)
}

// visited reports whether the record was ever in state s.
func (r *Record) visited(s State) bool {
	for _, e := range r.History {
		if e.State == s {
			return true
		}
	}
	return false
}

// cameFrom is the state the record was in before it last entered s.
func (r *Record) cameFrom(s State) State {
	for i := len(r.History) - 1; i > 0; i-- {
		if r.History[i].State == s {
			for i > 0 && r.History[i-1].State == s {
				i-- // an event within s, not its entry
			}
			if i == 0 {
				return ""
			}
			return r.History[i-1].State
		}
	}
	return ""
}
