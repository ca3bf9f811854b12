package core

import (
	"errors"
	"fmt"
	"time"
)

// Pacing of the steps the core asks for. They are part of the core's
// behaviour (the simulation runs them in simulated time).
const (
	// RetryBackoff is the wait before a step that failed transiently is sent again.
	RetryBackoff = 500 * time.Millisecond
	// PollWait is the long poll of QueryOutgoing.
	PollWait = 200 * time.Millisecond
	// IncomingPollEvery paces QueryIncoming while the destination is watched.
	IncomingPollEvery = 300 * time.Millisecond
	// RecoverEvery paces post-copy recovery attempts.
	RecoverEvery = 2 * time.Second
	// StartGrace bounds a StartVM or StopVM call an executor may still have
	// on its way (its per-call deadline must be shorter): a cold unswitch
	// after a restart waits this long before it concludes the destination
	// does not run, and a cold rollback from stopping before it starts the
	// guest again.
	StartGrace = 2 * time.Minute
)

// ErrBadRecord is returned by New and Validate for a record that cannot be driven.
var ErrBadRecord = errors.New("invalid migration record")

// volatile is the executor's session with the core: what is in flight and
// when a step may be sent again. It is not persisted; Loaded resets it.
type volatile struct {
	// streamFailed is the cause of a source-reported stream failure while
	// transferring, until a QueryIncoming asked after it (streamAsked)
	// says whether the destination QEMU is gone (retry.go).
	streamFailed string
	streamAsked  bool
	// resumeSent: ResumeOutgoing was accepted in postcopy-recovering; the
	// source's status says when the post-copy runs again (postcopy.go).
	resumeSent bool

	inflight    [actCount][2]bool
	notBefore   [actCount][2]time.Time
	timerAt     time.Time
	lastOut     string // the source's migration status seen last (long poll)
	checkSrc    bool   // a source step said NotFound: ask GetVM(src) what is left
	checkDst    bool   // a destination step was refused: QueryIncoming says whether it is gone
	checkOut    bool   // FinishOutgoing was refused: QueryOutgoing says why
	finalVM     VMState
	loadedIn    State     // the state the record was loaded in (ObsLoaded)
	dstChecked  bool      // cold unswitch: GetVM said the destination does not run
	giveUpAsked bool      // gave up: GetVM of the owner was asked once
	finalSeen   bool      // finalVM holds the owner's run state from GetVM
	dstDown     time.Time // the destination agent has not answered since (before the CAS)
	freshOut    bool      // the QueryOutgoing in flight was asked after FinishOutgoing was refused
	prepared    *Record   // the switched record the CASOwner in flight writes with the owner
	// soleStop: this session sent the only StopVM of the migration (it
	// was not loaded in stopping, none was retried after a transient
	// error) and saw it answer: no StopVM can still be on its way, so a
	// cold rollback starts the guest again at once.
	soleStop    bool
	stopRetried bool    // a StopVM of this session failed transiently (it may land late)
	wrote       *Record // the record the last step's owner CAS wrote (what the store holds now)
	// handing: this executor's leader resigns (ObsHandOver, term
	// handoverTerm): it plans nothing more (handover.go).
	handing      bool
	handoverTerm int64
}

// New returns the record of a migration that has locked its VM (state
// migrating, migration_id set, generation gen) and starts at now.
func New(id, vm, from, to string, s Strategy, prev VMState, gen int64, opt Options, now time.Time) (Record, error) {
	r := Record{
		Version: BaseVersion, ID: id, VM: vm, From: from, To: to, Strategy: s, Options: opt, State: Pending,
		PrevVMState: prev, Generation: gen, StartedAt: now, Deadline: now.Add(opt.Timeout), LastProgressAt: now,
		Attempt: 1,
	}
	if err := r.Validate(); err != nil {
		return Record{}, err
	}
	r.History = []Event{{At: now, State: Pending, Message: fmt.Sprintf("%s %s → %s (%s)", vm, from, to, s)}}
	return r, nil
}

