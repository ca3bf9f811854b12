package agent

import (
	"context"
	"fmt"
	"time"

	"connectrpc.com/connect"
	agentv1 "github.com/ferryvm/ferry/gen/ferry/agent/v1"
	"github.com/ferryvm/ferry/internal/guestagent"
	"github.com/ferryvm/ferry/internal/guestalive"
	"github.com/ferryvm/ferry/internal/netdev"
)

// Bounds of CheckGuestAlive's timeout_ms.
const (
	defaultAliveTimeout = 5 * time.Second
	maxAliveTimeout     = 10 * time.Minute
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

// checkGuestAlive waits for a sign of life from VM req.Name's guest (see
// package guestalive): guest-ping over its guest agent channel when its
// spec has one, else vCPU and NIC progress.
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
	cfg := guestalive.Config{Since: since, Timeout: timeout}
	if sp.GetGuestAgent() {
		cfg.Ping = func(ctx context.Context) error {
			v.qgaMu.Lock()
			defer v.qgaMu.Unlock()
			return guestagent.SyncPing(ctx, v.paths.GuestAgentSocket)
		}
	} else {
		pid := proc.PID()
		var taps []string
		for i := range sp.GetNics() {
			taps = append(taps, netdev.TapName(v.name, i))
		}
		var frames *guestalive.FrameWatch
		if len(taps) > 0 {
			if frames, err = guestalive.WatchGuestFrames(taps); err != nil {
				a.log.Warn("guest alive check: watching the NIC failed; vCPU progress only", "vm", v.name, "err", err)
			} else {
				defer frames.Close()
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
	}
	res := guestalive.Check(ctx, cfg)
	if ctx.Err() != nil && !res.Alive {
		return nil, fmt.Errorf("check guest alive of VM %s: %w", v.name, ctx.Err())
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
