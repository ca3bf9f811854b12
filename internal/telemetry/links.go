package telemetry

import (
	"fmt"
	"math"
	"slices"
	"sort"
	"time"

	"github.com/ferryvm/ferry/internal/planner"
)

// Any is the host name that stands for every pair: what migrations reach
// anywhere in the cluster.
const Any = "*"

// Defaults of the control plane's link book.
const (
	// DefaultProbeMaxAge is how long a probe's figure is used.
	DefaultProbeMaxAge = 15 * time.Minute
	// DefaultProbeEvery is how often an active pair is probed again: often
	// enough that a link that changed since the pair's last migration (the
	// bench reshapes it between scenarios; a migration that ran post-copy
	// teaches the book no rate) is seen by the next plan within seconds, at
	// 100 ms per 15 s (0.7 % of the link's time).
	DefaultProbeEvery = 15 * time.Second
	// DefaultProbeIdleEvery is how often a pair with no recent migration
	// is probed (within DefaultProbeMaxAge, so its figure stays usable).
	DefaultProbeIdleEvery = 10 * time.Minute
	// DefaultActiveFor is how long a pair (both directions) stays active
	// after a migration between its hosts.
	DefaultActiveFor = 30 * time.Minute
	// DefaultProbeRetry is how long the prober waits after a failed probe
	// of a pair before it tries that pair again.
	DefaultProbeRetry = time.Minute
	// BackgroundProbe is the length of a background probe.
	BackgroundProbe = 100 * time.Millisecond
	// InlineProbe is the length of a probe a plan makes when it has no
	// figure for the pair.
	InlineProbe = 500 * time.Millisecond
)

// Pair is a directed host pair.
type Pair struct{ From, To string }

// String is "FROM→TO".
func (p Pair) String() string { return p.From + "→" + p.To }

type probe struct {
	bytesPerSec float64
	at          time.Time
	inline      bool
	rtt         time.Duration // 0: not measured
	// recent are the rates of the pair's latest probes (this one last, at
	// most probeWindow) that agree with this one within probesAgree: the
	// figure is their median, as one 100 ms probe of a shaped link is off
	// by up to a third (the bench: 34, 40 and 58 MiB/s on a 44 MiB/s link).
	recent []float64
}

// probeWindow is how many agreeing probes a pair's figure is the median of.
const probeWindow = 3

// median is the median of a short list.
func median(v []float64) float64 {
	s := slices.Clone(v)
	slices.Sort(s)
	n := len(s)
	if n%2 == 1 {
		return s[n/2]
	}
	return (s[n/2-1] + s[n/2]) / 2
}

// Links is the control plane's book of link rates per directed host pair:
// what past migrations reached (a moving average, planner.EWMAAlpha) and
// the latest TCP probe. It also says which pairs to probe in the
// background. The zero value is not usable; use NewLinks. Not safe for
// concurrent use.
type Links struct {
	// ProbeMaxAge, ProbeEvery, ProbeIdleEvery, ActiveFor and ProbeRetry
	// are the policy (see the Default constants).
	ProbeMaxAge, ProbeEvery, ProbeIdleEvery, ActiveFor, ProbeRetry time.Duration

	learned   planner.BandwidthEstimator
	learnedAt map[Pair]time.Time
	migrated  map[Pair]time.Time // last migration on the pair, either direction recorded both ways
	probes    map[Pair]probe
	failed    map[Pair]time.Time // last failed background probe
	rtts      map[Pair]time.Duration
	// probeAtLearn is the pair's probe figure (median of its agreeing
	// probes) when its latest migration was observed, when it had one
	// younger than ProbeMaxAge: what a probe of the link the learned rate
	// was reached on measured. slowedLAN compares a probe with it.
	probeAtLearn map[Pair]float64
	stalls       map[Pair]stallBook
}