// Validate checks a record before it is driven.
func (r *Record) Validate() error {
	switch {
	case r.Version > Version:
		return fmt.Errorf("%w: version %d is newer than this engine's %d: upgrade the server", ErrBadRecord, r.Version, Version)
	case r.ID == "" || r.VM == "" || r.From == "" || r.To == "":
		return fmt.Errorf("%w: id, vm, from and to are required", ErrBadRecord)
	case r.From == r.To:
		return fmt.Errorf("%w: from and to are both %s", ErrBadRecord, r.From)
	case r.Options.StallTimeout <= 0 || r.Options.Timeout <= 0 || r.Options.RecoveryWindow <= 0:
		return fmt.Errorf("%w: options: stall timeout, timeout and recovery window must be > 0", ErrBadRecord)
	case r.Options.MaxAttempts < 0 || r.Options.MaxAttempts > MaxMaxAttempts:
		return fmt.Errorf("%w: options: max attempts must be 0..%d, got %d", ErrBadRecord, MaxMaxAttempts, r.Options.MaxAttempts)
	case r.Options.RetryBackoff < 0 || r.Options.RetryBackoff > MaxRetryBackoff:
		return fmt.Errorf("%w: options: retry backoff must be 0..%s, got %s", ErrBadRecord, MaxRetryBackoff, r.Options.RetryBackoff)
	}
	if _, err := ParseStrategy(string(r.Strategy)); err != nil {
		return fmt.Errorf("%w: %v", ErrBadRecord, err)
	}
	switch {
	case r.Strategy.Live() && r.PrevVMState != VMRunning:
		return fmt.Errorf("%w: prev_vm_state: a live migration needs a running VM, got %q", ErrBadRecord, r.PrevVMState)
	case !r.Strategy.Live() && r.PrevVMState != VMRunning && r.PrevVMState != VMStopped:
		return fmt.Errorf("%w: prev_vm_state: a cold migration needs a running or stopped VM, got %q", ErrBadRecord, r.PrevVMState)
	}
	return nil
}

// Step is the engine: the record and one observation in, the next record
// and what to do out. It is pure: no I/O, no clock (time is obs.Now), no
// randomness. The executor persists the returned record as Ready.Persist
// says (PersistBefore: before performing any action), then performs the
// actions and feeds each result back as an observation.
func Step(rec Record, obs Observation) (Record, Ready) {
	r := rec
	r.History = rec.History[:len(rec.History):len(rec.History)] // appends copy: the caller's record stays as it was
	before := rec
	if r.State.Terminal() {
		return r, Ready{}
	}
	if obs.Kind == ObsHandOver || r.vol.handing && obs.Kind != ObsLoaded {
		return r.handingOver(before, obs) // the leader resigns: nothing more from this executor (handover.go)
	}
	now := obs.Now
	switch obs.Kind {
	case ObsLoaded:
		r.vol = volatile{loadedIn: r.State}
		r.LastProgressAt = now
		r.adoptLoaded(now)
	case ObsAgentRestarted:
		for k := range r.vol.notBefore {
			r.vol.notBefore[k][obs.Side] = time.Time{}
		}
	case ObsCancel:
		if (r.State == Stopping || r.State == Switchover) && r.Strategy == Cold && r.PrevVMState == VMRunning {
			r.Note = "cancel refused: the guest is being stopped; the cold migration goes on to " + r.To
		} else if r.State == RollingBack && r.Retrying {
			// Cleaning up an attempt to retry it: no further attempt.
			r.CancelRequested = true
			r.Retrying = false
			r.History = append(r.History, Event{At: now, State: RollingBack, Message: "cancelled by the user: no further attempt"})
		} else if !r.Facts.OwnerSwitched && r.State != RollingBack && r.State != Unswitching {
			r.CancelRequested = true
			r.rollback(now, "", true)
		} else {
			r.Note = "cancel refused: the owner already switched to " + r.To
		}
	case ObsPersistFailed:
		// The executor kept this record and did none of the last step's
		// actions: forget what was in flight, retry after a pause.
		if r.handedOver() {
			r.adoptLoaded(now) // it was the load's write: adopt again
		}
		r.vol.inflight = [actCount][2]bool{}
		for k := range r.vol.notBefore {
			for s := range r.vol.notBefore[k] {
				r.vol.notBefore[k][s] = now.Add(RetryBackoff)
			}
		}
		r.vol.timerAt = time.Time{}
	case ObsResult:
		if obs.Action <= ActNone || obs.Action >= actCount {
			break
		}
		r.vol.inflight[obs.Action][obs.Side] = false
		r.result(obs)
		// A step whose answer changed nothing is not sent again at once:
		// no busy loop on a confused or slow side (polls pace themselves).
		if r.State == before.State && r.Facts == before.Facts && obs.Action != ActQueryOutgoing && obs.Action != ActQueryIncoming {
			if nb := &r.vol.notBefore[obs.Action][obs.Side]; !nb.After(now) {
				*nb = now.Add(RetryBackoff)
			}
		}
	case ObsTick:
		if !r.vol.timerAt.After(now) {
			r.vol.timerAt = time.Time{}
		}
	case ObsSteer:
		r.steer(now, obs)
	}
	r.deadlines(now)
	acts := r.plan(now)
	mode := persistMode(&before, &r)
	if w := r.vol.wrote; w != nil {
		// The owner CAS wrote the switched record: only what changed since
		// then needs writing.
		r.vol.wrote = nil
		mode = persistMode(w, &r)
	}
	if r.State == Switchover && r.Strategy.Live() && !r.Facts.OwnerSwitched {
		// A live switchover is not written on its own: its owner CAS writes
		// the switched record in the same transaction. Until then the store
		// says transferring, and a restarted server rolls back — right, as
		// the CAS did not happen (the destination, armed or not, never gets
		// the device state: migrate-continue follows the CAS).
		mode = PersistNone
	}
	return r, Ready{Persist: mode, Actions: acts}
}

