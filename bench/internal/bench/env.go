package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"time"

	"github.com/ferryvm/ferry/internal/devcluster"
	"github.com/ferryvm/ferry/internal/linkemu"
	"github.com/ferryvm/ferry/internal/netnsutil"
)

// Env is the shared test bed: one dev cluster with two hosts and Ferry's
// daemons, reused by every system and run.
type Env struct {
	Cluster *devcluster.Cluster
	Src     devcluster.Host // h1
	Dst     devcluster.Host // h2
	// Dir is the benchmark's scratch directory (short paths: unix sockets).
	Dir string
	// FerryBin is the ferry binary; GuestDir holds vmlinuz and initrd.img.
	FerryBin, GuestDir string
	// DiskBase is the disk scenario's qcow2 image (every system's guest
	// disk starts as a sparse copy of it); "" without that scenario.
	DiskBase string
	// shaped is set while the link emulator is inserted.
	shaped bool
}

// upEnv tears down a leftover cluster of the same prefix (ours, from a
// crashed run), brings up a 2-host cluster and starts Ferry in it (TCG, as
// for the other systems).
// allow are the directories the agents let the benchmark's VM specs name
// files in (the guest, the work directory).
func upEnv(ctx context.Context, prefix, stateDir, ferryBin string, allow ...string) (*devcluster.Cluster, error) {
	cfg := devcluster.Config{Prefix: prefix, Hosts: 2, Dir: stateDir}
	if err := devcluster.Down(ctx, cfg); err != nil {
		return nil, fmt.Errorf("remove leftovers of an earlier benchmark cluster %q: %w", prefix, err)
	}
	c, err := devcluster.Up(ctx, cfg)
	if err != nil {
		return nil, err
	}
	if err := c.StartFerry(ctx, devcluster.FerryOptions{Binary: ferryBin, Accel: "tcg", AllowPaths: allow}); err != nil {
		_ = c.Down(context.Background())
		return nil, fmt.Errorf("start ferry in the benchmark cluster: %w", err)
	}
	return c, nil
}

// linkHost is the host whose link to the segment the link emulator
// shapes: every byte between the two hosts crosses it once, so its delay
// and loss apply once each way (RTT = 2 × delay). The guest's own traffic
// to the client crosses it too while the guest runs on h1, for every
// system alike.
func (e *Env) linkHost() devcluster.Host { return e.Src }

// Shape puts the link emulator (internal/linkemu, `ferry dev cluster
// link`) on the source host's link with the scenario's rate, delay and
// loss, or removes it for an unshaped scenario.
func (e *Env) Shape(ctx context.Context, sc Scenario) error {
	h := e.linkHost()
	if !sc.Shaped() {
		if err := e.Cluster.ClearLink(ctx, h.Name); err != nil {
			return fmt.Errorf("unshape the link of %s: %w", h.Name, err)
		}
		e.shaped = false
		return nil
	}
	want := linkemu.Params{
		Rate:  int64(sc.ShapedMiBps * (1 << 20)),
		Delay: time.Duration(sc.DelayMs * float64(time.Millisecond)),
		Loss:  sc.LossPct / 100,
	}
	if _, err := e.Cluster.Link(ctx, h.Name, e.FerryBin, func(p *linkemu.Params) { *p = want }); err != nil {
		return fmt.Errorf("shape the link of %s (%s): %w", h.Name, sc.LinkString(), err)
	}
	e.shaped = true
	return nil
}

// SetLinkDown takes the emulated link down (every frame dropped) or up.
func (e *Env) SetLinkDown(ctx context.Context, down bool) error {
	h := e.linkHost()
	if _, err := e.Cluster.Link(ctx, h.Name, e.FerryBin, func(p *linkemu.Params) { p.Down = down }); err != nil {
		return fmt.Errorf("set the link of %s down=%v: %w", h.Name, down, err)
	}
	return nil
}

// Unshape removes the link emulator, ignoring errors (cleanup path).
func (e *Env) Unshape() {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_ = e.Cluster.ClearLink(ctx, e.linkHost().Name)
	e.shaped = false
}

// ProbeStreams is how many parallel TCP streams MeasureBandwidth uses: on
// a lossy, far link one stream gets a fraction of the link (its window
// halves at every loss), and the bound is about the link.
const ProbeStreams = 4

// MeasureBandwidth sends bulk TCP data over ProbeStreams parallel
// connections from the source host's namespace to a receiver in the
// destination host's namespace for d and returns the aggregate rate the
// receiver saw in MiB/s: what the link carries for TCP.
func (e *Env) MeasureBandwidth(ctx context.Context, d time.Duration) (float64, error) {
	l, err := netnsutil.Listen(e.Dst.Netns, "tcp", net.JoinHostPort(e.Dst.IP, "0"))
	if err != nil {
		return 0, fmt.Errorf("bandwidth probe: %w", err)
	}
	defer l.Close()
	type result struct {
		n          int64
		start, end time.Time
		err        error
	}
	got := make(chan result, ProbeStreams)
	go func() {
		for range ProbeStreams {
			conn, err := l.Accept()
			if err != nil {
				got <- result{err: err}
				continue
			}
			go func() {
				defer conn.Close()
				buf := make([]byte, 1<<20)
				var r result
				for {
					k, err := conn.Read(buf)
					if k > 0 && r.start.IsZero() {
						r.start = time.Now()
					}
					r.n += int64(k)
					if err != nil {
						if !errors.Is(err, io.EOF) {
							r.err = err
						}
						r.end = time.Now()
						got <- r
						return
					}
				}
			}()
		}
	}()
	buf := make([]byte, 256<<10)
	for i := range buf {
		buf[i] = byte(i*7 + 1)
	}
	deadline := time.Now().Add(d)
	sendErr := make(chan error, ProbeStreams)
	for range ProbeStreams {
		go func() {
			dctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			conn, err := netnsutil.DialContext(dctx, e.Src.Netns, "tcp", l.Addr().String())
			cancel()
			if err != nil {
				sendErr <- fmt.Errorf("bandwidth probe: %w", err)
				return
			}
			defer conn.Close()
			_ = conn.SetWriteDeadline(deadline.Add(5 * time.Second))
			for time.Now().Before(deadline) && ctx.Err() == nil {
				if _, err := conn.Write(buf); err != nil {
					sendErr <- fmt.Errorf("bandwidth probe: send: %w", err)
					return
				}
			}
			sendErr <- nil
		}()
	}
	for range ProbeStreams {
		if err := <-sendErr; err != nil {
			return 0, err
		}
	}
	var total int64
	var first, last time.Time
	timeout := time.After(30 * time.Second)
	for range ProbeStreams {
		select {
		case r := <-got:
			if r.err != nil {
				return 0, fmt.Errorf("bandwidth probe: receive: %w", r.err)
			}
			total += r.n
			if !r.start.IsZero() && (first.IsZero() || r.start.Before(first)) {
				first = r.start
			}
			if r.end.After(last) {
				last = r.end
			}
		case <-timeout:
			return 0, errors.New("bandwidth probe: receivers did not finish within 30s")
		}
	}
	if first.IsZero() || !last.After(first) {
		return 0, errors.New("bandwidth probe: nothing received")
	}
	return float64(total) / (1 << 20) / last.Sub(first).Seconds(), nil
}
