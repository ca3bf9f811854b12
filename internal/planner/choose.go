package planner

import (
	"errors"
	"fmt"
	"math"
	"strings"
	"time"
)

// ErrNoPlan is matched (errors.Is) by every refusal of Choose.
var ErrNoPlan = errors.New("no migration strategy fits the policy")

// ErrBandwidthUnknown is matched (errors.Is) by Choose's refusal when
// Inputs.BandwidthBytesPerSec is 0.
var ErrBandwidthUnknown = errors.New(ReasonBandwidthUnknown)

// NoPlanError is Choose's refusal: one line per strategy saying why it
// fails and what would help, plus general lines first when they apply.
type NoPlanError struct {
	// Reasons are the lines, e.g. "postcopy: not allowed by policy (allow
	// postcopy: it would pause 30ms and take 12.4s)".
	Reasons []string
	// Cause is ErrBandwidthUnknown, an ErrInvalidInput error, or nil.
	Cause error
}

// Error joins the reasons.
func (e *NoPlanError) Error() string {
	return "no migration plan fits: " + strings.Join(e.Reasons, "; ")
}

// Is makes errors.Is(err, ErrNoPlan) true.
func (e *NoPlanError) Is(target error) bool { return target == ErrNoPlan }

// Unwrap returns the cause, if any.
func (e *NoPlanError) Unwrap() error { return e.Cause }

// Decision is Choose's answer.
type Decision struct {
	// Strategy is the chosen strategy.
	Strategy string
	// Prediction is the chosen strategy's prediction.
	Prediction Prediction
	// Reason says in one line why it was chosen.
	Reason string
	// Alternatives are the other predictions, in the order given.
	Alternatives []Prediction
}

// nearTotal is how much slower (as a fraction) a gentler strategy may be
// than the fastest and still be preferred.
const nearTotal = 0.10

// Choose suggests a longer max downtime only up to the larger of
// suggestFactor times the current one and suggestFloor, and never beyond
// suggestCeiling (the CLI's limit): a pre-copy that needs a ten-second
// pause is a cold migration in disguise.
const (
	suggestFactor  = 10
	suggestFloor   = time.Second
	suggestCeiling = 60 * time.Second
)

// Choose picks a strategy from preds (from Predict(in); nil means
// Predict(in)) under in's policy: see the package documentation for the
// rule. It refuses with a *NoPlanError when bandwidth is unknown, the
// inputs are invalid, or no allowed strategy meets MaxDowntime and
// Policy.MaxTotal.
func Choose(in Inputs, preds []Prediction) (Decision, error) {
	m, err := newModel(in)
	if err != nil {
		return Decision{}, &NoPlanError{Reasons: []string{err.Error()}, Cause: err}
	}
	if m.b == 0 {
		return Decision{}, &NoPlanError{Reasons: []string{ReasonBandwidthUnknown}, Cause: ErrBandwidthUnknown}
	}
	if len(preds) == 0 {
		preds = m.predictAll()
	}
	var live []int
	cold := -1
	for i, p := range preds {
		if m.disqualify(p) != "" {
			continue
		}
		if p.Strategy == StrategyCold {
			cold = i
		} else {
			live = append(live, i)
		}
	}
	live, setAside := m.setAsideFragilePrecopy(preds, live)
	var chosen int
	var reason string
	switch {
	case len(live) > 0:
		fastest := live[0]
		for _, i := range live[1:] {
			if better(preds[i], preds[fastest]) {
				fastest = i
			}
		}
		chosen = fastest
		for _, i := range live {
			if rank(preds[i]) < rank(preds[chosen]) && float64(preds[i].Total) <= (1+nearTotal)*float64(preds[fastest].Total) {
				chosen = i
			}
		}
		p := preds[chosen]
		reason = fmt.Sprintf("%s: downtime %s ≤ %s, total %s", p.Strategy, fmtDur(p.Downtime), fmtSec(m.maxDown), fmtDur(p.Total))
		if chosen == fastest {
			reason += ", the fastest strategy that fits"
		} else {
			f := preds[fastest]
			reason += fmt.Sprintf(", within 10%% of the fastest (%s, %s) and gentler on the guest", f.Strategy, fmtDur(f.Total))
		}
		reason += setAside
	case cold >= 0:
		chosen = cold
		p := preds[cold]
		reason = fmt.Sprintf("cold: no live strategy fits and a reboot is allowed; downtime %s ≤ %s", fmtDur(p.Downtime), fmtSec(m.maxDown))
	default:
		return Decision{}, &NoPlanError{Reasons: m.refusal(in, preds)}
	}
	d := Decision{Strategy: preds[chosen].Strategy, Prediction: preds[chosen], Reason: reason}
	for i, p := range preds {
		if i != chosen {
			d.Alternatives = append(d.Alternatives, p)
		}
	}
	return d, nil
}

