package planner

import "fmt"

// Retrying a plain pre-copy the planner chose (ControllerOptions.AutoChosen).
//
// The planner picks plain pre-copy from its inputs; when they were wrong (a
// stale link figure, a guest that began dirtying faster) that pre-copy may
// never converge, and a stepped controller with DowntimeOnly has nothing to
// change once the downtime target is at its cap. The operator asked for
// auto with post-copy (or throttling) allowed, so such a pre-copy is not
// left to run until an outside bound: with the target at its cap, the
// controller gives it hybrid's patience (HybridPatience after the later of
// the cap and its first not-converging verdict, or HybridRounds rounds),
// then asks to abort it (Abort with RetryAs) so that the engine retries the
// migration once as the strategy the policy allows.

// retryStrategy is what a stuck auto-chosen pre-copy is retried as under
// pol: hybrid when post-copy is allowed, converge when only throttling is,
// "" when neither (plain pre-copy goes on).
func retryStrategy(pol Policy) string {
	switch {
	case pol.AllowPostcopy:
		return StrategyHybrid
	case pol.AllowConverge:
		return StrategyConverge
	}
	return ""
}

// reachedCap notes when the stepped downtime target first reached its cap.
func (c *Controller) reachedCap(s Sample) {
	if c.dt.capAt.round == 0 {
		c.dt.capAt = roundStart{round: max(s.Round, 1), at: s.Elapsed}
	}
}

// retryOther is the escalation of a DowntimeOnly controller of an
// auto-chosen pre-copy that is not converging with its target at the cap:
// wait out the patience, then abort with RetryAs.
func (c *Controller) retryOther(m *model, s Sample, why string) Action {
	c.reachedCap(s)
	from := max(c.dt.capAt.at, c.stuck.at)
	waited := s.Elapsed - from
	rounds := s.Round - max(c.dt.capAt.round, c.stuck.round)
	if waited < HybridPatience && rounds < HybridRounds {
		return none(fmt.Sprintf("%s; the downtime target is at its cap %s: retried as %s in %s (or %s) unless pre-copy converges",
			why, fmtSec(m.limit), c.retryAs, fmtDur(HybridPatience-waited), plural(HybridRounds-rounds, "more round")))
	}
	a := c.issue(s, Action{Kind: Abort, RetryAs: c.retryAs,
		Reason: fmt.Sprintf("precopy did not converge in %s after its downtime target reached its cap %s: retried as %s (%s)",
			fmtDur(s.Elapsed-c.dt.capAt.at), fmtSec(m.limit), c.retryAs, why)})
	c.done = "retry as " + c.retryAs + " requested: " + a.Reason
	return a
}
