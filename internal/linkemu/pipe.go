package linkemu

import (
	"math/rand/v2"
	"time"
)

// MaxQueuedFrames bounds a Pipe's queue in frames whatever its parameters,
// so an unlimited rate with a long delay cannot grow memory without limit.
const MaxQueuedFrames = 1 << 16

// Verdict says what Push did with a frame.
type Verdict int

// Push verdicts.
const (
	Queued      Verdict = iota // the frame will be delivered
	DroppedDown                // the link is down
	DroppedLoss                // random loss
	DroppedFull                // the transmitter's queue is full (tail drop)
)

// Stats count a Pipe's frames and bytes.
type Stats struct {
	Frames      uint64 `json:"frames"`       // pushed
	Bytes       uint64 `json:"bytes"`        // pushed
	Delivered   uint64 `json:"delivered"`    // popped
	DeliveredB  uint64 `json:"delivered_b"`  // popped bytes
	DroppedDown uint64 `json:"dropped_down"` // while down (also frames queued when it went down)
	DroppedLoss uint64 `json:"dropped_loss"`
	DroppedFull uint64 `json:"dropped_full"`
}

type entry struct {
	due   time.Time
	frame []byte
}

// Pipe is one direction of an emulated link. A frame pushed at time now
// waits for the transmitter (which sends Rate bytes per second, one frame
// after the other), then travels Delay ± Jitter, and is due after that;
// frames are due in the order they were pushed. Pipe is a pure value: the
// caller supplies every time, and it is not safe for concurrent use.
type Pipe struct {
	params Params
	rnd    *rand.Rand
	// busyUntil is when the transmitter has sent every queued frame.
	busyUntil time.Time
	// lastDue is the due time of the newest frame: no frame is due before it.
	lastDue time.Time
	queue   []entry // FIFO, due times non-decreasing
	head    int
	stats   Stats
}

// NewPipe returns a pipe with params p (which must be valid) whose loss and
// jitter draw from a generator seeded with seed.
func NewPipe(p Params, seed uint64) *Pipe {
	return &Pipe{params: p, rnd: rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))}
}

// Params returns the pipe's parameters.
func (p *Pipe) Params() Params { return p.params }

// Stats returns the pipe's counters.
func (p *Pipe) Stats() Stats { return p.stats }

// Len returns the number of frames queued.
func (p *Pipe) Len() int { return len(p.queue) - p.head }

// Set changes the parameters at time now. Frames already queued keep their
// due times, except that going down drops them all.
func (p *Pipe) Set(now time.Time, params Params) {
	p.params = params
	if params.Down {
		p.stats.DroppedDown += uint64(p.Len())
		p.queue, p.head = nil, 0
		p.busyUntil, p.lastDue = now, now
	}
}

// Push offers frame at time now. The pipe keeps frame (the caller must not
// reuse it) unless the verdict is a drop.
func (p *Pipe) Push(now time.Time, frame []byte) Verdict {
	p.stats.Frames++
	p.stats.Bytes += uint64(len(frame))
	if p.params.Down {
		p.stats.DroppedDown++
		return DroppedDown
	}
	if p.params.Loss > 0 && p.rnd.Float64() < p.params.Loss {
		p.stats.DroppedLoss++
		return DroppedLoss
	}
	if p.Len() >= MaxQueuedFrames {
		p.stats.DroppedFull++
		return DroppedFull
	}
	start := now
	if p.busyUntil.After(now) {
		start = p.busyUntil
	}
	sent := start
	if r := p.params.Rate; r > 0 {
		backlog := float64(start.Sub(now)) / float64(time.Second) * float64(r)
		if int64(backlog)+int64(len(frame)) > p.params.queueLimit() && p.Len() > 0 {
			p.stats.DroppedFull++
			return DroppedFull
		}
		sent = start.Add(time.Duration(float64(len(frame)) / float64(r) * float64(time.Second)))
	}
	p.busyUntil = sent
	delay := p.params.Delay
	if j := p.params.Jitter; j > 0 {
		delay += time.Duration(p.rnd.Int64N(int64(2*j)+1)) - j
	}
	due := sent.Add(delay)
	if due.Before(p.lastDue) {
		due = p.lastDue
	}
	p.lastDue = due
	p.queue = append(p.queue, entry{due: due, frame: frame})
	return Queued
}

// Next returns when the oldest queued frame is due; ok is false when the
// pipe is empty.
func (p *Pipe) Next() (due time.Time, ok bool) {
	if p.Len() == 0 {
		return time.Time{}, false
	}
	return p.queue[p.head].due, true
}

// Pop appends to out every frame due at or before now, oldest first, and
// returns it.
func (p *Pipe) Pop(now time.Time, out [][]byte) [][]byte {
	for p.head < len(p.queue) && !p.queue[p.head].due.After(now) {
		e := p.queue[p.head]
		p.queue[p.head] = entry{}
		p.head++
		p.stats.Delivered++
		p.stats.DeliveredB += uint64(len(e.frame))
		out = append(out, e.frame)
	}
	if p.head == len(p.queue) {
		p.queue, p.head = p.queue[:0], 0
	} else if p.head > 1024 && p.head*2 > len(p.queue) {
		n := copy(p.queue, p.queue[p.head:])
		clear(p.queue[n:])
		p.queue, p.head = p.queue[:n], 0
	}
	return out
}