// fragileDirtyShare is the share of its planned rate a pre-copy's guest
// may dirty before Choose sets the pre-copy aside for a strategy that has
// a way out. Ferry runs a pre-copy with a controller that can only step
// its downtime target, and with multifd QEMU 10.0 cannot switch it to
// post-copy: when the dirty rate, the working set or the compression ratio
// was estimated wrong (one telemetry sample, a guest that speeds up), a
// pre-copy planned near its limit never converges. The heavy bench showed
// it: 87.7 MiB/s dirtied against 123.7 MiB/s planned through two zstd
// channels ran to the 60 s cap, while post-copy completed in 14 s.
const fragileDirtyShare = 0.5

// setAsideFragilePrecopy removes a converging pre-copy from live when its
// guest dirties more than fragileDirtyShare of the rate it would be sent
// at (through zstd: the rate of the rewritten pages, taken as
// incompressible) and another live strategy that can leave pre-copy (converge's
// throttle, hybrid's or postcopy's switch) fits; the second result is the
// clause the decision's reason gets ("" when nothing was set aside).
func (m *model) setAsideFragilePrecopy(preds []Prediction, live []int) ([]int, string) {
	if m.r <= 0 {
		return live, ""
	}
	pre, escape := -1, false
	for _, i := range live {
		switch preds[i].Strategy {
		case StrategyPrecopy:
			pre = i
		case StrategyConverge, StrategyHybrid, StrategyPostcopy:
			escape = true
		}
	}
	_, multi, _ := m.streamRates()
	if pre < 0 || !escape || multi <= 0 || m.r <= fragileDirtyShare*multi {
		return live, ""
	}
	out := make([]int, 0, len(live)-1)
	for _, i := range live {
		if i != pre {
			out = append(out, i)
		}
	}
	return out, fmt.Sprintf("; precopy set aside: the guest dirties %s, %.0f%% of the %s it would be sent at (over %.0f%%), and a pre-copy has no way out if that estimate is wrong",
		fmtRate(m.r), 100*m.r/multi, fmtRate(multi), 100*fragileDirtyShare)
}

// better orders by total time, then downtime, then preference.
func better(a, b Prediction) bool {
	if a.Total != b.Total {
		return a.Total < b.Total
	}
	if a.Downtime != b.Downtime {
		return a.Downtime < b.Downtime
	}
	return rank(a) < rank(b)
}

// rank is the preference among live strategies (lower is gentler). A hybrid
// that predicts post-copy ranks after postcopy.
func rank(p Prediction) int {
	switch p.Strategy {
	case StrategyPrecopy:
		return 0
	case StrategyConverge:
		return 1
	case StrategyHybrid:
		if p.Postcopy {
			return 4
		}
		return 2
	case StrategyPostcopy:
		return 3
	}
	return 5
}

// disqualify says why p cannot be chosen, or "" if it can.
func (m *model) disqualify(p Prediction) string {
	if !m.pol.Allows(p.Strategy) {
		return "not allowed by policy"
	}
	return m.misses(p)
}

// misses says why p does not meet the targets, ignoring the policy.
func (m *model) misses(p Prediction) string {
	switch {
	case !p.Converges:
		return p.Reason
	case p.Downtime.Seconds() > m.maxDown+1e-9:
		return fmt.Sprintf("downtime %s > max downtime %s", fmtDur(p.Downtime), fmtSec(m.maxDown))
	case m.maxTotal > 0 && p.Total.Seconds() > m.maxTotal+1e-9:
		return fmt.Sprintf("total %s > max total %s", fmtDur(p.Total), fmtSec(m.maxTotal))
	}
	return ""
}

