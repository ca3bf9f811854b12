package planner

import (
	"fmt"
	"math"
	"time"
)

// Prediction is the forecast for one strategy.
type Prediction struct {
	// Strategy is one of the Strategy* names.
	Strategy string
	// Converges says whether the strategy finishes at all. Total, Downtime
	// and Bytes are zero when it does not.
	Converges bool
	// Total is the whole migration, setup to completed: the guest runs on
	// the destination (for post-copy: the last page has arrived) and the
	// source is removed.
	Total time.Duration
	// Downtime is the guest's pause.
	Downtime time.Duration
	// Bytes is everything sent: RAM of every round plus the device state.
	Bytes int64
	// Rounds is the number of pre-copy rounds while the guest runs (1 for
	// post-copy, 0 for cold); for a strategy that does not converge, the
	// rounds simulated before giving up.
	Rounds int
	// Throttle is the highest vCPU throttle in percent auto-converge
	// applies (converge only).
	Throttle int
	// Postcopy says the destination runs before all RAM has arrived (remote
	// page faults; a broken link pauses the guest until it is recovered).
	Postcopy bool
	// DowntimeLimit is the downtime-limit to give QEMU for a live strategy:
	// MaxDowntime minus the device state's transfer and the switchover, in
	// whole milliseconds, so that the real pause fits MaxDowntime.
	DowntimeLimit time.Duration
	// Reason explains the prediction in one line.
	Reason string
}

// ReasonBandwidthUnknown is the Reason of every prediction when
// Inputs.BandwidthBytesPerSec is 0.
const ReasonBandwidthUnknown = "bandwidth unknown: measure it first"

// maxSimRounds bounds a simulation whose throttle keeps changing.
const maxSimRounds = 100000

// Predict forecasts every strategy, in the order of Strategies. It never
// fails: with unknown bandwidth or invalid inputs every prediction has
// Converges false and a Reason saying why.
func Predict(in Inputs) []Prediction {
	m, err := newModel(in)
	why := ""
	switch {
	case err != nil:
		why = err.Error()
	case m.b == 0:
		why = ReasonBandwidthUnknown
	}
	if why != "" {
		preds := make([]Prediction, len(strategyOrder))
		for i, s := range strategyOrder {
			preds[i] = Prediction{Strategy: s, Reason: why}
		}
		return preds
	}
	return m.predictAll()
}

func (m *model) predictAll() []Prediction {
	first, multi, one := m.streamRates()
	defer m.setBandwidth(m.link)
	// Pre-copy and converge run the channels Tune gives them (through zstd
	// round 1 at the rate the sampled RAM compresses to, the pages the
	// guest rewrites at their own); post-copy and hybrid one stream (QEMU
	// 10.0 does not combine multifd with post-copy); cold runs at the
	// link's rate.
	m.setBandwidth(multi)
	if first != multi {
		m.first = first
	}
	pre, conv := m.predictPrecopy(), m.predictConverge()
	m.first = 0
	m.setBandwidth(one)
	post := m.predictPostcopy()
	hybrid := m.predictHybrid(m.predictPrecopy(), m.predictHybridFallback())
	m.setBandwidth(m.link)
	preds := []Prediction{pre, conv, post, hybrid, m.predictCold()}
	for i := range preds {
		preds[i] = m.withStall(m.withDisks(preds[i]))
		if t := preds[i].Total + seconds(m.finish); preds[i].Converges && preds[i].Strategy != StrategyCold && t > preds[i].Total {
			preds[i].Total = t // saturated totals stay saturated
		}
	}
	return preds
}

