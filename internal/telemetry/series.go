// Package telemetry is the pure core of Ferry's background telemetry: a
// bounded series of timestamped samples (a ring) with its moving average,
// peak and age; the staleness rule a plan applies to it; the schedule an
// agent's per-VM sampler follows; and the book of link rates the control
// plane keeps per host pair from past migrations and cheap probes. Nothing
// here reads a clock, sleeps or does I/O: every method takes "now", so the
// tests drive it with a fake clock and the thin executors (the agent's
// sampler, the server's prober) supply time.Now().
package telemetry

import (
	"fmt"
	"math"
	"time"

	"github.com/ferryvm/ferry/internal/ewma"
)

// DefaultAlpha is the weight of the newest sample in a Series' moving
// average.
const DefaultAlpha = 0.3

// Sample is one measurement and when it was taken (when it ended).
type Sample struct {
	At    time.Time
	Value float64
}

// Series keeps the newest Capacity samples of one figure (a ring; older
// ones fall out) and an exponentially weighted moving average over every
// sample added. Samples older than the newest are refused, so the ring is
// always in time order. The zero value is not usable; use NewSeries. It is
// not safe for concurrent use.
type Series struct {
	avg  ewma.Average // over every sample ever added
	buf  []Sample
	next int // where the next sample goes
	n    int // samples held (≤ len(buf))
}

// NewSeries returns an empty series holding at most capacity samples
// (at least 1) with moving-average weight alpha (DefaultAlpha if alpha is
// not in (0, 1]).
func NewSeries(capacity int, alpha float64) *Series {
	if capacity < 1 {
		capacity = 1
	}
	if !(alpha > 0 && alpha <= 1) {
		alpha = DefaultAlpha
	}
	return &Series{avg: ewma.Average{Alpha: alpha}, buf: make([]Sample, capacity)}
}

// Add records v taken at at. A value that is negative or not finite, or a
// sample older than the newest one held, is refused (false).
func (s *Series) Add(at time.Time, v float64) bool {
	if v < 0 || math.IsNaN(v) || math.IsInf(v, 0) {
		return false
	}
	if last, ok := s.Latest(); ok && at.Before(last.At) {
		return false
	}
	s.avg.Add(v)
	s.buf[s.next] = Sample{At: at, Value: v}
	s.next = (s.next + 1) % len(s.buf)
	if s.n < len(s.buf) {
		s.n++
	}
	return true
}

// Len is how many samples the ring holds.
func (s *Series) Len() int { return s.n }

// Latest returns the newest sample, false when there is none.
func (s *Series) Latest() (Sample, bool) {
	if s.n == 0 {
		return Sample{}, false
	}
	return s.buf[(s.next-1+len(s.buf))%len(s.buf)], true
}

// Samples returns the held samples, oldest first.
func (s *Series) Samples() []Sample {
	out := make([]Sample, 0, s.n)
	for i := range s.n {
		out = append(out, s.buf[(s.next-s.n+i+len(s.buf))%len(s.buf)])
	}
	return out
}

// Reset forgets every sample (a new QEMU process starts a new series).
func (s *Series) Reset() {
	*s = Series{avg: ewma.Average{Alpha: s.avg.Alpha}, buf: make([]Sample, len(s.buf))}
}

// Estimate is what a series says at one moment.
type Estimate struct {
	// Value is the figure to plan with: the latest sample, or the moving
	// average when that is higher (a burst that just ended still counts).
	Value float64
	// Latest, EWMA and Peak are the newest sample, the moving average and
	// the highest sample held.
	Latest, EWMA, Peak float64
	// Samples is how many samples the ring holds.
	Samples int
	// At is when the latest sample was taken; Age is now − At.
	At  time.Time
	Age time.Duration
}

// Estimate summarises the series at now; false when it holds no sample.
func (s *Series) Estimate(now time.Time) (Estimate, bool) {
	last, ok := s.Latest()
	if !ok {
		return Estimate{}, false
	}
	e := Estimate{Latest: last.Value, EWMA: s.avg.Value, Samples: s.n, At: last.At, Age: max(now.Sub(last.At), 0)}
	for _, x := range s.Samples() {
		e.Peak = max(e.Peak, x.Value)
	}
	e.Value = max(e.Latest, e.EWMA)
	return e, true
}

// EstimateSince is Estimate over the samples taken at or after since only:
// the moving average and peak start afresh from the first of them, so a
// burst before since (a guest's boot, its workload filling memory) does not
// count. The latest sample always counts, however old; false when the
// series holds none.
func (s *Series) EstimateSince(now, since time.Time) (Estimate, bool) {
	last, ok := s.Latest()
	if !ok {
		return Estimate{}, false
	}
	e := Estimate{Latest: last.Value, At: last.At, Age: max(now.Sub(last.At), 0)}
	avg := ewma.Average{Alpha: s.avg.Alpha}
	for _, x := range s.Samples() {
		if x.At.Before(since) && !x.At.Equal(last.At) {
			continue
		}
		avg.Add(x.Value)
		e.Peak = max(e.Peak, x.Value)
		e.Samples++
	}
	e.EWMA = avg.Value
	e.Value = max(e.Latest, e.EWMA)
	return e, true
}

// Staleness applies the freshness rule: a series is fresh at now when its
// latest sample is at most maxAge old. It returns "" when fresh, else the
// reason (no sample yet, or how old the latest is). maxAge ≤ 0 means the
// caller wants a measurement now whatever the series holds.
func (s *Series) Staleness(now time.Time, maxAge time.Duration) string {
	if maxAge <= 0 {
		return "a fresh measurement was asked for"
	}
	last, ok := s.Latest()
	if !ok {
		return "no sample yet"
	}
	if age := now.Sub(last.At); age > maxAge {
		return fmt.Sprintf("latest sample %s old (limit %s)", age.Round(time.Second), maxAge)
	}
	return ""
}
