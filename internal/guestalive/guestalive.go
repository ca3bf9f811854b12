// Package guestalive decides whether a VM's guest shows signs of life, for
// the check after a migration's destination resumed: an answer to the QEMU
// guest agent's guest-ping when the VM has the channel, otherwise progress
// of its vCPU threads' CPU time or frames its NIC sent. The probes are
// functions (the agent passes real ones, see procfs.go and frames_linux.go;
// tests pass fakes); Check owns the polling and the deadline.
//
// What the fallback cannot tell: a guest kernel spinning in a panic loop
// (panic=0 halts in a busy mdelay loop) still burns vCPU time, so without
// the guest agent channel such a guest passes as alive unless it stopped
// its vCPUs. Only the ping proves the guest's software answers.
package guestalive

import (
	"context"
	"fmt"
	"time"
)

// Methods: the sign of life Check saw.
const (
	MethodPing  = "guest-ping"
	MethodVCPU  = "vcpu"
	MethodNICTx = "nic-tx"
)

// Sample is one reading of a guest's counters for the fallback.
type Sample struct {
	// CPUTicks is the sum of utime+stime of the VM's vCPU threads (clock ticks).
	CPUTicks uint64
	// TxPackets counts frames the guest's NICs sent (seen on their taps,
	// QEMU's own RARP announcements left out: see FrameWatch).
	TxPackets uint64
}

// Config is one check.
type Config struct {
	// Ping asks the guest agent once (under ctx's deadline); nil when the VM
	// has no guest agent channel.
	Ping func(ctx context.Context) error
	// Sample reads the fallback counters; used when Ping is nil.
	Sample func() (Sample, error)
	// Since is when the guest resumed: After counts from it (from the
	// start of Check when zero or later than the start).
	Since time.Time
	// Timeout bounds the check (default 5 s); Interval is the pause between
	// attempts (default 50 ms between pings, 10 ms between readings of the
	// counters, which cost two small procfs reads); AttemptTimeout bounds
	// one ping (default 1 s).
	Timeout, Interval, AttemptTimeout time.Duration
}

// Result is what Check saw.
type Result struct {
	Alive bool
	// After is when the first sign came, counted from Since.
	After  time.Duration
	Method string // the sign seen, or the one(s) watched when Alive is false
	Detail string // what was seen, or what was missing
}

// Check waits for a sign of life until the timeout (or ctx ends). A guest
// that shows none is Alive=false with the reason in Detail; Check itself
// never fails.
func Check(ctx context.Context, cfg Config) Result {
	if cfg.Timeout <= 0 {
		cfg.Timeout = 5 * time.Second
	}
	if cfg.Interval <= 0 {
		cfg.Interval = 50 * time.Millisecond
		if cfg.Ping == nil {
			cfg.Interval = 10 * time.Millisecond
		}
	}
	if cfg.AttemptTimeout <= 0 {
		cfg.AttemptTimeout = time.Second
	}
	start := time.Now()
	since := cfg.Since
	if since.IsZero() || since.After(start) {
		since = start
	}
	ctx, cancel := context.WithTimeout(ctx, cfg.Timeout)
	defer cancel()
	if cfg.Ping != nil {
		return checkPing(ctx, cfg, since)
	}
	if cfg.Sample != nil {
		return checkCounters(ctx, cfg, since)
	}
	return Result{Method: "none", Detail: "no probe: the VM has no guest agent channel and no counters to watch"}
}

func checkPing(ctx context.Context, cfg Config, since time.Time) Result {
	attempts := 0
	var last error
	for {
		attempts++
		actx, cancel := context.WithTimeout(ctx, cfg.AttemptTimeout)
		err := cfg.Ping(actx)
		cancel()
		if err == nil {
			return Result{Alive: true, After: time.Since(since), Method: MethodPing,
				Detail: fmt.Sprintf("guest-ping answered (attempt %d)", attempts)}
		}
		last = err
		if !sleep(ctx, cfg.Interval) {
			return Result{Method: MethodPing, Detail: fmt.Sprintf("no answer to guest-ping within %v (%d attempts, last: %v)", cfg.Timeout, attempts, last)}
		}
	}
}

func checkCounters(ctx context.Context, cfg Config, since time.Time) Result {
	base, err := cfg.Sample()
	if err != nil {
		return Result{Method: MethodVCPU + "+" + MethodNICTx, Detail: fmt.Sprintf("cannot read the guest's counters: %v", err)}
	}
	for sleep(ctx, cfg.Interval) {
		s, err := cfg.Sample()
		if err != nil {
			return Result{Method: MethodVCPU + "+" + MethodNICTx, Detail: fmt.Sprintf("cannot read the guest's counters: %v", err)}
		}
		switch {
		case s.TxPackets > base.TxPackets:
			return Result{Alive: true, After: time.Since(since), Method: MethodNICTx,
				Detail: fmt.Sprintf("the NIC sent %d packet(s)", s.TxPackets-base.TxPackets)}
		case s.CPUTicks > base.CPUTicks:
			return Result{Alive: true, After: time.Since(since), Method: MethodVCPU,
				Detail: fmt.Sprintf("the vCPUs ran %d tick(s)", s.CPUTicks-base.CPUTicks)}
		}
	}
	return Result{Method: MethodVCPU + "+" + MethodNICTx, Detail: fmt.Sprintf("no vCPU time and no packet sent within %v", cfg.Timeout)}
}

// sleep waits d; false when ctx ended first.
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return ctx.Err() == nil
	}
}