// streamRates are the rates a multifd pre-copy (with the channels Tune
// chooses, or the operator's) and one stream reach: the link, or the
// source's per-stream rate times the streams when that is lower (one
// stream sends about 360 MiB/s here: the idle bench's 1 GiB guest took
// 0.6 s on a 2.7 GiB/s link where the link's rate predicted 0.19 s). Where
// Tune turns zstd on for the pre-copy, first is the rate of guest RAM its
// channels reach on RAM compressing as the scan sampled it, and multi
// theirs on the pages the guest rewrites, taken as incompressible: the
// scan samples the RAM at rest, not what the guest writes (the half
// bench's guest rewrites random data: round 1 at 1.4× the link, the rest
// at the link's rate, and a model with the ratio everywhere predicted
// 7–9 s for pre-copies of 15–27 s). Without zstd first is multi.
func (m *model) streamRates() (first, multi, one float64) {
	one = math.Min(m.link, m.stream)
	n := m.channels
	if n == 0 {
		n = linkChannels(m.link, m.stream, DefaultWindowBytes, m.rtt, m.maxChannels)
		if n >= 2 && !channelsPay(m.nz, m.link, m.stream, n) {
			n = 1 // Tune's rule: channels that save under 1 s are not used
		}
	}
	multi = streamsRate(m.link, m.stream, n)
	first = multi
	if m.zstd && m.channels != 1 {
		// Tune's rules: zstd pays against the plain streams, and when the
		// plain plan has no channels, saves what channels must.
		if eff, pays := zstdRate(m.link, multi, m.compress, m.ratio); pays && (n >= 2 || zstdSaves(m.nz, multi, eff)) {
			first, multi = eff, rewrittenRate(m.link, m.compress)
		}
	}
	return first, multi, one
}

// withDisks adds the local disks' mirror to a prediction: a live
// migration mirrors them first (the RAM transfer starts when every mirror
// is ready), at the link's rate less what the guest writes meanwhile
// (those writes go over the link too). The mirrors complete at the
// switchover with the guest paused and in sync (write-blocking mode), so
// they add nothing to the downtime, and post-copy starts only after they
// completed: every live strategy keeps the disks consistent. A cold
// migration copies their allocated bytes at the link's rate with the guest
// stopped (no writes meanwhile): the copy adds to its total and downtime.
func (m *model) withDisks(p Prediction) Prediction {
	if m.disk <= 0 {
		return p
	}
	if p.Strategy == StrategyCold {
		t := m.disk / m.b
		p.Total += seconds(t)
		p.Downtime += seconds(t)
		p.Bytes += int64(m.disk + 0.5)
		p.Reason += fmt.Sprintf("; with %.1f s copying %.1f MiB of local disks (allocated extents, verified by checksum)", t, m.disk/(1<<20))
		return p
	}
	if !p.Converges {
		return p
	}
	t := m.diskSeconds()
	p.Total += seconds(t)
	p.Bytes += int64(m.disk + m.dw*t + 0.5)
	p.Reason += fmt.Sprintf("; first %.1f s mirroring %.1f MiB of local disks", t, m.disk/(1<<20))
	return p
}

// withStall adds the time the pair's link lately carried nothing for
// (Inputs.LinkStall) to a prediction that crosses it: QEMU's stream
// waits through an outage and resumes where it was, so the migration
// takes that much longer (the flaky bench: two 2 s outages cost a
// pre-copy about 6 s, retransmission backoff included). A cold
// migration's guest is off meanwhile. A prediction that does not
// converge stays as it is.
func (m *model) withStall(p Prediction) Prediction {
	if m.stall <= 0 || !p.Converges {
		return p
	}
	p.Total += seconds(m.stall)
	if p.Strategy == StrategyCold {
		p.Downtime += seconds(m.stall)
	}
	p.Reason += fmt.Sprintf("; plus %s the pair's recent migrations each lost to a link that carried nothing", fmtSec(m.stall))
	return p
}

// diskSeconds is the time the mirrors take until every one is ready: at
// the link's rate or one mirror's (an NBD stream, TLS unless insecure),
// whichever is lower.
func (m *model) diskSeconds() float64 {
	b := math.Min(m.b, m.mirror)
	return m.disk / max(b-m.dw, b/10)
}

// predict returns the prediction of one strategy (with the disks).
func (m *model) predict(strategy string) Prediction {
	return m.withDisks(m.predictRAM(strategy))
}

// predictRAM is predict without the local disks.
func (m *model) predictRAM(strategy string) Prediction {
	switch strategy {
	case StrategyPrecopy:
		return m.predictPrecopy()
	case StrategyConverge:
		return m.predictConverge()
	case StrategyPostcopy:
		return m.predictPostcopy()
	case StrategyHybrid:
		return m.predictHybrid(m.predictPrecopy(), m.predictHybridFallback())
	case StrategyCold:
		return m.predictCold()
	}
	return Prediction{Strategy: strategy, Reason: "unknown strategy"}
}

