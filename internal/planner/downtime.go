package planner

import (
	"fmt"
	"math"
	"time"
)

// Stepping the downtime target.
const (
	// DowntimeStepStart is the first downtime-limit a stepped controller
	// gives QEMU: the RAM part of the pause (the device state and the
	// switchover come on top of it). An idle guest's dirty set reaches it
	// within a few short rounds.
	DowntimeStepStart = 5 * time.Millisecond
	// nearFor is how long the dirty set may sit at or below the current
	// switchover threshold (by the controller's rate) without QEMU
	// switching over before the target is raised: QEMU judges with its own,
	// sometimes lower, rate estimate.
	nearFor = time.Second
	// stepFactor is the least a raise multiplies the target by, so that a
	// target reaches its cap in a few steps.
	stepFactor = 2
	// stepMargin is the headroom a raise adds above the observed dirty set.
	stepMargin = 1.25
)

// ControllerOptions are a Controller's behaviours beyond its Inputs.
type ControllerOptions struct {
	// StepDowntime starts QEMU's downtime-limit at DowntimeStepStart and
	// raises it (RaiseDowntime) only when pre-copy does not converge to its
	// switchover threshold, up to what MaxDowntime leaves after the device
	// state and the switchover (the limit the planner predicts with).
	StepDowntime bool
	// DowntimeOnly makes the controller step the downtime target and
	// nothing else (plain pre-copy: no throttle, no post-copy, no abort;
	// QEMU keeps sending at the cap and the migration's own bounds apply),
	// whatever the Inputs' policy allows.
	DowntimeOnly bool
	// AutoChosen (with DowntimeOnly): the planner chose this plain
	// pre-copy on its own (the operator asked for auto). Once its
	// downtime target is at its cap and it is still judged not converging
	// HybridPatience later (or HybridRounds rounds later), the controller
	// asks to abort it and retry it as hybrid when the policy allows
	// post-copy, else as converge when it allows throttling (Action.RetryAs,
	// retry.go); a policy that allows neither keeps plain pre-copy going.
	AutoChosen bool
}

// downtimeStep is the stepped downtime target's state.
type downtimeStep struct {
	on, only bool
	limit    float64       // seconds: the downtime-limit QEMU has now (before the cap)
	nearAt   time.Duration // since when the dirty set is at or below the threshold; < 0: it is not
	capAt    roundStart    // when the target reached its cap (round 0: not yet)
}

// NewSteppedController is NewController with options: with StepDowntime
// the downtime target starts low and rises only when needed.
func NewSteppedController(in Inputs, o ControllerOptions) *Controller {
	c := NewController(in)
	if o.StepDowntime || o.DowntimeOnly {
		c.dt = downtimeStep{on: true, only: o.DowntimeOnly, limit: DowntimeStepStart.Seconds(), nearAt: -1}
	}
	if o.DowntimeOnly {
		if o.AutoChosen {
			c.retryAs = retryStrategy(c.m.pol)
		}
		// Plain pre-copy itself never throttles, switches or aborts.
		c.m.pol.AllowConverge, c.m.pol.AllowPostcopy = false, false
	}
	return c
}

// DowntimeLimit is the downtime-limit QEMU should have now: the stepped
// target (never above its cap), or 0 for a controller that does not step it
// (or is disabled by invalid inputs).
func (c *Controller) DowntimeLimit() time.Duration {
	if !c.dt.on || c.err != nil {
		return 0 // a disabled controller never raises it: keep the planned limit
	}
	l := c.dt.limit
	if c.m.b > 0 {
		l = math.Min(l, c.m.limit)
	}
	return time.Duration(math.Max(math.Round(l*1000), 1)) * time.Millisecond
}

// stepLimit is the current target under m's cap (m.limit, at m's rate).
func (c *Controller) stepLimit(m *model) float64 {
	return math.Min(c.dt.limit, m.limit)
}