// persistMode compares what changed.
func persistMode(a, b *Record) PersistMode {
	if a.State != b.State || a.Strategy != b.Strategy || a.Facts != b.Facts || a.Generation != b.Generation || a.DestURI != b.DestURI ||
		a.RecoverURI != b.RecoverURI || a.DiskURI != b.DiskURI || a.CancelRequested != b.CancelRequested || a.PostcopyWanted != b.PostcopyWanted || a.Error != b.Error ||
		!a.GiveUpAt.Equal(b.GiveUpAt) || !a.SwitchedAt.Equal(b.SwitchedAt) || a.FinalVMState != b.FinalVMState ||
		len(a.History) != len(b.History) || a.Attempt != b.Attempt || a.Retrying != b.Retrying ||
		!a.NextAttemptAt.Equal(b.NextAttemptAt) || len(a.Retries) != len(b.Retries) || !a.Handover.equal(b.Handover) {
		return PersistBefore
	}
	if a.Transferred != b.Transferred || a.Rounds != b.Rounds || !a.LastProgressAt.Equal(b.LastProgressAt) ||
		!a.PausedAt.Equal(b.PausedAt) || a.Attempts != b.Attempts || a.Note != b.Note {
		return PersistSoft
	}
	return PersistNone
}

// enter moves to state s with a reason.
func (r *Record) enter(now time.Time, s State, msg string) {
	if r.State == s {
		return
	}
	r.State = s
	r.History = append(r.History, Event{At: now, State: s, Message: msg})
	r.LastProgressAt = now
	r.vol.finalSeen = false
	if s.Terminal() {
		r.FinishedAt = now
	}
}

// rollback starts undoing a migration whose owner is the source (before
// the CAS, or after the unswitch). cause "" with cancelled: the user's.
func (r *Record) rollback(now time.Time, cause string, cancelled bool) {
	if r.State == RollingBack || r.State.Terminal() {
		return
	}
	if r.Facts.OwnerSwitched {
		// Never from here: after the CAS only Unswitching may lead back.
		r.unswitch(now, cause)
		return
	}
	if !cancelled && r.Error == "" {
		r.Error = cause
	}
	msg := cause
	if cancelled {
		msg = "cancelled by the user"
	}
	r.GiveUpAt = now.Add(r.rollbackWindow())
	r.enter(now, RollingBack, msg)
}

// unswitch starts proving that the destination never ran (removing it),
// to move the owner back to the source.
func (r *Record) unswitch(now time.Time, cause string) {
	if r.State == Unswitching {
		return
	}
	if r.Error == "" {
		r.Error = cause
	}
	r.enter(now, Unswitching, cause)
}

// lose records that the VM's only QEMU is gone and ends forward: whatever
// is left is removed, the VM record says failed with the reason.
func (r *Record) lose(now time.Time, why string) {
	if r.Error == "" {
		r.Error = why
	} else if r.Error != why {
		r.Error = why + " (after: " + r.Error + ")"
	}
	r.enter(now, Cleanup, why)
	r.vol.finalVM, r.vol.finalSeen = VMFailed, true
}