// run is the outcome of simulating pre-copy rounds.
type run struct {
	converges  bool
	rounds     int
	live       float64 // seconds of rounds while the guest runs
	sent       float64 // bytes of those rounds
	final      float64 // dirty set at switchover, or when giving up
	throttle   int     // throttle (percent) at the end
	firstDirty float64 // bytes dirtied during round 1
	fail       string  // why it does not converge
}

// simulate runs pre-copy rounds from a dirty set of start bytes, at throttle
// p0 percent, until QEMU
// would switch over, the dirty set stops shrinking, or MaxRounds pass
// without a throttle change. With autoConverge it throttles as QEMU 7.2's
// auto-converge does (see the package documentation).
func (m *model) simulate(start float64, p0 int, autoConverge bool) run {
	var r run
	d, p := start, p0
	var perT, perDirty, perSent float64
	high, sinceChange := 0, 0
	for {
		if d <= m.thr {
			r.converges, r.final, r.throttle = true, d, p
			return r
		}
		atMax := !autoConverge || p >= m.maxThrottle
		if (sinceChange >= MaxRounds && atMax) || r.rounds >= maxSimRounds {
			r.final, r.throttle, r.fail = d, p, m.slowReason(p, d, r.rounds)
			return r
		}
		b := m.b
		if r.rounds == 0 && m.first > 0 && d == m.nz {
			b = m.first // round 1 over the RAM the scan sampled
		}
		t := d / b
		next := m.dirtied(t, p)
		r.rounds++
		sinceChange++
		r.live += t
		r.sent += d
		if r.rounds == 1 {
			r.firstDirty = next
		}
		changed := false
		if autoConverge {
			perT, perDirty, perSent = perT+t, perDirty+next, perSent+d
			if perT >= 1 { // QEMU checks at a sync at least a second after the last check
				if perDirty > 0.5*perSent {
					if high++; high >= 2 {
						high = 0
						if np := m.nextThrottle(p); np != p {
							p, changed, sinceChange = np, true, 0
						}
					}
				}
				perT, perDirty, perSent = 0, 0, 0
			}
		}
		if !changed && atMax && next >= d {
			// Rounds never get shorter, so the dirty set never shrinks again.
			r.final, r.throttle, r.fail = next, p, m.stuckReason(p)
			return r
		}
		d = next
	}
}

// stuckReason explains a dirty set that stopped shrinking at throttle p.
func (m *model) stuckReason(p int) string {
	f := 1 - float64(p)/100
	prefix := ""
	if p > 0 {
		prefix = fmt.Sprintf("even at %d%% throttle, ", p)
	}
	switch {
	case f*m.r >= m.b:
		return fmt.Sprintf("%sdirty rate %s ≥ bandwidth %s: pre-copy never converges", prefix, fmtRate(f*m.r), fmtRate(m.b))
	case f*m.w >= m.b:
		return fmt.Sprintf("%sthe working set (%s rewritten every second) outpaces bandwidth %s: pre-copy never converges",
			prefix, fmtBytes(f*m.w), fmtRate(m.b))
	}
	return fmt.Sprintf("%sthe dirty set stops shrinking above the switchover threshold %s: pre-copy never converges", prefix, fmtBytes(m.thr))
}

// slowReason explains a dirty set that still shrinks, but too slowly.
func (m *model) slowReason(p int, d float64, rounds int) string {
	f := 1 - float64(p)/100
	rate := f * max(m.r, m.w)
	prefix := ""
	if p > 0 {
		prefix = fmt.Sprintf("at %d%% throttle, ", p)
	}
	return fmt.Sprintf("%sdirty rate %s is %.2f of bandwidth %s: still %s dirty after %d rounds (switchover needs ≤ %s): pre-copy does not converge",
		prefix, fmtRate(rate), rate/m.b, fmtRate(m.b), fmtBytes(d), rounds, fmtBytes(m.thr))
}

