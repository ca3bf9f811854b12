package planner

import (
	"fmt"
	"math"
	"strings"
	"time"
)

// ActionKind is what the Controller asks the migration driver to do.
type ActionKind int

// The actions, in the order the Controller escalates through them.
const (
	// None: keep going.
	None ActionKind = iota
	// RaiseBandwidth: QEMU sends well below the link's known rate; set its
	// max-bandwidth to Action.BandwidthBytesPerSec.
	RaiseBandwidth
	// Throttle: enable auto-converge (vCPU throttling); Action.Throttle is
	// the throttle the controller expects to need, usable as
	// cpu-throttle-initial.
	Throttle
	// StartPostcopy: switch the running migration to post-copy.
	StartPostcopy
	// Abort: nothing the policy allows will finish; cancel and roll back.
	Abort
	// RaiseDowntime: pre-copy does not reach the switchover threshold of
	// the stepped downtime target; set QEMU's downtime-limit to
	// Action.DowntimeLimit. A stepped controller (ControllerOptions) tries
	// it before every other action, once per step, up to the cap.
	RaiseDowntime
)

// String returns "none", "raise-bandwidth", "throttle", "start-postcopy",
// "abort" or "raise-downtime".
func (k ActionKind) String() string {
	switch k {
	case None:
		return "none"
	case RaiseBandwidth:
		return "raise-bandwidth"
	case Throttle:
		return "throttle"
	case StartPostcopy:
		return "start-postcopy"
	case Abort:
		return "abort"
	case RaiseDowntime:
		return "raise-downtime"
	}
	return fmt.Sprintf("action(%d)", int(k))
}

// Sample is one progress report of a running pre-copy, from QEMU's
// query-migrate.
type Sample struct {
	// Elapsed is the time since the transfer started.
	Elapsed time.Duration
	// Round is QEMU's dirty-sync count: 1 during the first full pass.
	Round int
	// RemainingBytes is the RAM still to send (the dirty set).
	RemainingBytes int64
	// TransferredBytes is the RAM sent so far.
	TransferredBytes int64
	// DirtyRateBytesPerSec is QEMU's current dirty rate.
	DirtyRateBytesPerSec float64
	// RateBytesPerSec is QEMU's current transfer rate.
	RateBytesPerSec float64
	// Throttle is the vCPU throttle QEMU applies now, in percent.
	Throttle int
	// Postcopy says the migration is already in post-copy.
	Postcopy bool
}

// Action is the Controller's answer to one Sample.
type Action struct {
	// Kind is what to do.
	Kind ActionKind
	// Throttle is the expected throttle in percent (Kind Throttle).
	Throttle int
	// BandwidthBytesPerSec is the max-bandwidth to set (Kind RaiseBandwidth).
	BandwidthBytesPerSec float64
	// DowntimeLimit is QEMU's downtime-limit to set (Kind RaiseDowntime).
	DowntimeLimit time.Duration
	// RetryAs (Kind Abort) is the strategy to retry the migration as once
	// this attempt is rolled back ("hybrid" or "converge"; see
	// ControllerOptions.AutoChosen); "" is a plain abort.
	RetryAs string
	// Reason explains the action, None included, in one line.
	Reason string
}

// Judging a running pre-copy.
const (
	// judgeAfter is how long past the start of round 2 (or of the last
	// escalation) the controller may judge from the rates alone.
	judgeAfter = 3 * time.Second
	// flatRatio: a dirty set that shrinks by less than 10% per round is flat.
	flatRatio = 0.9
	// slowLink: QEMU sending below 80% of the link's known rate is capped.
	slowLink = 0.8
)

// A hybrid migration's patience with a pre-copy judged not converging.
// Hybrid was planned because post-copy finishes where pre-copy may not:
// once pre-copy is judged not converging, the steps that may still rescue
// it (a downtime target that holds the dirty set, a bandwidth cap lifted,
// a throttle) get HybridPatience, and the dirty set at most HybridRounds
// more rounds to shrink by 10%; then the controller switches to post-copy,
// whatever step is still pending. Without this bound, the heavy bench
// (256 MiB rewritten at 96 MiB/s over 48 MiB/s, rounds of 5.5 s) waited for
// QEMU's auto-converge to ramp to 99% at one step per round and never
// switched within 60 s.
const (
	HybridPatience = judgeAfter
	HybridRounds   = 2
)

