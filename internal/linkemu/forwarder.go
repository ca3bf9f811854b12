package linkemu

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sync"
	"time"
)

// Direction names one way through a Forwarder.
type Direction string

// The two directions: from interface A to B and back.
const (
	AToB Direction = "a_to_b"
	BToA Direction = "b_to_a"
)

// Forwarder moves frames between interfaces A and B through one Pipe per
// direction. It is the executor around Pipe: packet sockets, the wall
// clock and goroutines.
type Forwarder struct {
	a, b *packetConn
	mu   sync.Mutex
	dirs map[Direction]*direction
	// Truncated counts frames longer than MaxFrame (offloads left on).
	truncated uint64
}

type direction struct {
	pipe *Pipe
	wake chan struct{}
	// writeErrors counts frames the kernel refused to send.
	writeErrors uint64
}

// NewForwarder opens packet sockets on interfaces a and b (in the calling
// thread's namespace) and shapes both directions with p.
func NewForwarder(a, b string, p Params) (*Forwarder, error) {
	if err := p.Validate(); err != nil {
		return nil, err
	}
	ca, err := openPacket(a)
	if err != nil {
		return nil, err
	}
	cb, err := openPacket(b)
	if err != nil {
		ca.close()
		return nil, err
	}
	seed := uint64(time.Now().UnixNano())
	return &Forwarder{a: ca, b: cb, dirs: map[Direction]*direction{
		AToB: {pipe: NewPipe(p, seed), wake: make(chan struct{}, 1)},
		BToA: {pipe: NewPipe(p, seed+1), wake: make(chan struct{}, 1)},
	}}, nil
}

// Status is a forwarder's parameters and per-direction counters.
type Status struct {
	Params    Params              `json:"params"`
	Stats     map[Direction]Stats `json:"stats"`
	Queued    map[Direction]int   `json:"queued"`
	Truncated uint64              `json:"truncated"`
	// WriteErrors counts frames the kernel refused to send.
	WriteErrors uint64 `json:"write_errors"`
}

// Status returns the current parameters and counters.
func (f *Forwarder) Status() Status {
	f.mu.Lock()
	defer f.mu.Unlock()
	st := Status{Params: f.dirs[AToB].pipe.Params(), Stats: map[Direction]Stats{}, Queued: map[Direction]int{}, Truncated: f.truncated}
	for name, d := range f.dirs {
		st.Stats[name] = d.pipe.Stats()
		st.Queued[name] = d.pipe.Len()
		st.WriteErrors += d.writeErrors
	}
	return st
}

// Set changes the parameters of both directions.
func (f *Forwarder) Set(p Params) error {
	if err := p.Validate(); err != nil {
		return err
	}
	f.mu.Lock()
	now := time.Now()
	for _, d := range f.dirs {
		d.pipe.Set(now, p)
	}
	f.mu.Unlock()
	for _, d := range f.dirs {
		d.poke()
	}
	return nil
}

func (d *direction) poke() {
	select {
	case d.wake <- struct{}{}:
	default:
	}
}

// Run forwards frames until ctx ends, then closes the sockets. It returns
// the first I/O error that stops a direction, or nil after ctx ended.
func (f *Forwarder) Run(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	errc := make(chan error, 4)
	var wg sync.WaitGroup
	start := func(fn func(context.Context) error) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := fn(ctx); err != nil && ctx.Err() == nil {
				errc <- err
				cancel()
			}
		}()
	}
	start(func(ctx context.Context) error { return f.receive(f.a, f.dirs[AToB]) })
	start(func(ctx context.Context) error { return f.receive(f.b, f.dirs[BToA]) })
	start(func(ctx context.Context) error { return f.send(ctx, f.dirs[AToB], f.b) })
	start(func(ctx context.Context) error { return f.send(ctx, f.dirs[BToA], f.a) })
	<-ctx.Done()
	// Closing the files wakes the readers blocked in the poller.
	ea, eb := f.a.close(), f.b.close()
	wg.Wait()
	select {
	case err := <-errc:
		return err
	default:
	}
	if err := errors.Join(ea, eb); err != nil {
		return fmt.Errorf("close packet sockets: %w", err)
	}
	return nil
}

// framePool recycles frame buffers (MaxFrame bytes each) between the
// readers and the senders, so forwarding does not allocate per frame.
var framePool = sync.Pool{New: func() any { b := make([]byte, MaxFrame); return &b }}

// receive reads frames from c into d's pipe until c is closed.
func (f *Forwarder) receive(c *packetConn, d *direction) error {
	for {
		bp := framePool.Get().(*[]byte)
		buf := (*bp)[:MaxFrame]
		n, err := c.read(buf)
		if err != nil {
			framePool.Put(bp)
			if errors.Is(err, os.ErrClosed) {
				return nil
			}
			return err
		}
		fr := buf[:min(n, len(buf))]
		f.mu.Lock()
		if n > len(buf) {
			f.truncated++
		}
		wasEmpty := d.pipe.Len() == 0
		if d.pipe.Push(time.Now(), fr) != Queued {
			framePool.Put(bp)
		}
		f.mu.Unlock()
		if wasEmpty {
			d.poke()
		}
	}
}

// send writes d's due frames to c, sleeping until the next one is due.
func (f *Forwarder) send(ctx context.Context, d *direction, c *packetConn) error {
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	var batch [][]byte
	for {
		f.mu.Lock()
		now := time.Now()
		batch = d.pipe.Pop(now, batch[:0])
		next, ok := d.pipe.Next()
		f.mu.Unlock()
		var failed uint64
		for i, fr := range batch {
			if err := c.write(fr); err != nil {
				if errors.Is(err, os.ErrClosed) {
					return nil
				}
				failed++ // e.g. the peer is down: the frame is lost, as on a wire
			}
			fr = fr[:cap(fr)]
			framePool.Put(&fr)
			batch[i] = nil
		}
		if failed > 0 {
			f.mu.Lock()
			d.writeErrors += failed
			f.mu.Unlock()
		}
		wait := time.Hour
		if ok {
			wait = max(time.Until(next), 0)
		}
		if len(batch) > 0 && wait == 0 {
			continue
		}
		timer.Reset(wait)
		select {
		case <-ctx.Done():
			return nil
		case <-d.wake:
		case <-timer.C:
		}
	}
}