// live turns a converged run into a prediction's figures.
func (m *model) live(strategy string, r run) Prediction {
	down := r.final/m.b + m.fixedDowntime()
	return Prediction{
		Strategy: strategy, Converges: true,
		Total:    seconds(m.setup + r.live + down),
		Downtime: seconds(down),
		Bytes:    int64(r.sent + r.final + m.s + 0.5),
		Rounds:   r.rounds, Throttle: r.throttle,
		DowntimeLimit: seconds(m.limit),
	}
}

// overBudget is appended to the reason of a live strategy whose fixed
// downtime alone exceeds MaxDowntime.
func (m *model) overBudget(down float64) string {
	if down <= m.maxDown+1e-9 {
		return ""
	}
	return fmt.Sprintf("; but device state (%s at %s) and switchover alone take %s > max downtime %s",
		fmtBytes(m.s), fmtRate(m.b), fmtSec(m.fixedDowntime()), fmtSec(m.maxDown))
}

func (m *model) predictPrecopy() Prediction {
	r, stepped, extra := m.precopyRun(false)
	if !r.converges {
		return Prediction{Strategy: StrategyPrecopy, Rounds: r.rounds, DowntimeLimit: seconds(m.limit), Reason: r.fail}
	}
	p := m.live(StrategyPrecopy, r)
	p.Total += seconds(extra)
	p.Reason = m.convergedReason(r) + stepped + m.overBudget(p.Downtime.Seconds())
	return p
}

// convergedReason describes a converged pre-copy run.
func (m *model) convergedReason(r run) string {
	if r.rounds == 0 {
		return fmt.Sprintf("all non-zero RAM (%s) fits the switchover threshold %s: stop and copy at once", fmtBytes(m.nz), fmtBytes(m.thr))
	}
	why := fmt.Sprintf("converges after %s: dirty rate %s is %.2f of bandwidth %s; final dirty set %s ≤ %s (bandwidth × QEMU downtime-limit %s)",
		plural(r.rounds, "round"), fmtRate(m.r), m.r/m.b, fmtRate(m.b), fmtBytes(r.final), fmtBytes(m.thr), fmtSec(m.limit))
	if m.first > 0 {
		why += fmt.Sprintf("; round 1 at %s through zstd (RAM compressing to %.0f%%), the pages the guest rewrites at %s (taken as incompressible)",
			fmtRate(m.first), m.ratio*100, fmtRate(m.b))
	}
	return why
}

func (m *model) predictConverge() Prediction {
	r, stepped, extra := m.precopyRun(true)
	if !r.converges {
		return Prediction{Strategy: StrategyConverge, Rounds: r.rounds, Throttle: r.throttle, DowntimeLimit: seconds(m.limit),
			Reason: fmt.Sprintf("auto-converge (max throttle %d%%) fails: %s", m.maxThrottle, r.fail)}
	}
	p := m.live(StrategyConverge, r)
	p.Total += seconds(extra)
	if r.throttle == 0 {
		p.Reason = "no throttling needed: " + m.convergedReason(r)
	} else {
		f := 1 - float64(r.throttle)/100
		p.Reason = fmt.Sprintf("auto-converge throttles the vCPUs to %d%% (dirty rate %s → %s); converges after %s with a final dirty set of %s",
			r.throttle, fmtRate(m.r), fmtRate(f*m.r), plural(r.rounds, "round"), fmtBytes(r.final))
	}
	p.Reason += stepped + m.overBudget(p.Downtime.Seconds())
	return p
}

func (m *model) predictPostcopy() Prediction {
	t1 := m.nz / m.b
	ts := postcopySwitchBytes(m.nz, m.b, m.r, EarlyPostcopy(m.b, m.r, m.rtt, m.stall)) / m.b
	if ts >= t1-1e-9 {
		return m.predictPostcopyAfterRound1()
	}
	// The post-copy strategy switches at Tune's switch point. What the
	// guest dirtied meanwhile is sent again, but never more than its
	// non-zero RAM (as after round 1: a page it rewrites holds data).
	d2 := math.Min(m.dirtied(ts, 0), m.nz)
	down := m.fixedDowntime()
	p := Prediction{
		Strategy: StrategyPostcopy, Converges: true, Postcopy: true,
		Total:    seconds(m.setup + (m.nz+d2+m.s)/m.b + m.sw),
		Downtime: seconds(down),
		Bytes:    int64(m.nz + d2 + m.s + 0.5),
		Rounds:   1, DowntimeLimit: seconds(m.limit),
	}
	p.Reason = fmt.Sprintf("switches to the destination at %s of round 1 (%s); the rest of round 1 and the %s dirtied meanwhile arrive afterwards (%s during which the guest waits on remote page faults; a broken link pauses it until recovered)",
		fmtSec(ts), fmtSec(t1), fmtBytes(d2), fmtSec((m.nz-ts*m.b+d2)/m.b)) + m.overBudget(down)
	return p
}