// Controller is the adaptive convergence controller. It watches samples of
// a running pre-copy and, when it is not converging, escalates within the
// policy: raise QEMU's bandwidth cap (if QEMU sends below 80% of the known
// link rate), throttle the vCPUs (if AllowConverge), switch to post-copy (if
// AllowPostcopy), or abort.
//
// It judges only after round 1, from the dirty set at the start of each
// round since round 1 or since its last step: with two round starts, a dirty
// set shrinking by less than 10% per round, or too slowly to reach the
// switchover threshold within MaxRounds, is not converging; with one round
// start and three seconds, a dirty rate at or above the transfer rate is not
// converging. After asking for a throttle it waits until QEMU's throttle
// reached the expected need (the maximum when the next step would be to
// abort), or had the time to (two checks per step), and judges afresh from
// there — but a controller that may switch to post-copy (hybrid) waits for
// no ramp: HybridPatience after its first not-converging verdict (or
// HybridRounds rounds), a dirty set that has not shrunk means post-copy.
// Each action is issued at most once (RaiseDowntime once per step);
// after post-copy or abort it only answers None. With ControllerOptions
// StepDowntime the switchover threshold is the stepped downtime target's,
// raised (RaiseDowntime) before anything else is tried. It is pure and deterministic, and not safe for
// concurrent use.
type Controller struct {
	m           model
	err         error
	explicitWSS bool
	issued      map[ActionKind]bool
	history     []Action
	last        Sample
	seen        bool
	starts      []roundStart // the dirty set at the start of each round ≥ 2
	base        roundStart   // the judging window starts after this
	baseSet     bool
	throttleAt  time.Duration // when throttling began; < 0: not yet
	target      int           // throttle expected to be needed
	ramped      bool          // the throttle reached the target (or had time to)
	done        string        // why the controller has nothing more to do
	dt          downtimeStep  // the stepped downtime target (downtime.go)
	stuck       roundStart    // the first not-converging verdict (round 0: none yet)
	bwAt        time.Duration // when the bandwidth was raised (0: never)
	retryAs     string        // what a stuck auto-chosen pre-copy is retried as ("": never; retry.go)
}

// roundStart is the largest remaining seen during a round (its start).
type roundStart struct {
	round     int
	at        time.Duration
	remaining int64
}

// NewController starts a controller for a migration planned with in. With
// invalid inputs it only ever answers None, saying why.
func NewController(in Inputs) *Controller {
	m, err := newModel(in)
	return &Controller{m: m, err: err, explicitWSS: in.WSSBytes > 0, issued: map[ActionKind]bool{}, throttleAt: -1}
}

// Decisions returns the actions issued so far (every Kind but None), oldest
// first.
func (c *Controller) Decisions() []Action {
	return append([]Action(nil), c.history...)
}

