package agent

import (
	"context"
	"fmt"
	"time"

	"connectrpc.com/connect"
	agentv1 "github.com/ferryvm/ferry/gen/ferry/agent/v1"
	ferryv1 "github.com/ferryvm/ferry/gen/ferry/v1"
	"github.com/ferryvm/ferry/internal/guestagent"
	"github.com/ferryvm/ferry/internal/guestalive"
	"github.com/ferryvm/ferry/internal/netdev"
)

// Bounds of CheckGuestAlive's timeout_ms, and of the probe a destination
// starts by itself when it resumes.
const (
	defaultAliveTimeout = 5 * time.Second
	maxAliveTimeout     = 10 * time.Minute
	probeTimeout        = 30 * time.Second
)

// livenessService serves LivenessAgentService.
type livenessService struct{ a *Agent }

// CheckGuestAlive implements LivenessAgentService.
func (s *livenessService) CheckGuestAlive(ctx context.Context, req *connect.Request[agentv1.CheckGuestAliveRequest]) (*connect.Response[agentv1.CheckGuestAliveResponse], error) {
	r, err := s.a.checkGuestAlive(ctx, req.Msg)
	if err != nil {
		return nil, err
	}
	return connect.NewResponse(r), nil
}

// aliveProbe is the guest-alive check a destination starts the moment it
// resumes (see markRan), so that by the time the engine asks, the answer
// is usually there and the check adds nothing to the migration.
type aliveProbe struct {
	id   string // the migration
	done chan struct{}
	res  guestalive.Result // valid once done is closed
}

// startAliveProbe starts the probe of migration id's destination, resumed
// at at (once per migration; a restarted agent has none and checks on
// request instead).
func (v *vm) startAliveProbe(id string, at time.Time) {
	v.probeMu.Lock()
	if v.probe != nil && v.probe.id == id {
		v.probeMu.Unlock()
		return
	}
	p := &aliveProbe{id: id, done: make(chan struct{})}
	v.probe = p
	v.probeMu.Unlock()
	go func() {
		defer close(p.done)
		v.mu.Lock()
		proc, sp := v.proc, v.spec
		v.mu.Unlock()
		if proc == nil || !proc.Alive() {
			p.res = guestalive.Result{Detail: "the QEMU is gone"}
			return
		}
		cfg, stop := v.aliveConfig(proc, sp)
		defer stop()
		cfg.Since, cfg.Timeout = at, probeTimeout
		p.res = guestalive.Check(context.Background(), cfg)
	}()
}

// checkGuestAlive waits for a sign of life from VM req.Name's guest (see
// package guestalive): guest-ping over its guest agent channel when its
// spec has one, else vCPU and NIC progress. The probe started at the
// destination's resume answers when it can.
func (a *Agent) checkGuestAlive(ctx context.Context, req *agentv1.CheckGuestAliveRequest) (*agentv1.CheckGuestAliveResponse, error) {
	timeout := time.Duration(req.GetTimeoutMs()) * time.Millisecond
	switch {
	case req.GetTimeoutMs() < 0 || timeout > maxAliveTimeout:
		return nil, invalid("timeout_ms", "must be between 0 (default %v) and %v, got %d", defaultAliveTimeout, maxAliveTimeout, req.GetTimeoutMs())
	case timeout == 0:
		timeout = defaultAliveTimeout
	}
	v, err := a.lookup(req.GetName())
	if err != nil {
		return nil, err
	}
	v.mu.Lock()
	proc, sp, since := v.proc, v.spec, v.resumedAtLocked(req.GetMigrationId())
	v.mu.Unlock()
	if proc == nil || !proc.Alive() {
		return nil, failedPrecondition("VM %s has no running QEMU on host %s", v.name, a.cfg.Name)
	}
	res, ok, err := v.probeResult(ctx, req.GetMigrationId(), timeout)
	if err != nil {
		return nil, fmt.Errorf("check guest alive of VM %s: %w", v.name, err)
	}
	if !ok {
		cfg, stop := v.aliveConfig(proc, sp)
		defer stop()
		cfg.Since, cfg.Timeout = since, timeout
		res = guestalive.Check(ctx, cfg)
		if ctx.Err() != nil && !res.Alive {
			return nil, fmt.Errorf("check guest alive of VM %s: %w", v.name, ctx.Err())
		}
	}
	out := &agentv1.CheckGuestAliveResponse{Alive: res.Alive, AliveAfterMs: -1, Method: res.Method, Detail: res.Detail}
	if res.Alive {
		out.AliveAfterMs = max(res.After.Milliseconds(), 1) // a sign came: never report it as 0 (not checked)
		a.log.Info("guest alive", "vm", v.name, "migration", req.GetMigrationId(), "after_ms", out.AliveAfterMs, "method", res.Method)
	} else {
		a.log.Warn("guest unresponsive", "vm", v.name, "migration", req.GetMigrationId(), "method", res.Method, "detail", res.Detail)
	}
	return out, nil
}