// stallBook is what a pair's recent completed migrations lost to a link
// that carried nothing (outages): a moving average of the time per
// migration (planner.EWMAAlpha) and the latest migration's, over n
// migrations, the latest at at. A plan takes the higher of the two, as
// for the dirty rate: a link that starts to flap shows in the next plan,
// where the average of a pair with many calm migrations behind it rose
// by a third of the outage per migration (the bench's flaky runs after
// wan's: 1.6, 2.6 and 3.4 s planned for 5-6 s lost).
type stallBook struct {
	avg    float64 // seconds per migration
	latest float64 // seconds, the latest migration's
	n      int
	at     time.Time
}

// StallMaxAge is how long a pair's stall figure is planned with after its
// latest migration: a link that lost seconds to outages an hour ago is
// not expected to lose them now.
const StallMaxAge = time.Hour

// StallMin is the average stall per migration under which a plan adds
// none (a stall is at least a second by the reporter's rule; an average
// diluted below this by migrations without one is noise).
const StallMin = 500 * time.Millisecond

// ObserveStall folds in how long a completed live migration from → to at
// at had its link carry nothing (0: never). A pair whose link changed
// (ObserveMigration restarting its average) starts over.
func (l *Links) ObserveStall(from, to string, stalled time.Duration, at time.Time) {
	if stalled < 0 || from == Any || to == Any {
		return
	}
	if l.stalls == nil {
		l.stalls = map[Pair]stallBook{}
	}
	k := Pair{from, to}
	b, ok := l.stalls[k]
	x := stalled.Seconds()
	if !ok || at.Sub(b.at) > StallMaxAge {
		l.stalls[k] = stallBook{avg: x, latest: x, n: 1, at: at}
		return
	}
	b.avg += planner.EWMAAlpha * (x - b.avg)
	b.latest = x
	b.n++
	b.at = at
	l.stalls[k] = b
}

// stallFigure is the stall a plan from → to at now adds, with its source
// in words ("" and 0 when none).
func (l *Links) stallFigure(from, to string, now time.Time) (time.Duration, string) {
	b, ok := l.stalls[Pair{from, to}]
	if !ok || now.Sub(b.at) > StallMaxAge {
		return 0, ""
	}
	sec := func(x float64) time.Duration { return time.Duration(x * float64(time.Second)).Round(time.Millisecond) }
	d := sec(max(b.avg, b.latest))
	if d < StallMin {
		return 0, ""
	}
	return d, fmt.Sprintf("past migrations %s→%s lost %s each to a link that carried nothing (the higher of the latest, %s ago, %s, and the average of %d, %s)",
		from, to, d, ago(max(now.Sub(b.at), 0)), sec(b.latest), b.n, sec(b.avg))
}

// NewLinks returns an empty book with the default policy.
func NewLinks() *Links {
	return &Links{
		ProbeMaxAge: DefaultProbeMaxAge, ProbeEvery: DefaultProbeEvery, ProbeIdleEvery: DefaultProbeIdleEvery, ActiveFor: DefaultActiveFor, ProbeRetry: DefaultProbeRetry,
		learnedAt: map[Pair]time.Time{}, migrated: map[Pair]time.Time{}, probes: map[Pair]probe{}, failed: map[Pair]time.Time{},
		probeAtLearn: map[Pair]float64{},
	}
}

func usable(bps float64) bool { return bps > 0 && !math.IsInf(bps, 0) && !math.IsNaN(bps) }

// LinkChanged is the factor by which a migration's rate must differ from
// what the pair's past migrations averaged for the book to take the link
// as changed (reshaped, rerouted) and restart the pair's average from that
// migration: an average still mostly made of the old link would mislead
// the next plans for several migrations (the bench: 263 MiB/s learned on
// the unshaped link, then 198 and 152 MiB/s after migrations at 45 MiB/s;
// 44 MiB/s on the 48 MiB/s link, 31 once 20 ms delay and loss are added).
// Runs over the same link differ by less than 15 %.
const LinkChanged = 1.4

// probesAgree is the factor within which probes of a pair are taken as
// measuring the same link (one 100 ms probe is off by up to a third).
const probesAgree = 2.0