// Observe takes the next sample and returns what to do.
func (c *Controller) Observe(s Sample) Action {
	switch {
	case c.err != nil:
		return none("controller disabled: " + c.err.Error())
	case c.done != "":
		return none(c.done)
	case c.seen && (s.Elapsed < c.last.Elapsed || s.Round < c.last.Round):
		return none(fmt.Sprintf("sample out of order (t=%s round %d after t=%s round %d): ignored", s.Elapsed, s.Round, c.last.Elapsed, c.last.Round))
	}
	c.last, c.seen = s, true
	if s.Postcopy {
		c.done = "post-copy is running: the rest of RAM arrives on demand"
		return none(c.done)
	}
	if s.Round >= 2 {
		if n := len(c.starts); n == 0 || c.starts[n-1].round < s.Round {
			c.starts = append(c.starts, roundStart{round: s.Round, at: s.Elapsed, remaining: s.RemainingBytes})
		} else if s.RemainingBytes > c.starts[n-1].remaining {
			c.starts[n-1].remaining = s.RemainingBytes
		}
		if !c.baseSet {
			c.base, c.baseSet = roundStart{round: s.Round - 1, at: s.Elapsed}, true
		}
	}
	if s.Throttle > 0 && c.throttleAt < 0 {
		c.throttleAt, c.target = s.Elapsed, c.m.maxThrottle // auto-converge was on from the start
	}
	b := s.RateBytesPerSec
	if b <= 0 {
		b = c.m.b
	}
	if b <= 0 {
		return none("no transfer rate yet")
	}
	m := c.m
	m.setBandwidth(b)
	if c.dt.on {
		m.thr = b * c.stepLimit(&m) // judged against the stepped target
	}
	overTime := m.maxTotal > 0 && s.Elapsed.Seconds() >= m.maxTotal
	if !overTime {
		if s.Round < 2 {
			return none(fmt.Sprintf("round 1 (the full copy) in progress: %s remaining", fmtBytes(float64(s.RemainingBytes))))
		}
		near := float64(s.RemainingBytes) <= m.thr
		if c.nearTooLong(&m, s, near) {
			return c.raiseDowntime(&m, s, b, fmt.Sprintf("remaining %s ≤ switchover threshold %s for %s but QEMU has not switched over (its own rate estimate is lower)",
				fmtBytes(float64(s.RemainingBytes)), fmtBytes(m.thr), fmtDur(s.Elapsed-c.dt.nearAt)))
		}
		if near {
			return none(fmt.Sprintf("remaining %s ≤ switchover threshold %s: switchover is near", fmtBytes(float64(s.RemainingBytes)), fmtBytes(m.thr)))
		}
	}
	if a, ok := c.outOfPatience(&m, s); ok {
		return a
	}
	if c.throttleAt >= 0 && !c.ramped && m.pol.AllowConverge &&
		(s.Throttle >= c.rampTarget(&m) || c.rampLeft(&m, s) <= 0) {
		// Judge the throttle by what happens from now on.
		c.ramped, c.base = true, roundStart{round: s.Round, at: s.Elapsed}
		return none(fmt.Sprintf("throttle at %d%% (expected to need %d%%): watching whether pre-copy converges now", s.Throttle, c.target))
	}
	why, stuck := c.judge(&m, s, b)
	if overTime {
		why, stuck = fmt.Sprintf("the migration has run %s, beyond max total %s", fmtDur(s.Elapsed), fmtSec(m.maxTotal)), true
	}
	if !stuck {
		return none(why)
	}
	return c.escalate(&m, s, b, why)
}

// judge says whether pre-copy is converging, from the trend of the dirty
// set at each round's start since the window began, or from the rates.
func (c *Controller) judge(m *model, s Sample, b float64) (string, bool) {
	var win []roundStart
	for _, r := range c.starts {
		if r.round > c.base.round {
			win = append(win, r)
		}
	}
	rates := fmt.Sprintf("dirty %s vs link %s", fmtRate(s.DirtyRateBytesPerSec), fmtRate(b))
	if len(win) >= 2 {
		first, prev, last := win[0], win[len(win)-2], win[len(win)-1]
		trend := fmt.Sprintf("remaining %s → %s over %s, %s",
			fmtBytes(float64(first.remaining)), fmtBytes(float64(last.remaining)), plural(last.round-first.round, "round"), rates)
		if prev.remaining <= 0 {
			return "converging: " + trend, false
		}
		q := math.Pow(float64(last.remaining)/float64(prev.remaining), 1/float64(last.round-prev.round))
		if q >= flatRatio {
			return "pre-copy is not converging (" + trend + ")", true
		}
		more := math.Ceil(math.Log(m.thr/float64(last.remaining)) / math.Log(q))
		if float64(last.round-1)+more > MaxRounds {
			return fmt.Sprintf("pre-copy converges too slowly (%s: ×%.2f per round needs about %s more, beyond %d)", trend, q, plural(int(more), "round"), MaxRounds), true
		}
		return fmt.Sprintf("converging: %s (×%.2f per round, about %s more)", trend, q, plural(int(more), "round")), false
	}
	if s.Elapsed-c.base.at >= judgeAfter {
		if s.DirtyRateBytesPerSec >= b {
			return fmt.Sprintf("pre-copy is not converging (%s, %s into round %d)", rates, fmtDur(s.Elapsed-last(c.starts).at), s.Round), true
		}
		return fmt.Sprintf("no trend yet (round %d, %s); dirty rate below the link", s.Round, rates), false
	}
	return fmt.Sprintf("too early to judge (round %d, %s since the window began; %s)", s.Round, fmtDur(s.Elapsed-c.base.at), rates), false
}