// postcopySwitchBytes is where the post-copy strategy switches: after
// m·b/(b+r) bytes of round 1, where round 1's remainder m − b·t equals
// what the guest dirtied meanwhile, r·t (m itself when r is 0) — but not
// before round 1's remainder fits PostcopyTailSeconds at b; early (see
// EarlyPostcopy): after EarlyPostcopyFraction of it.
func postcopySwitchBytes(m, b, r float64, early bool) float64 {
	if m <= 0 || b <= 0 || r <= 0 {
		return m
	}
	if early {
		return m * EarlyPostcopyFraction
	}
	return math.Max(m*b/(b+r), m-b*PostcopyTailSeconds)
}

// Early post-copy: where the guest dirties at most EarlyPostcopyDirtyShare
// of the link, on a LAN (a known RTT under EarlyPostcopyRTT) whose recent
// migrations lost nothing to outages, the post-copy strategy switches
// after EarlyPostcopyFraction of round 1 instead of at its end. Every page
// the guest dirties before the switch is sent twice, and after it once:
// the earlier switch sends less, for a guest that waits on more faults.
// The half bench (24 MiB/s on a 45 MiB/s link, 0.2 ms RTT), side by side
// in one session, 3 runs each: at the end of round 1 13.9 s (1.8× the
// bound) with client gaps of 0.17-0.34 s; at 65 % 10.9-12.1 s, gaps
// 0.39-1.03 s; at 45 % 9.5-9.9 s (1.2× the bound), gaps 0.89-1.04 s
// (libvirt tuned: 14.8 s, 1.0 s). A guest dirtying faster faults faster
// after the switch (heavy, at twice the link, keeps the late switch and
// its ≤ 0.5 s gap; between 0.53 and 2 nothing was measured, and the
// share stops at 0.75, short of a guest that dirties as fast as the link
// sends); a
// far link makes each fault a round trip; an outage pauses a post-copy
// guest, and an earlier switch pauses it sooner.
const (
	EarlyPostcopyFraction   = 0.5
	EarlyPostcopyDirtyShare = 0.75
	EarlyPostcopyRTT        = 5 * time.Millisecond
)

// EarlyPostcopy reports whether a post-copy of a guest dirtying r B/s
// over a link of b B/s with RTT rtt seconds (0: unknown) whose recent
// migrations stalled stall seconds each switches early.
func EarlyPostcopy(b, r, rtt, stall float64) bool {
	return b > 0 && r > 0 && r <= EarlyPostcopyDirtyShare*b && rtt > 0 && rtt < EarlyPostcopyRTT.Seconds() && stall <= 0
}

// PostcopyTailSeconds bounds how much of round 1 a post-copy leaves for
// after the switch: what the link sends in this long. The guest faults in
// every page never sent (its kernel's and its programs', not only the
// pages it rewrites), and with one vCPU each fault stalls it whole. The
// bench's client gaps (before postcopy-preempt and the warm-up; with
// them, see EarlyPostcopy): a switch at 67% of round 1 (half) 3.2-3.6 s; at
// 91-93% (big, heavy's warm-up) 0.34-0.48 s and 0.9 s. Heavy, side by
// side in one session (3 runs each, medians): a 1 s tail gave 1385 ms
// (TLS) and 783 ms (plaintext), 0.25 s gave 1243 ms and 733 ms, for the
// same total (14.3 s and 14.2 s): once the guest's working set is dirty,
// a later switch re-sends nothing more.
const PostcopyTailSeconds = 0.25