// ObserveMigration folds in the rate a finished migration from → to
// reached at at (also into the Any pair) and makes both directions of the
// pair active for background probes. A rate more than LinkChanged times
// above or below the pair's average replaces it.
func (l *Links) ObserveMigration(from, to string, bytesPerSec float64, at time.Time) {
	if !usable(bytesPerSec) {
		return
	}
	if old, ok := l.learned.Estimate(from, to); ok && from != Any && (bytesPerSec > LinkChanged*old || bytesPerSec*LinkChanged < old) {
		l.learned.Forget(from, to)
		delete(l.stalls, Pair{from, to})
	}
	for _, p := range []Pair{{from, to}, {Any, Any}} {
		l.learned.Observe(p.From, p.To, bytesPerSec)
		l.learnedAt[p] = at
	}
	if from != Any && to != Any {
		l.migrated[Pair{from, to}] = at
		l.migrated[Pair{to, from}] = at
		k := Pair{from, to}
		if pr, ok := l.probes[k]; ok && at.Sub(pr.at) <= l.ProbeMaxAge {
			l.probeAtLearn[k] = median(pr.recent)
		} else {
			delete(l.probeAtLearn, k)
		}
	}
}

// ObserveProbe records a TCP probe from → to that ended at at; inline says
// a plan made it (not the background prober).
func (l *Links) ObserveProbe(from, to string, bytesPerSec float64, at time.Time, inline bool) {
	if !usable(bytesPerSec) {
		return
	}
	k := Pair{from, to}
	var recent []float64
	if prev, ok := l.probes[k]; ok && at.Sub(prev.at) <= l.ProbeMaxAge {
		for _, r := range prev.recent[max(len(prev.recent)-(probeWindow-1), 0):] {
			if r <= probesAgree*bytesPerSec && r*probesAgree >= bytesPerSec {
				recent = append(recent, r)
			}
		}
	}
	l.probes[k] = probe{bytesPerSec: bytesPerSec, at: at, inline: inline, recent: append(recent, bytesPerSec)}
	delete(l.failed, Pair{from, to})
}

// ObserveRTT records the round-trip time a probe from → to measured (its
// TCP handshake) with the probe ObserveProbe recorded last.
func (l *Links) ObserveRTT(from, to string, rtt time.Duration) {
	if rtt <= 0 {
		return
	}
	if l.rtts == nil {
		l.rtts = map[Pair]time.Duration{}
	}
	l.rtts[Pair{from, to}] = rtt
}

// ProbeFailed records a failed probe from → to at at: Due leaves the pair
// alone for ProbeRetry.
func (l *Links) ProbeFailed(from, to string, at time.Time) {
	l.failed[Pair{from, to}] = at
}

// FigureKind is where a link figure comes from.
type FigureKind string

// Figure kinds.
const (
	// FromProbe: a recent TCP probe, capped by what migrations reached.
	FromProbe FigureKind = "probe"
	// FromMigrations: past migrations on the pair (no recent probe).
	FromMigrations FigureKind = "migrations"
)

// Figure is the link rate a plan uses for one pair.
type Figure struct {
	BytesPerSec float64
	Kind        FigureKind
	// Age is the age of the figure's newest input.
	Age time.Duration
	// Source says in words where it came from.
	Source string
	// RTT is the pair's round-trip time from its latest probe (also one
	// older than ProbeMaxAge: latency changes slowly); 0 when unknown.
	RTT time.Duration
	// ProbeBytesPerSec is the probes' figure before any cap by past
	// migrations (Kind FromProbe; 0 otherwise): what the link carried raw.
	ProbeBytesPerSec float64
	// Stall is the time the pair's recent migrations lost to a link that
	// carried nothing, per migration (0: none, or not within StallMaxAge);
	// StallSource says so in words.
	Stall       time.Duration
	StallSource string
}