func last(rs []roundStart) roundStart {
	if len(rs) == 0 {
		return roundStart{}
	}
	return rs[len(rs)-1]
}

// escalate picks the next action the policy allows for a migration that is
// not converging.
func (c *Controller) escalate(m *model, s Sample, b float64, why string) Action {
	if c.stuck.round == 0 {
		c.stuck = roundStart{round: s.Round, at: s.Elapsed, remaining: s.RemainingBytes}
		if r := last(c.starts); r.round > 0 {
			c.stuck.round, c.stuck.remaining = r.round, r.remaining
		}
	}
	overTime := m.maxTotal > 0 && s.Elapsed.Seconds() >= m.maxTotal
	if m.pol.AllowPostcopy && (overTime || s.Elapsed-max(c.stuck.at, c.bwAt) >= HybridPatience) {
		return c.postcopy(s, why+c.afterThrottle(s)+c.tried(s))
	}
	if c.dt.on && c.stepLimit(m) < m.limit {
		return c.raiseDowntime(m, s, b, why)
	}
	if c.dt.only {
		if c.retryAs != "" {
			return c.retryOther(m, s, why)
		}
		return none(fmt.Sprintf("%s; the downtime target is at its cap %s: plain pre-copy has nothing more to change", why, fmtMs(m.limit)))
	}
	if !c.issued[RaiseBandwidth] && c.m.b > 0 && s.RateBytesPerSec > 0 && s.RateBytesPerSec < slowLink*c.m.b {
		c.bwAt = s.Elapsed
		return c.issue(s, Action{Kind: RaiseBandwidth, BandwidthBytesPerSec: c.m.b,
			Reason: fmt.Sprintf("%s: QEMU sends %s on a link known to carry %s: raise its max-bandwidth", why, fmtRate(s.RateBytesPerSec), fmtRate(c.m.b))})
	}
	if m.pol.AllowConverge {
		if c.throttleAt < 0 {
			need := c.neededThrottle(m, s)
			c.throttleAt, c.target = s.Elapsed, need
			return c.issue(s, Action{Kind: Throttle, Throttle: need,
				Reason: fmt.Sprintf("%s: throttle the vCPUs (auto-converge; about %d%% needed)", why, need)})
		}
		if !c.ramped && m.pol.AllowPostcopy {
			return none(fmt.Sprintf("%s; throttle at %d%% and rising towards %d%%: post-copy in %s unless pre-copy converges", why, s.Throttle, c.rampTarget(m), fmtDur(HybridPatience-(s.Elapsed-max(c.stuck.at, c.bwAt)))))
		}
		if !c.ramped {
			return none(fmt.Sprintf("%s; throttle at %d%% and rising towards %d%%: waiting up to %s more", why, s.Throttle, c.rampTarget(m), fmtDur(c.rampLeft(m, s))))
		}
	}
	if m.pol.AllowPostcopy {
		return c.postcopy(s, why+c.afterThrottle(s))
	}
	var forbids []string
	if !m.pol.AllowConverge {
		forbids = append(forbids, "throttling")
	}
	forbids = append(forbids, "post-copy")
	a := c.issue(s, Action{Kind: Abort, Reason: why + c.afterThrottle(s) + " and policy forbids " + strings.Join(forbids, " and ")})
	c.done = "abort requested: " + a.Reason
	return a
}

