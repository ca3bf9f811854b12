package core

import (
	"fmt"
	"time"
)

// Re-planning a pre-copy the planner chose.
//
// When the operator asked for auto and the planner chose plain pre-copy,
// the plan's inputs may have been wrong (a stale link figure, a guest that
// began dirtying faster): such a pre-copy may never converge. Once the
// executor's controller judges it not converging with its downtime target
// at its cap, it asks for SteerReplan with the strategy the policy allows
// (hybrid, else converge). The current attempt is then cleaned up like a
// link retry (retry.go: the destination removed, the source's migration
// cancelled, the VM record kept locked and the reservation held) and the
// next attempt runs the new strategy, once: the retry is recorded in
// Retries with its Strategy, the record is written as version 3, and a
// restarted server reads the current Strategy from it. The re-planned
// attempt does not count against MaxAttempts. An explicit strategy
// (Options.Auto false) is never re-planned.

// ReplanBackoff is the wait in retry-wait before a re-planned attempt:
// nothing needs to come back (the link is fine), but the cleaned-up
// attempt is written and checked in retry-wait like a link retry's.
const ReplanBackoff = 500 * time.Millisecond

// replans is the number of re-planned attempts (0 or 1).
func (r *Record) replans() int32 {
	var n int32
	for _, t := range r.Retries {
		if t.Strategy != "" {
			n++
		}
	}
	return n
}

// writtenVersion is the version the record is persisted as: Version once
// it was re-planned (an older engine must not drive it), else BaseVersion.
func (r *Record) writtenVersion() uint32 {
	if r.replans() > 0 {
		return Version
	}
	return BaseVersion
}

// replanRefusal says why the current attempt may not be re-planned as as
// at now ("" when it may).
func (r *Record) replanRefusal(now time.Time, as Strategy) string {
	switch {
	case !r.Options.Auto:
		return fmt.Sprintf("the operator asked for %s explicitly", r.Strategy)
	case r.Strategy != Precopy:
		return fmt.Sprintf("only a plain pre-copy is re-planned, this attempt runs %s", r.Strategy)
	case as != Hybrid && as != Converge:
		return fmt.Sprintf("it can be retried only as hybrid or converge, not %q", as)
	case r.replans() > 0:
		return "it was re-planned once already"
	case r.CancelRequested || r.Facts.SourceLost || r.Facts.OwnerSwitched:
		return "the migration is ending"
	case !now.Before(r.Deadline):
		return "the migration's timeout is reached"
	}
	return ""
}

// replan ends the current attempt of a pre-copy the planner chose that
// the controller judged not converging, to retry it once as as; when
// that is not allowed the pre-copy goes on and the note says why.
func (r *Record) replan(now time.Time, as Strategy, why string) {
	if no := r.replanRefusal(now, as); no != "" {
		r.Note = fmt.Sprintf("not retried as %s (%s): the pre-copy goes on", as, no)
		return
	}
	n := r.attempt()
	r.Retries = append(r.Retries, Retry{Attempt: n, At: now, Reason: why, Backoff: ReplanBackoff, Strategy: as})
	r.Retrying = true
	r.GiveUpAt = now.Add(r.rollbackWindow())
	r.enter(now, RollingBack, fmt.Sprintf("attempt %d (%s) did not converge: cleaning it up to retry it as %s (%s)", n, r.Strategy, as, why))
}