// deadlines applies the time bounds at now.
func (r *Record) deadlines(now time.Time) {
	switch r.State {
	case Pending:
		if r.Strategy.Live() {
			r.enter(now, Preparing, "starting the destination QEMU on "+r.To)
		} else {
			r.enter(now, Stopping, "stopping the guest on "+r.From)
		}
		return
	case Preparing, Mirroring, Transferring, Stopping, Copying, Switchover:
		if r.Facts.OwnerSwitched {
			return
		}
		if !now.Before(r.Deadline) {
			r.rollback(now, fmt.Sprintf("migration timeout of %s reached", r.Options.Timeout), false)
		} else if r.State != Stopping && now.Sub(r.LastProgressAt) > r.Options.StallTimeout &&
			!(r.State == Switchover && r.vol.inflight[ActArmResume][Dst]) {
			// (An ArmResume in flight at the switchover is bounded by its
			// call's deadline: its answer decides, not the stall timeout.)
			// (A guest's power-off takes its time: stopping is bounded by
			// the timeout only, so that no StopVM still on its way can stop
			// a guest a rollback has just started again.)
			cause := fmt.Sprintf("no progress for %s in %s (%d bytes sent)", r.Options.StallTimeout, r.State, r.Transferred)
			if r.State == Switchover {
				r.rollback(now, cause, false) // the source is paused at pre-switchover: no retry
			} else {
				r.failAttempt(now, cause)
			}
		}
	case RetryWait:
		if !now.Before(r.Deadline) {
			r.rollback(now, fmt.Sprintf("migration timeout of %s reached before attempt %d", r.Options.Timeout, r.attempt()+1), false)
		}
	case RollingBack, Unswitching, Resuming, Starting, PostcopyActive, PostcopyPaused, PostcopyRecovering, Cleanup:
		if r.State == Resuming && !r.Facts.DestArmed && !r.Facts.GaveUp && !r.vol.inflight[ActArmResume][Dst] &&
			now.Sub(r.SwitchedAt) > r.Options.StallTimeout {
			// The guest is paused on both sides. Never armed, the
			// destination was never sent the device state (continue
			// follows a proven arm): it cannot run — resume the source.
			r.unswitch(now, fmt.Sprintf("the destination could not be armed within %s of the owner switch", r.Options.StallTimeout))
			return
		}
		if !r.GiveUpAt.IsZero() && !now.Before(r.GiveUpAt) {
			r.giveUp(now)
		}
	}
}

// giveUp ends the attempts of a migration whose retries ran out of their
// window: the VM record is written failed with what is known (owner, where
// the guest and its pages are) and unlocked; if even that cannot be done
// within one more window, the migration ends failed.
func (r *Record) giveUp(now time.Time) {
	r.abandonRetry("the cleanup ran out of its window")
	if r.Facts.GaveUp {
		r.Error += "; the VM record could not be written either"
		r.enter(now, Failed, r.Error)
		return
	}
	what := fmt.Sprintf("gave up in %s after %s (recovery window): ", r.State, r.Options.RecoveryWindow)
	switch {
	case isPostcopy(r.State):
		what += "the post-copy link did not come back; the guest waits on " + r.To + ", its missing pages on " + r.From + " — restore the link and migrate again"
	case r.Facts.OwnerSwitched:
		what += "the owner record names " + r.To + "; check it with ferry host list"
	default:
		what += "the owner record names " + r.From
	}
	if r.Error != "" {
		what += "; cause: " + r.Error
	}
	r.Error = what
	r.Facts.GaveUp = true
	r.GiveUpAt = now.Add(r.Options.RecoveryWindow)
	r.History = append(r.History, Event{At: now, State: r.State, Message: what})
}

// steer applies the controller's decision (hybrid's post-copy switch, a clear abort).
func (r *Record) steer(now time.Time, obs Observation) {
	if r.State != Transferring || r.Facts.OwnerSwitched {
		return
	}
	switch obs.Steer {
	case SteerPostcopy:
		if r.Strategy == Hybrid && !r.Facts.PostcopyAsked {
			r.vol.notBefore[ActStartPostcopy][Src] = time.Time{}
			r.Note = "switching to post-copy: " + obs.SteerWhy
			r.PostcopyWanted = true
		}
	case SteerAbort:
		r.rollback(now, "the migration cannot finish within policy: "+obs.SteerWhy, false)
	case SteerReplan:
		r.replan(now, obs.Strategy, obs.SteerWhy)
	}
}

// rollbackWindow bounds a rollback's retries: the recovery window, plus
// StartGrace for a cold rollback of a running VM (which waits that long
// before it starts the guest again).
func (r *Record) rollbackWindow() time.Duration {
	if r.Strategy == Cold && r.PrevVMState == VMRunning {
		return r.Options.RecoveryWindow + StartGrace
	}
	return r.Options.RecoveryWindow
}