// outOfPatience is hybrid's bound on a pre-copy judged not converging:
// HybridPatience after the verdict (or after a bandwidth raise, which
// needs a round to show), or HybridRounds rounds after it, a dirty set at
// the round's start that has not shrunk by 10% since the verdict means
// post-copy, whatever step is pending (a throttle ramping, a judging window
// a downtime or bandwidth raise restarted).
func (c *Controller) outOfPatience(m *model, s Sample) (Action, bool) {
	cur := last(c.starts)
	if !m.pol.AllowPostcopy || c.stuck.round == 0 || float64(cur.remaining) < flatRatio*float64(c.stuck.remaining) {
		return Action{}, false
	}
	waited := s.Elapsed - max(c.stuck.at, c.bwAt)
	if waited < HybridPatience && cur.round-c.stuck.round < HybridRounds {
		return Action{}, false
	}
	return c.postcopy(s, fmt.Sprintf("pre-copy has not converged %s (%s) after it was judged not converging: the dirty set at a round's start %s → %s%s%s",
		fmtDur(s.Elapsed-c.stuck.at), plural(cur.round-c.stuck.round, "round"), fmtBytes(float64(c.stuck.remaining)), fmtBytes(float64(cur.remaining)), c.afterThrottle(s), c.tried(s))), true
}

// postcopy issues StartPostcopy; the controller is done after it.
func (c *Controller) postcopy(s Sample, why string) Action {
	a := c.issue(s, Action{Kind: StartPostcopy, Reason: why + ": switch to post-copy"})
	c.done = "post-copy requested: " + a.Reason
	return a
}

// tried lists the steps already issued that did not bring convergence.
func (c *Controller) tried(s Sample) string {
	var steps []string
	for _, k := range []ActionKind{RaiseDowntime, RaiseBandwidth} {
		for _, a := range c.history {
			if a.Kind == k {
				steps = append(steps, k.String())
				break
			}
		}
	}
	if len(steps) == 0 {
		return ""
	}
	return fmt.Sprintf(" (%s tried; %s since the verdict)", strings.Join(steps, ", "), fmtDur(s.Elapsed-c.stuck.at))
}

// afterThrottle notes the throttle already tried.
func (c *Controller) afterThrottle(s Sample) string {
	if c.throttleAt < 0 {
		return ""
	}
	return fmt.Sprintf(" even at %d%% throttle", s.Throttle)
}

// rampTarget is the throttle to wait for before escalating: the one
// expected to be needed when post-copy is the next step, the maximum when
// the next step is to abort.
func (c *Controller) rampTarget(m *model) int {
	if m.pol.AllowPostcopy {
		return min(c.target, m.maxThrottle)
	}
	return m.maxThrottle
}

// rampLeft is how much longer QEMU may need to ramp the throttle to the
// target: two checks (each a second, or a round when rounds are longer) per
// step, plus judgeAfter to see the effect.
func (c *Controller) rampLeft(m *model, s Sample) time.Duration {
	steps := 1
	if t := c.rampTarget(m); t > m.initThrottle && m.incThrottle > 0 {
		steps += (t - m.initThrottle + m.incThrottle - 1) / m.incThrottle
	}
	period := time.Second
	if n := len(c.starts); n >= 2 {
		period = max(period, c.starts[n-1].at-c.starts[n-2].at)
	}
	return time.Duration(steps)*2*period + judgeAfter - (s.Elapsed - c.throttleAt)
}

// neededThrottle is the smallest auto-converge step with which the observed
// dirty rate lets pre-copy converge from the current remaining bytes, or
// the max throttle if none does.
func (c *Controller) neededThrottle(m *model, s Sample) int {
	m2 := *m
	m2.r = s.DirtyRateBytesPerSec
	if !c.explicitWSS {
		m2.w = math.Min(m2.mem, m2.r)
	}
	for p := m2.nextThrottle(0); ; p = m2.nextThrottle(p) {
		if m2.simulate(float64(s.RemainingBytes), p, false).converges || p >= m2.maxThrottle {
			return p
		}
	}
}

// issue records a to the history, the judging window restarts now.
func (c *Controller) issue(s Sample, a Action) Action {
	c.issued[a.Kind] = true
	c.history = append(c.history, a)
	c.base = roundStart{round: s.Round, at: s.Elapsed}
	return a
}

func none(why string) Action { return Action{Kind: None, Reason: why} }

// plural formats "1 round", "3 rounds".
func plural(n int, noun string) string {
	if n == 1 {
		return "1 " + noun
	}
	return fmt.Sprintf("%d %ss", n, noun)
}