// probeResult waits up to timeout for the resume probe of migration id.
// ok is false when there is none to use (no probe, or one that ended
// without a sign: a fresh check decides then).
func (v *vm) probeResult(ctx context.Context, id string, timeout time.Duration) (guestalive.Result, bool, error) {
	v.probeMu.Lock()
	p := v.probe
	v.probeMu.Unlock()
	if id == "" || p == nil || p.id != id {
		return guestalive.Result{}, false, nil
	}
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return guestalive.Result{}, false, ctx.Err()
	case <-t.C:
		return guestalive.Result{Method: p.method(v), Detail: fmt.Sprintf("no sign of life within %v of the request (probing since the resume)", timeout)}, true, nil
	case <-p.done:
		return p.res, p.res.Alive, nil
	}
}

// method is what a probe of v watches.
func (p *aliveProbe) method(v *vm) string {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.spec.GetGuestAgent() {
		return guestalive.MethodPing
	}
	return guestalive.MethodVCPU + "+" + guestalive.MethodNICTx
}

// aliveConfig is the probes of a check of v's guest; stop releases them.
func (v *vm) aliveConfig(proc QEMUProcess, sp *ferryv1.VMSpec) (guestalive.Config, func()) {
	var cfg guestalive.Config
	if sp.GetGuestAgent() {
		cfg.Ping = func(ctx context.Context) error {
			v.qgaMu.Lock()
			defer v.qgaMu.Unlock()
			return guestagent.SyncPing(ctx, v.paths.GuestAgentSocket)
		}
		return cfg, func() {}
	}
	pid := proc.PID()
	var taps []string
	for i := range sp.GetNics() {
		taps = append(taps, netdev.TapName(v.name, i))
	}
	var frames *guestalive.FrameWatch
	stop := func() {}
	if len(taps) > 0 {
		var err error
		if frames, err = guestalive.WatchGuestFrames(taps); err != nil {
			v.a.log.Warn("guest alive check: watching the NIC failed; vCPU progress only", "vm", v.name, "err", err)
		} else {
			stop = frames.Close
		}
	}
	cfg.Sample = func() (guestalive.Sample, error) {
		ticks, _, err := guestalive.VCPUTicks("/proc", pid)
		if err != nil {
			return guestalive.Sample{}, err
		}
		s := guestalive.Sample{CPUTicks: ticks}
		if frames != nil {
			s.TxPackets = frames.Count()
		}
		return s, nil
	}
	return cfg, stop
}

// resumedAtLocked is when the VM's QEMU resumed as the destination of
// migration id (zero if unknown, e.g. no such arrival). Holds v.mu.
func (v *vm) resumedAtLocked(id string) time.Time {
	if id == "" {
		return time.Time{}
	}
	in := v.in
	if in == nil && v.arrived == id {
		in = v.arrivedIn
	}
	if in == nil || in.id != id {
		return time.Time{}
	}
	in.mu.Lock()
	defer in.mu.Unlock()
	return in.resumedAt
}
