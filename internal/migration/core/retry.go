package core

import (
	"fmt"
	"time"
)

// Retry policy of a live migration before the owner switch.
//
// An attempt that fails for a link-related reason while preparing or
// transferring — the stall timeout (no progress), the destination agent
// unreachable for DestUnreachable, or the source QEMU reporting its
// stream failed — is cleaned up like any rollback (AbortIncoming on the
// destination, CancelOutgoing on the source, whose guest never paused) but
// the VM record stays locked and the reservation kept; once both sides are
// settled the migration waits in RetryWait for the backoff, then starts the
// next attempt from preparing with a new agent-side id (AttemptID). Every
// other failure is final as before: a cancel, the overall timeout (it
// bounds all attempts together), the controller's abort, a destination or
// source QEMU that is gone, a refusal, a lost owner CAS, a control-plane
// restart during an attempt. A retry is abandoned (the rollback goes on to
// failed) when the cleanup cannot prove the destination removed (its agent
// stays unreachable), the source QEMU is lost, the user cancels, or the
// next attempt would start after the deadline.
const (
	// DefaultMaxAttempts is the attempts a request gets when it names none.
	DefaultMaxAttempts int32 = 3
	// MaxMaxAttempts is the most attempts a request may ask for.
	MaxMaxAttempts int32 = 10
	// DefaultRetryBackoff is the wait before the second attempt.
	DefaultRetryBackoff = 2 * time.Second
	// MaxRetryBackoff caps the doubling backoff.
	MaxRetryBackoff = 30 * time.Second
)

// attempt is the current attempt number (a version-1 record has 0: one).
func (r *Record) attempt() int32 { return max(r.Attempt, 1) }

// maxAttempts is the policy's bound (0 in a version-1 record: one), plus
// the re-planned attempt when there was one (replan.go): it is not a
// link retry and takes none of theirs.
func (r *Record) maxAttempts() int32 { return max(r.Options.MaxAttempts, 1) + r.replans() }

// AttemptLimit is how many attempts the migration may make: the policy's
// MaxAttempts (at least 1) plus a re-planned attempt if it made one.
func (r *Record) AttemptLimit() int32 { return r.maxAttempts() }

// AttemptID is the id the agents key the current attempt's steps by: the
// migration id for the first attempt, "<id>-a<n>" for attempt n > 1 (an
// agent refuses to start again an id it cancelled or ended).
func (r *Record) AttemptID() string { return AttemptIDOf(r.ID, r.attempt()) }

// AttemptIDOf is the agent-side id of attempt n of migration id.
func AttemptIDOf(id string, n int32) string {
	if n > 1 {
		return fmt.Sprintf("%s-a%d", id, n)
	}
	return id
}

// retryBackoff is the wait after attempt n's cleanup before attempt n+1:
// RetryBackoff doubled per earlier retry, capped at MaxRetryBackoff.
func (r *Record) retryBackoff(n int32) time.Duration {
	b := r.Options.RetryBackoff
	if b <= 0 {
		b = DefaultRetryBackoff
	}
	for i := int32(1); i < n && b < MaxRetryBackoff; i++ {
		b *= 2
	}
	return min(b, MaxRetryBackoff)
}

// canRetry reports whether a link-related failure of the current attempt
// at now may be retried under the policy.
func (r *Record) canRetry(now time.Time) bool {
	return r.Strategy.Live() && !r.Facts.OwnerSwitched && !r.CancelRequested && !r.Facts.SourceLost &&
		(r.State == Preparing || r.State == Transferring) && r.attempt() < r.maxAttempts() &&
		now.Add(r.retryBackoff(r.attempt())).Before(r.Deadline)
}

// failAttempt ends the current attempt for a link-related cause: cleaned up
// and retried when the policy allows, else rolled back for good.
func (r *Record) failAttempt(now time.Time, cause string) {
	if !r.canRetry(now) {
		if r.attempt() > 1 {
			cause = fmt.Sprintf("attempt %d of %d: %s", r.attempt(), r.maxAttempts(), cause)
		}
		r.rollback(now, cause, false)
		return
	}
	n := r.attempt()
	r.Retries = append(r.Retries, Retry{Attempt: n, At: now, Reason: cause, Backoff: r.retryBackoff(n)})
	r.Retrying = true
	r.GiveUpAt = now.Add(r.rollbackWindow())
	r.enter(now, RollingBack, fmt.Sprintf("attempt %d of %d failed (%s): cleaning it up to retry", n, r.maxAttempts(), cause))
}

// abandonRetry turns a retry's cleanup into a final rollback: why is added
// to the failed attempt's reason as the migration's error.
func (r *Record) abandonRetry(why string) {
	if !r.Retrying {
		return
	}
	r.Retrying = false
	if r.Error == "" && len(r.Retries) > 0 {
		last := r.Retries[len(r.Retries)-1]
		r.Error = fmt.Sprintf("attempt %d of %d: %s", last.Attempt, r.maxAttempts(), last.Reason)
		if why != "" {
			r.Error += "; not retried: " + why
		}
	}
}

// anyInflight reports whether an action of this session is still on its way.
func (r *Record) anyInflight() bool {
	for k := range r.vol.inflight {
		if ActionKind(k) == ActSetTimer {
			continue
		}
		if r.vol.inflight[k][Src] || r.vol.inflight[k][Dst] {
			return true
		}
	}
	return false
}

