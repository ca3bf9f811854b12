package telemetry

import (
	"fmt"
	"time"

	"github.com/ferryvm/ferry/internal/planner"
)

// RateKind names what a Rates figure is the rate of.
type RateKind string

// Rate kinds.
const (
	// StreamRate is one QEMU migration stream's rate when the link is not
	// the limit (planner.Inputs.StreamBytesPerSec).
	StreamRate RateKind = "stream"
	// MirrorRate is one local disk's NBD mirror rate
	// (planner.Inputs.MirrorBytesPerSec).
	MirrorRate RateKind = "mirror"
)

// StreamRateFor is the stream rate kind for a migration of nonZero bytes
// of guest RAM: stream rates are learned per size class, since one
// figure does not fit every size — a short TLS migration's stream is
// mostly ramp-up and its fixed costs (the bench's idle guest, 112 MiB:
// 57–105 MiB/s by the pre-copy model), a long one's is not (the big
// guest, 1.2 GiB: about 140 MiB/s), and planning big with idle's figure
// predicted +107 % and picked compression it did not need.
func StreamRateFor(nonZero int64) RateKind {
	return StreamRate + RateKind(":"+SizeClass(nonZero))
}

// SizeClass names the size class of n bytes: below 256 MiB, up to 1 GiB,
// up to 4 GiB, or more.
func SizeClass(n int64) string {
	switch {
	case n < 256<<20:
		return "<256MiB"
	case n <= 1<<30:
		return "256MiB-1GiB"
	case n <= 4<<30:
		return "1-4GiB"
	}
	return ">4GiB"
}

// RateChanged is the factor by which a migration's stream or mirror rate
// must differ from the pair's average for the book to restart the average
// from it. It is wider than LinkChanged: a short run's rate varies more
// between runs (the bench's idle runs, 57–105 MiB/s, restarted a 1.4×
// average at nearly every run, so the figure was the last run's alone),
// and a CPU-bound rate changes with the hosts' load, not with a reshaped
// link.
const RateChanged = 2.0

// Transports a rate is learned for (ferryv1.Migration.transport).
const (
	TransportTLS   = "tls"
	TransportPlain = "plain"
)

// rateKey is one estimate family: a kind over a transport.
type rateKey struct {
	kind      RateKind
	transport string
}

// Rates is the control plane's book of what one migration stream and one
// disk mirror reach per directed host pair and transport when the link is
// not the limit: a moving average (planner.EWMAAlpha) of what past
// migrations showed, also over every pair (Any), restarted on a pair when
// a migration is more than RateChanged off its average. Stream rates are
// kept per size class (StreamRateFor). It is kept apart
// from Links: a stream's rate is a property of the hosts' CPUs and QEMU,
// never a cap on what the link carries. The zero value is ready to use;
// not safe for concurrent use.
type Rates struct {
	est map[rateKey]*planner.BandwidthEstimator
	at  map[rateKey]map[Pair]time.Time
}

// NewRates returns an empty book.
func NewRates() *Rates { return &Rates{} }

func (r *Rates) family(k rateKey) (*planner.BandwidthEstimator, map[Pair]time.Time) {
	if r.est == nil {
		r.est, r.at = map[rateKey]*planner.BandwidthEstimator{}, map[rateKey]map[Pair]time.Time{}
	}
	if r.est[k] == nil {
		r.est[k], r.at[k] = &planner.BandwidthEstimator{}, map[Pair]time.Time{}
	}
	return r.est[k], r.at[k]
}

// Observe folds in the rate (bytes/s) a finished migration from → to over
// transport showed for kind at at, into the pair's estimate and the Any
// pair's. A rate more than RateChanged times above or below the pair's
// average replaces it (the hosts, QEMU or the load changed).
func (r *Rates) Observe(kind RateKind, transport, from, to string, bytesPerSec float64, at time.Time) {
	if !usable(bytesPerSec) || from == Any || to == Any {
		return
	}
	e, when := r.family(rateKey{kind, transport})
	if old, ok := e.Estimate(from, to); ok && (bytesPerSec > RateChanged*old || bytesPerSec*RateChanged < old) {
		e.Forget(from, to)
	}
	for _, p := range []Pair{{from, to}, {Any, Any}} {
		e.Observe(p.From, p.To, bytesPerSec)
		when[p] = at
	}
}

// RateFigure is a learned rate a plan uses.
type RateFigure struct {
	BytesPerSec float64
	// AnyPair says the pair never showed one: the figure is what
	// migrations anywhere in the cluster showed over the transport.
	AnyPair bool
	// Samples is how many migrations the estimate holds.
	Samples int
	// Age is the age of its newest migration.
	Age time.Duration
	// Source says in words where it came from.
	Source string
}

// Figure returns the learned kind rate from → to over transport at now:
// the pair's, else the Any pair's; false when neither was ever observed
// (the plan uses the planner's constant).
func (r *Rates) Figure(kind RateKind, transport, from, to string, now time.Time) (RateFigure, bool) {
	k := rateKey{kind, transport}
	e := r.est[k]
	if e == nil {
		return RateFigure{}, false
	}
	p, anyPair := Pair{from, to}, false
	bps, ok := e.Estimate(from, to)
	if !ok {
		p, anyPair = Pair{Any, Any}, true
		if bps, ok = e.Estimate(Any, Any); !ok {
			return RateFigure{}, false
		}
	}
	f := RateFigure{BytesPerSec: bps, AnyPair: anyPair, Age: max(now.Sub(r.at[k][p]), 0)}
	for _, l := range e.Links() {
		if l.From == p.From && l.To == p.To {
			f.Samples = l.Samples
		}
	}
	where := p.String()
	if anyPair {
		where = fmt.Sprintf("any pair (none yet %s→%s)", from, to)
	}
	f.Source = fmt.Sprintf("learned from %d past %s migration(s) %s, last %s ago (%.0f MiB/s)", f.Samples, transport, where, ago(f.Age), bps/(1<<20))
	return f, true
}