// Figure returns the rate to plan with from → to at now, false when the
// book has neither a probe younger than ProbeMaxAge nor a past migration
// for the pair (the plan must probe now). A probe is raw TCP speed, which
// QEMU rarely reaches, so it is capped by what migrations reached on the
// pair (or anywhere, when the pair never migrated).
func (l *Links) Figure(from, to string, now time.Time) (Figure, bool) {
	f, ok := l.figure(from, to, now)
	if ok {
		f.RTT = l.rtts[Pair{from, to}]
		f.Stall, f.StallSource = l.stallFigure(from, to, now)
	}
	return f, ok
}

func (l *Links) figure(from, to string, now time.Time) (Figure, bool) {
	k := Pair{from, to}
	mb := func(bps float64) float64 { return bps / (1 << 20) }
	learned, haveLearned := l.learned.Estimate(from, to)
	learnedAge := max(now.Sub(l.learnedAt[k]), 0)
	pr, haveProbe := l.probes[k]
	if haveProbe && now.Sub(pr.at) > l.ProbeMaxAge {
		haveProbe = false
	}
	switch {
	case haveProbe:
		f := Figure{BytesPerSec: median(pr.recent), Kind: FromProbe, Age: max(now.Sub(pr.at), 0)}
		f.ProbeBytesPerSec = f.BytesPerSec
		how := "background"
		if pr.inline {
			how = "inline"
		}
		f.Source = fmt.Sprintf("%s probe %s→%s %s ago (%.0f MiB/s)", how, from, to, ago(f.Age), mb(pr.bytesPerSec))
		if len(pr.recent) > 1 {
			f.Source += fmt.Sprintf(", median of the last %d agreeing probes %.0f MiB/s", len(pr.recent), mb(f.BytesPerSec))
		}
		capBPS, capFrom, capOK := learned, k.String(), haveLearned
		if !capOK {
			capBPS, capOK = l.learned.Estimate(Any, Any)
			capFrom = "any pair"
		}
		switch {
		case capOK && capBPS < f.BytesPerSec:
			f.BytesPerSec = capBPS
			f.Source += fmt.Sprintf(", capped by past migrations %s (%.0f MiB/s)", capFrom, mb(capBPS))
		case haveLearned && l.slowedLAN(k, f.BytesPerSec, learned):
			if ref, ok := l.probeAtLearn[k]; ok {
				f.Source += fmt.Sprintf(", under half of the probes (%.0f MiB/s) of the link past migrations %s reached %.0f MiB/s on, at %.1f ms RTT: the link slowed, planned with the probe", mb(ref), capFrom, mb(learned), float64(l.rtts[k].Microseconds())/1000)
				break
			}
			f.Source += fmt.Sprintf(", under half of past migrations %s (%.0f MiB/s) on a %.1f ms RTT link: the link slowed, planned with the probe", capFrom, mb(learned), float64(l.rtts[k].Microseconds())/1000)
		case haveLearned:
			// A probe below what migrations on the pair reached is the
			// probe's own error more often than a slower link: its two
			// ends share the hosts' CPUs with the guests (the bench: 32
			// MiB/s probed where QEMU carried 44), and 100 ms on a far
			// link is TCP slow start (2.4 MiB/s probed at 40 ms RTT where
			// QEMU carried 31). A link that did slow down shows in the next
			// migration's rate, which restarts the average (LinkChanged).
			f.BytesPerSec = learned
			f.Source += fmt.Sprintf(", below past migrations %s (%.0f MiB/s): planned with theirs", capFrom, mb(learned))
		}
		return f, true
	case haveLearned:
		n := 0
		for _, x := range l.learned.Links() {
			if x.From == from && x.To == to {
				n = x.Samples
			}
		}
		return Figure{BytesPerSec: learned, Kind: FromMigrations, Age: learnedAge,
			Source: fmt.Sprintf("learned from %d past migration(s) %s→%s, last %s ago (%.0f MiB/s)", n, from, to, ago(learnedAge), mb(learned))}, true
	}
	return Figure{}, false
}