// planRetryCleanup is rolling-back while Retrying: remove the destination,
// make sure the source runs, then wait in RetryWait. The VM record stays
// locked and the reservation kept for the next attempt.
func (r *Record) planRetryCleanup(p *planner) {
	switch {
	case r.Facts.SourceLost:
		r.abandonRetry("the source QEMU is gone")
		r.planRollback(p)
		return
	case !r.Facts.DestAborted && r.destLeftToAgent(p.now):
		r.abandonRetry(fmt.Sprintf("the destination agent on %s stayed unreachable for %s", r.To, DestUnreachable))
		r.planRollback(p)
		return
	}
	if !r.Facts.DestAborted && !r.vol.inflight[ActPrepareIncoming][Dst] {
		// (A PrepareIncoming still on its way could start a destination
		// after the abort: abort once its answer is in.)
		p.want(Action{Kind: ActAbortIncoming, Side: Dst})
	}
	if !r.Facts.SourceResumed {
		if r.vol.inflight[ActStartOutgoing][Src] {
			return // a StartOutgoing landing after the cancel would start the transfer again
		}
		p.want(Action{Kind: ActCancelOutgoing, Side: Src, ResumeCompleted: r.Facts.DestAborted})
	}
	if !r.Facts.DestAborted || !r.Facts.SourceResumed || r.anyInflight() {
		if !r.vol.dstDown.IsZero() {
			p.wakeAt(r.vol.dstDown.Add(DestUnreachable))
		}
		return // every answer of this attempt is in before the next one starts
	}
	last := r.Retries[len(r.Retries)-1]
	r.Retrying = false
	r.NextAttemptAt = p.now.Add(last.Backoff)
	r.GiveUpAt = time.Time{}
	next := fmt.Sprintf("attempt %d in %s", last.Attempt+1, last.Backoff)
	if last.Strategy != "" {
		next = fmt.Sprintf("attempt %d as %s in %s", last.Attempt+1, last.Strategy, last.Backoff)
	}
	r.enter(p.now, RetryWait, fmt.Sprintf("attempt %d cleaned up (destination removed, the guest runs on %s): %s",
		last.Attempt, r.From, next))
	r.planRetryWait(p)
}

// planRetryWait starts the next attempt once its time has come.
func (r *Record) planRetryWait(p *planner) {
	if p.now.Before(r.NextAttemptAt) {
		p.wakeAt(r.NextAttemptAt)
		return
	}
	if r.anyInflight() {
		return
	}
	r.startAttempt(p.now)
}

// startAttempt resets what one attempt proved and prepares again.
func (r *Record) startAttempt(now time.Time) {
	r.Attempt = r.attempt() + 1
	as := ""
	if n := len(r.Retries); n > 0 && r.Retries[n-1].Strategy != "" && r.Retries[n-1].Attempt == r.Attempt-1 {
		r.Strategy = r.Retries[n-1].Strategy // re-planned (replan.go)
		as = fmt.Sprintf(" (re-planned as %s)", r.Strategy)
	}
	r.Facts = Facts{}
	r.DestURI, r.RecoverURI = "", ""
	r.Transferred, r.Rounds = 0, 0
	r.PostcopyWanted = false
	r.NextAttemptAt, r.GiveUpAt = time.Time{}, time.Time{}
	r.Note = ""
	r.vol = volatile{loadedIn: r.vol.loadedIn, timerAt: r.vol.timerAt}
	r.enter(now, Preparing, fmt.Sprintf("attempt %d of %d%s: starting the destination QEMU on %s", r.Attempt, r.maxAttempts(), as, r.To))
}

// streamFailed notes a source-reported stream failure while transferring:
// whether it is the link's (retried) or the destination's (its QEMU gone:
// not retried) a QueryIncoming asked after it decides.
func (r *Record) streamFailed(cause string) {
	if r.vol.streamFailed == "" {
		r.vol.streamFailed = cause
	}
}

// planStreamCheck asks the destination once, after the failure (a query
// already in flight was asked before it: its answer is waited for first).
func (r *Record) planStreamCheck(p *planner) {
	if r.vol.streamAsked || r.vol.inflight[ActQueryIncoming][Dst] {
		return
	}
	r.vol.notBefore[ActQueryIncoming][Dst] = time.Time{}
	p.want(Action{Kind: ActQueryIncoming, Side: Dst})
	r.vol.streamAsked = true
}

// streamFailedDestAlive: the destination QEMU lives after the stream
// failed: the link broke it.
func (r *Record) streamFailedDestAlive(now time.Time) {
	if r.State == Transferring && r.vol.streamFailed != "" && r.vol.streamAsked {
		r.failAttempt(now, r.vol.streamFailed)
	}
}

// streamFailedDestSilent: the destination agent does not answer the check
// either: the link is down.
func (r *Record) streamFailedDestSilent(obs Observation) {
	if obs.Action == ActQueryIncoming && r.State == Transferring && r.vol.streamFailed != "" && r.vol.streamAsked {
		r.failAttempt(obs.Now, r.vol.streamFailed+" (the destination agent does not answer either)")
	}
}