// nearTooLong reports whether the dirty set has been at or below the
// stepped threshold for nearFor without QEMU switching over (it is called
// only while the migration is still active).
func (c *Controller) nearTooLong(m *model, s Sample, near bool) bool {
	if !c.dt.on || !near {
		c.dt.nearAt = -1
		return false
	}
	if c.dt.nearAt < 0 {
		c.dt.nearAt = s.Elapsed
	}
	return s.Elapsed-c.dt.nearAt >= nearFor && c.stepLimit(m) < m.limit
}

// raiseDowntime steps the target up for a pre-copy that does not reach
// the current threshold: to the dirty set seen at the last round start
// (with a margin) at the current rate, at least stepFactor times the
// current target, at most the cap. A dirty set the cap cannot hold either
// goes straight to the cap without restarting the judging window, so the
// rest of the escalation (throttle, post-copy, abort) is not delayed.
func (c *Controller) raiseDowntime(m *model, s Sample, b float64, why string) Action {
	cur := c.stepLimit(m)
	plateau := float64(s.RemainingBytes)
	if r := last(c.starts); r.round > 0 && r.remaining > 0 {
		plateau = float64(r.remaining)
	}
	need := plateau / b
	next := math.Ceil(math.Max(cur*stepFactor, need*stepMargin)*1000-1e-6) / 1000
	fits := need <= m.limit
	if next >= m.limit {
		next = m.limit
		c.reachedCap(s)
	}
	c.dt.limit, c.dt.nearAt = next, -1
	base, baseSet := c.base, c.baseSet
	a := c.issue(s, Action{Kind: RaiseDowntime, DowntimeLimit: seconds(next),
		Reason: fmt.Sprintf("%s: raise the downtime target %s → %s (dirty set %s at %s needs %s; cap %s)",
			why, fmtMs(cur), fmtMs(next), fmtBytes(plateau), fmtRate(b), fmtMs(need), fmtMs(m.limit))})
	delete(c.issued, RaiseDowntime) // it may be issued again, up to the cap
	if !fits {
		c.base, c.baseSet = base, baseSet
	}
	return a
}

// fmtMs formats seconds as whole milliseconds ("12 ms").
func fmtMs(sec float64) string {
	return fmt.Sprintf("%.0f ms", sec*1000)
}

// steppedRun is a pre-copy simulated as a stepped controller runs it: first
// at DowntimeStepStart, then, while it does not converge, at the target
// raiseDowntime would set from the dirty set it stopped at (at least
// stepFactor times the last, at most the cap m.limit). It returns the run
// at the first target that converges (or the cap's run), that target, and
// how many raises it took.
func (m *model) steppedRun(start float64, p0 int, autoConverge bool) (r run, limit float64, raises int) {
	limit = math.Min(DowntimeStepStart.Seconds(), m.limit)
	for {
		s := *m
		s.thr = m.b * limit
		r = s.simulate(start, p0, autoConverge)
		if r.converges || limit >= m.limit {
			return r, limit, raises
		}
		need := r.final / m.b
		limit = math.Min(m.limit, math.Ceil(math.Max(limit*stepFactor, need*stepMargin)*1000-1e-6)/1000)
		raises++
	}
}

// precopyRun is the pre-copy simulation a prediction uses: stepped when
// the controller steps the downtime target (unthrottled: the controller
// throttles only once the target is at its cap), else at the cap. extra is the
// time the raises cost: each waits for the controller to see no
// convergence at the lower target (about nearFor).
func (m *model) precopyRun(autoConverge bool) (r run, why string, extra float64) {
	if !m.stepped {
		return m.simulate(m.nz, 0, autoConverge), "", 0
	}
	// The controller raises the target to its cap before it throttles:
	// throttling starts only at the cap.
	r, limit, raises := m.steppedRun(m.nz, 0, false)
	if !r.converges {
		if autoConverge {
			return m.simulate(m.nz, 0, true), "", 0
		}
		return r, "", 0
	}
	extra = float64(raises) * nearFor.Seconds()
	why = fmt.Sprintf("; stepped downtime target: switches over at %s", fmtMs(limit))
	if raises > 0 {
		why += fmt.Sprintf(" after %s from %s (about %s each)", plural(raises, "raise"), fmtMs(DowntimeStepStart.Seconds()), fmtSec(nearFor.Seconds()))
	}
	return r, why, extra
}