// allowHint names the policy switch a strategy needs.
var allowHint = map[string]string{
	StrategyPrecopy:  "allow precopy",
	StrategyConverge: "allow converge (vCPU throttling)",
	StrategyPostcopy: "allow postcopy",
	StrategyHybrid:   "allow postcopy",
	StrategyCold:     "allow cold (the guest reboots)",
}

// refusal explains, per strategy, why nothing fits and what would help.
func (m *model) refusal(in Inputs, preds []Prediction) []string {
	var out []string
	if fixed := m.fixedDowntime(); m.maxDown+1e-9 < fixed {
		out = append(out, fmt.Sprintf("no live strategy can pause the guest for less than %s (device state %s at %s + %s switchover): raise --max-downtime to at least %s",
			fmtSec(fixed), fmtBytes(m.s), fmtRate(m.b), fmtSec(m.sw), fmtDur(ceilMs(fixed))))
	}
	if !m.pol.AllowPrecopy && !m.pol.AllowConverge && !m.pol.AllowPostcopy && !m.pol.AllowCold {
		out = append(out, "the policy allows no strategy")
	}
	for _, p := range preds {
		line := p.Strategy + ": "
		why := m.misses(p)
		if !m.pol.Allows(p.Strategy) {
			line += "not allowed by policy"
			if why == "" {
				line += fmt.Sprintf(" (%s: it would pause %s and take %s)", allowHint[p.Strategy], fmtDur(p.Downtime), fmtDur(p.Total))
			}
			out = append(out, line)
			continue
		}
		line += why
		if helps := m.helps(in, p); len(helps) > 0 {
			line += "; would help: " + strings.Join(helps, ", or ")
		}
		out = append(out, line)
	}
	return out
}

// helps lists changes to the inputs that would make p's strategy fit.
func (m *model) helps(in Inputs, p Prediction) []string {
	fits := func(mod func(*Inputs)) bool {
		in2 := in
		mod(&in2)
		m2, err := newModel(in2)
		if err != nil || m2.b == 0 {
			return false
		}
		return m2.misses(m2.predict(p.Strategy)) == ""
	}
	var out []string
	// A longer downtime.
	curMs := int64(math.Round(m.maxDown * 1000))
	setMs := func(ms int64) func(*Inputs) {
		return func(i *Inputs) { i.MaxDowntime = time.Duration(ms) * time.Millisecond }
	}
	hi := min(max(suggestFactor*time.Duration(curMs)*time.Millisecond, suggestFloor), suggestCeiling).Milliseconds()
	if curMs < hi && fits(setMs(hi)) {
		lo := curMs // does not fit
		for hi-lo > 1 {
			if mid := (lo + hi) / 2; fits(setMs(mid)) {
				hi = mid
			} else {
				lo = mid
			}
		}
		out = append(out, "raise --max-downtime to at least "+fmtDur(time.Duration(hi)*time.Millisecond))
	}
	// More bandwidth, in whole MiB/s, up to 1024 times the current link.
	setB := func(v int64) func(*Inputs) {
		return func(i *Inputs) { i.BandwidthBytesPerSec = float64(v) * mib }
	}
	if lo, hi := int64(m.b/mib), int64(math.Ceil(m.b*1024/mib)); fits(setB(hi)) {
		for hi-lo > 1 {
			if mid := (lo + hi) / 2; fits(setB(mid)) {
				hi = mid
			} else {
				lo = mid
			}
		}
		out = append(out, fmt.Sprintf("more bandwidth: needs ≥ %d MiB/s", hi))
	}
	// A higher throttle for converge.
	if p.Strategy == StrategyConverge && m.maxThrottle < 99 {
		for t := m.maxThrottle + 1; t <= 99; t++ {
			if fits(func(i *Inputs) { i.Policy.MaxThrottle = t }) {
				out = append(out, fmt.Sprintf("raise the max throttle to %d%%", t))
				break
			}
		}
	}
	// A longer total.
	if p.Converges && m.maxTotal > 0 && p.Total.Seconds() > m.maxTotal && p.Downtime.Seconds() <= m.maxDown+1e-9 {
		out = append(out, "raise the max total to at least "+fmtDur(ceilMs(p.Total.Seconds())))
	}
	return out
}

// ceilMs rounds seconds up to a whole millisecond.
func ceilMs(s float64) time.Duration {
	return time.Duration(math.Ceil(s*1000-1e-6)) * time.Millisecond
}
