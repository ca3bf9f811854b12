// Package pace implements rate pacing against elapsed wall-clock time.
//
// A Pacer does not count "units per sleep": it computes how many units
// should have been issued since start at the configured rate and reports
// the difference to what was issued, so sleep overshoot (which is large
// under TCG emulation) is caught up on the next round instead of lowering
// the achieved rate. A backlog cap keeps a long stall (VM paused, migration
// downtime, stopped by a debugger) from turning into a burst afterwards:
// units beyond the cap are dropped and counted as skipped.
package pace

import (
	"math/bits"
	"time"
)

// Pacer paces units of UnitSize bytes at BytesPerSec. The zero value is not
// usable; use New. A Pacer is not safe for concurrent use.
type Pacer struct {
	start       time.Time
	bytesPerSec uint64
	unitSize    uint64
	maxBacklog  uint64

	done    uint64 // units reported via Done
	skipped uint64 // units dropped by the backlog cap
}

// New returns a Pacer starting at start. maxBacklog is the largest number of
// units Due will ever return; 0 means no cap. bytesPerSec 0 means nothing is
// ever due.
func New(start time.Time, bytesPerSec, unitSize, maxBacklog uint64) *Pacer {
	if unitSize == 0 {
		unitSize = 1
	}
	return &Pacer{start: start, bytesPerSec: bytesPerSec, unitSize: unitSize, maxBacklog: maxBacklog}
}

// Target returns the number of whole units that should have been issued
// after elapsed at the rate: floor(elapsed * bytesPerSec / (1e9 * unitSize)),
// computed in 128-bit integer arithmetic so it is exact.
func Target(elapsed time.Duration, bytesPerSec, unitSize uint64) uint64 {
	if elapsed <= 0 || bytesPerSec == 0 || unitSize == 0 {
		return 0
	}
	hi, lo := bits.Mul64(uint64(elapsed), bytesPerSec)
	den := uint64(time.Second) * unitSize
	if hi >= den { // would overflow uint64 units; unreachable in practice
		return ^uint64(0)
	}
	q, _ := bits.Div64(hi, lo, den)
	return q
}

// Due returns how many units must be issued now to be on schedule. If more
// than the backlog cap are due, the excess is counted as skipped and never
// returned again.
func (p *Pacer) Due(now time.Time) uint64 {
	t := Target(now.Sub(p.start), p.bytesPerSec, p.unitSize)
	acc := p.done + p.skipped
	if t <= acc {
		return 0
	}
	n := t - acc
	if p.maxBacklog > 0 && n > p.maxBacklog {
		p.skipped += n - p.maxBacklog
		n = p.maxBacklog
	}
	return n
}

// Done records n units as issued.
func (p *Pacer) Done(n uint64) { p.done += n }

// Issued returns the units recorded with Done.
func (p *Pacer) Issued() uint64 { return p.done }

// Skipped returns the units dropped by the backlog cap.
func (p *Pacer) Skipped() uint64 { return p.skipped }

// Start returns the start time.
func (p *Pacer) Start() time.Time { return p.start }

// NextAt returns the time at which the next unit (beyond those issued or
// skipped) becomes due. With a zero rate it returns a time far in the future.
func (p *Pacer) NextAt() time.Time {
	if p.bytesPerSec == 0 {
		return p.start.Add(1<<62 - 1)
	}
	next := p.done + p.skipped + 1
	// smallest elapsed ns with Target >= next: ceil(next*unit*1e9 / rate)
	hi, lo := bits.Mul64(next*p.unitSize, uint64(time.Second))
	if hi >= p.bytesPerSec {
		return p.start.Add(1<<62 - 1)
	}
	q, r := bits.Div64(hi, lo, p.bytesPerSec)
	if r != 0 {
		q++
	}
	if q > 1<<62 {
		q = 1 << 62
	}
	return p.start.Add(time.Duration(q))
}

// Rate returns achieved units per second between start and now.
func (p *Pacer) Rate(now time.Time) float64 {
	el := now.Sub(p.start).Seconds()
	if el <= 0 {
		return 0
	}
	return float64(p.done) / el
}

// Wait returns how long to sleep before the next round: until NextAt, but at
// least minSleep (so fast rates are served in batches rather than one unit
// per wakeup) and at most maxSleep (so a paused clock or a rate change is
// noticed).
func (p *Pacer) Wait(now time.Time, minSleep, maxSleep time.Duration) time.Duration {
	d := p.NextAt().Sub(now)
	if d < minSleep {
		d = minSleep
	}
	if maxSleep > 0 && d > maxSleep {
		d = maxSleep
	}
	return d
}