// SlowedProbeRTT is the RTT under which a probe is not slowed by TCP's
// slow start (a 100 ms probe at 0.1 ms RTT is a thousand round trips), so
// a probe under SlowedFraction of what past migrations on the pair reached
// means the link slowed (a link shaped, a congested path), not a probe's
// error: the plan takes the probe. (The bench shaped its link from
// unshaped to 48 MiB/s between two scenarios: a 54 MiB/s probe lost to
// 225 MiB/s learned on the unshaped link, and a pre-copy planned for it
// never converged.)
const (
	SlowedProbeRTT = 5 * time.Millisecond
	SlowedFraction = 0.5
)

// slowedLAN reports whether a probe of probe B/s on pair k, whose
// migrations reached learned, shows a slower link (see SlowedProbeRTT).
// When the pair was probed around its latest migration, the probe is
// compared with that probe, not with the migration's rate: probes have a
// ceiling of their own, the CPU the hosts' busy guests leave them, far
// below a fast link's (the bench's unshaped link: 104-321 MiB/s probed
// beside busy guests, 2442 beside idle ones, where migrations reached
// 1038-1092), and a probe at that ceiling says nothing of the link.
func (l *Links) slowedLAN(k Pair, probe, learned float64) bool {
	rtt, ok := l.rtts[k]
	if !ok || rtt <= 0 || rtt >= SlowedProbeRTT {
		return false
	}
	if ref, ok := l.probeAtLearn[k]; ok {
		return probe < SlowedFraction*min(ref, learned)
	}
	return probe < SlowedFraction*learned
}

// Due returns the pairs among hosts (the ready hosts with a migration
// address) the background prober should probe at now, most urgent first:
//  1. active pairs (a migration between their hosts, either direction,
//     within ActiveFor) whose latest probe is older than ProbeEvery or
//     missing, never probed first, then oldest probe first;
//  2. every other pair whose probe is missing or older than
//     ProbeIdleEvery (so a VM's first migration between two hosts finds a
//     figure too), same order.
//
// A pair whose last probe failed less than ProbeRetry ago is left out. The
// caller bounds how many it probes per round, which bounds the probing
// load however large the cluster.
func (l *Links) Due(now time.Time, hosts []string) []Pair {
	type cand struct {
		p      Pair
		active bool
		last   time.Time // zero: never probed
	}
	var cs []cand
	seen := map[Pair]bool{}
	consider := func(p Pair) {
		if seen[p] || p.From == p.To || p.From == Any || p.To == Any {
			return
		}
		seen[p] = true
		if f, ok := l.failed[p]; ok && now.Sub(f) < l.ProbeRetry {
			return
		}
		at, migrated := l.migrated[p]
		active := migrated && now.Sub(at) <= l.ActiveFor
		every := l.ProbeIdleEvery
		if active {
			every = l.ProbeEvery
		}
		pr, probed := l.probes[p]
		if probed && now.Sub(pr.at) < every {
			return
		}
		cs = append(cs, cand{p: p, active: active, last: pr.at})
	}
	for p := range l.migrated {
		if slices.Contains(hosts, p.From) && slices.Contains(hosts, p.To) {
			consider(p)
		}
	}
	for _, a := range hosts {
		for _, b := range hosts {
			consider(Pair{a, b})
		}
	}
	sort.Slice(cs, func(i, j int) bool {
		x, y := cs[i], cs[j]
		if x.active != y.active {
			return x.active
		}
		if !x.last.Equal(y.last) {
			return x.last.Before(y.last)
		}
		if x.p.From != y.p.From {
			return x.p.From < y.p.From
		}
		return x.p.To < y.p.To
	})
	out := make([]Pair, len(cs))
	for i, c := range cs {
		out[i] = c.p
	}
	return out
}

// Learned returns what past migrations reached from → to (false: never
// observed); Any, Any is the whole cluster.
func (l *Links) Learned(from, to string) (float64, bool) { return l.learned.Estimate(from, to) }

func ago(d time.Duration) string {
	if d < time.Second {
		return d.Round(time.Millisecond).String()
	}
	return d.Round(time.Second).String()
}