// predictPostcopyAfterRound1 is post-copy started after the first full
// round: hybrid's fallback, and the post-copy strategy of an idle guest.
func (m *model) predictPostcopyAfterRound1() Prediction {
	t1 := m.nz / m.b
	// The tail is the pages dirtied during round 1, and a page the guest
	// rewrites is one it holds data in: never more than its non-zero RAM
	// (the working set over a long round 1 saturates there, where the
	// measured rate times t1 would not).
	d2 := math.Min(m.dirtied(t1, 0), m.nz)
	down := m.fixedDowntime()
	p := Prediction{
		Strategy: StrategyPostcopy, Converges: true, Postcopy: true,
		Total:    seconds(m.setup + (m.nz+d2+m.s)/m.b + m.sw),
		Downtime: seconds(down),
		Bytes:    int64(m.nz + d2 + m.s + 0.5),
		Rounds:   1, DowntimeLimit: seconds(m.limit),
	}
	p.Reason = fmt.Sprintf("switches to the destination after round 1 (%s); the %s dirtied meanwhile arrive afterwards (%s during which the guest waits on remote page faults; a broken link pauses it until recovered)",
		fmtSec(t1), fmtBytes(d2), fmtSec(d2/m.b)) + m.overBudget(down)
	return p
}

// predictHybridFallback is hybrid's post-copy: the controller judges
// pre-copy from two round starts, so round 2 (the dirty set round 1 left,
// at most the non-zero RAM) runs in full, then HybridPatience passes before
// it switches; what the guest dirtied since round 2 began arrives after.
func (m *model) predictHybridFallback() Prediction {
	t1 := m.nz / m.b
	d2 := math.Min(m.dirtied(t1, 0), m.nz)
	if d2 <= 0 {
		return m.predictPostcopyAfterRound1()
	}
	t2 := d2/m.b + HybridPatience.Seconds()
	d3 := math.Min(m.dirtied(t2, 0), m.nz)
	down := m.fixedDowntime()
	sent := m.nz + d2 + m.b*HybridPatience.Seconds() + d3 + m.s
	p := Prediction{
		Strategy: StrategyPostcopy, Converges: true, Postcopy: true,
		Total:    seconds(m.setup + sent/m.b + m.sw),
		Downtime: seconds(down),
		Bytes:    int64(sent + 0.5),
		Rounds:   2, DowntimeLimit: seconds(m.limit),
	}
	p.Reason = fmt.Sprintf("switches to the destination when the controller sees pre-copy not converging: after round 1 (%s), round 2 (%s) and %s more (%s); the %s dirtied meanwhile arrive afterwards (%s during which the guest waits on remote page faults; a broken link pauses it until recovered)",
		fmtSec(t1), fmtSec(d2/m.b), fmtSec(HybridPatience.Seconds()), fmtSec(t1+t2), fmtBytes(d3), fmtSec(d3/m.b)) + m.overBudget(down)
	return p
}

// predictHybrid is pre-copy when that converges within MaxDowntime,
// otherwise post-copy after round 1.
func (m *model) predictHybrid(pre, post Prediction) Prediction {
	if pre.Converges && pre.Downtime.Seconds() <= m.maxDown+1e-9 {
		h := pre
		h.Strategy = StrategyHybrid
		h.Reason = "pre-copy: " + pre.Reason + "; post-copy stays armed as a fallback"
		return h
	}
	h := post
	h.Strategy = StrategyHybrid
	why := pre.Reason
	if pre.Converges {
		why = fmt.Sprintf("its downtime %s exceeds max downtime %s", fmtDur(pre.Downtime), fmtSec(m.maxDown))
	}
	h.Reason = fmt.Sprintf("pre-copy would not do (%s), so it %s", why, post.Reason)
	return h
}

func (m *model) predictCold() Prediction {
	total := m.setup + m.nz/m.b + m.boot
	return Prediction{
		Strategy: StrategyCold, Converges: true,
		Total: seconds(total), Downtime: seconds(total), Bytes: int64(m.nz + 0.5),
		Reason: fmt.Sprintf("the guest is off for the whole copy: %s at %s plus %s to boot (the guest reboots)",
			fmtBytes(m.nz), fmtRate(m.b), fmtSec(m.boot)),
	}
}
