package server

import (
	"context"
	"errors"
	"fmt"
	agentv1 "github.com/ferryvm/ferry/gen/ferry/agent/v1"
	"sync"
	"time"

	"connectrpc.com/connect"
	ferryv1 "github.com/ferryvm/ferry/gen/ferry/v1"
	"github.com/ferryvm/ferry/internal/planner"
)

// Auto-converge steps Ferry asks QEMU for (and the planner models).
const (
	throttleInitial   = 30
	throttleIncrement = 20
)

// bandwidths learns the migration rate of each host pair from finished
// migrations (the planner's second bandwidth source next to the probe).
type bandwidths struct {
	mu  sync.Mutex
	est planner.BandwidthEstimator
}

func (b *bandwidths) observe(from, to string, mibps float64) {
	if mibps <= 0 {
		return
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	b.est.Observe(from, to, mibps*(1<<20))
}

func (b *bandwidths) estimate(from, to string) (float64, bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	v, ok := b.est.Estimate(from, to)
	return v / (1 << 20), ok
}

// measurePlanInputs samples the VM's dirty rate and RSS on the source and
// the link from source to destination, and blends the link figure with
// what past migrations on this pair achieved.
func (s *Server) measurePlanInputs(ctx context.Context, vm *ferryv1.VM, src, dst *ferryv1.Host, opt *ferryv1.MigrationOptions) (*ferryv1.PlanInputs, error) {
	sa, da := s.agents.get(src.Address), s.agents.get(dst.Address)
	mctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	meas, err := sa.mig.Measure(mctx, connect.NewRequest(&agentv1.MeasureRequest{Name: vm.Spec.Name, Seconds: 1}))
	if err != nil {
		return nil, fmt.Errorf("measure VM %s on %s: %w", vm.Spec.Name, src.Name, err)
	}
	in := &ferryv1.PlanInputs{
		MemoryBytes:      meas.Msg.MemoryBytes,
		NonZeroBytes:     min(meas.Msg.RssBytes, meas.Msg.MemoryBytes),
		DirtyRateMibps:   meas.Msg.DirtyRateMibps,
		DeviceStateBytes: 1 << 20,
		MaxDowntimeMs:    opt.MaxDowntimeMs,
	}
	if meas.Msg.NonZeroBytes > 0 {
		in.NonZeroBytes = meas.Msg.NonZeroBytes
	}
	in.WssBytes = min(in.MemoryBytes, int64(in.DirtyRateMibps*(1<<20)))
	lis, err := da.mig.ProbeListen(mctx, connect.NewRequest(&agentv1.ProbeListenRequest{}))
	if err != nil {
		return nil, fmt.Errorf("open a bandwidth probe on %s: %w", dst.Name, err)
	}
	probe, err := sa.mig.ProbeSend(mctx, connect.NewRequest(&agentv1.ProbeSendRequest{Address: lis.Msg.Address, DurationMs: 500}))
	if err != nil {
		return nil, fmt.Errorf("probe the link %s → %s: %w", src.Name, dst.Name, err)
	}
	in.BandwidthMibps, in.BandwidthSource = probe.Msg.Mibps, "measured (0.5 s TCP probe)"
	learned, ok := s.bw.estimate(src.Name, dst.Name)
	if !ok {
		learned, ok = s.bw.estimate("*", "*") // any pair: what QEMU reaches here at all
	}
	if ok {
		// QEMU rarely reaches raw TCP speed (a TCG guest's migration thread
		// is CPU-bound); past migrations on this pair say what it does reach.
		in.BandwidthMibps = min(in.BandwidthMibps, learned)
		in.BandwidthSource = fmt.Sprintf("learned from past migrations %s→%s (probe %.0f MiB/s)", src.Name, dst.Name, probe.Msg.Mibps)
	}
	if opt.BandwidthMibps > 0 && float64(opt.BandwidthMibps) < in.BandwidthMibps {
		in.BandwidthMibps = float64(opt.BandwidthMibps)
		in.BandwidthSource += fmt.Sprintf(", capped by --bandwidth %d", opt.BandwidthMibps)
	}
	return in, nil
}

// plannerInputs converts measured inputs and the options' policy.
func plannerInputs(in *ferryv1.PlanInputs, opt *ferryv1.MigrationOptions) planner.Inputs {
	return planner.Inputs{
		MemoryBytes:          in.MemoryBytes,
		NonZeroBytes:         in.NonZeroBytes,
		DirtyRateBytesPerSec: in.DirtyRateMibps * (1 << 20),
		WSSBytes:             in.WssBytes,
		BandwidthBytesPerSec: in.BandwidthMibps * (1 << 20),
		DeviceStateBytes:     in.DeviceStateBytes,
		MaxDowntime:          time.Duration(in.MaxDowntimeMs) * time.Millisecond,
		Policy: planner.Policy{
			AllowPrecopy:  true,
			AllowConverge: !opt.NoThrottle,
			AllowPostcopy: !opt.NoPostcopy,
			AllowCold:     false, // auto never stops a guest on its own
			// What StartOutgoing asks QEMU's auto-converge for.
			ThrottleInitial:   throttleInitial,
			ThrottleIncrement: throttleIncrement,
		},
	}
}

// makePlan predicts every strategy and, for auto, chooses one.
func makePlan(in *ferryv1.PlanInputs, opt *ferryv1.MigrationOptions) (*ferryv1.Plan, error) {
	pin := plannerInputs(in, opt)
	preds := planner.Predict(pin)
	plan := &ferryv1.Plan{Inputs: in}
	for _, p := range preds {
		plan.Predictions = append(plan.Predictions, predictionProto(p, allowed(p.Strategy, pin.Policy)))
	}
	dec, err := planner.Choose(pin, preds)
	if err != nil {
		plan.Reason = err.Error()
		return plan, err
	}
	plan.Choice, plan.Reason = dec.Strategy, dec.Reason
	return plan, nil
}

func allowed(strategy string, p planner.Policy) bool {
	switch strategy {
	case "precopy":
		return p.AllowPrecopy
	case "converge":
		return p.AllowConverge
	case "postcopy", "hybrid":
		return p.AllowPostcopy
	case "cold":
		return p.AllowCold
	}
	return false
}

func predictionProto(p planner.Prediction, ok bool) *ferryv1.StrategyPrediction {
	return &ferryv1.StrategyPrediction{
		Strategy: p.Strategy, Converges: p.Converges, TotalMs: p.Total.Milliseconds(), DowntimeMs: p.Downtime.Milliseconds(),
		Bytes: p.Bytes, Rounds: int32(p.Rounds), ThrottlePercent: int32(p.Throttle), Reason: p.Reason, Allowed: ok,
		DowntimeLimitMs: p.DowntimeLimit.Milliseconds(),
	}
}

// predictionFor returns the plan's prediction for strategy.
func predictionFor(plan *ferryv1.Plan, strategy string) *ferryv1.StrategyPrediction {
	for _, p := range plan.GetPredictions() {
		if p.Strategy == strategy {
			return p
		}
	}
	return nil
}

// noPlanError turns the planner's refusal into a precondition error that
// changes nothing.
func noPlanError(vm string, err error) error {
	if errors.Is(err, planner.ErrNoPlan) {
		return connect.NewError(connect.CodeFailedPrecondition, fmt.Errorf("no strategy can migrate VM %s within policy: %w", vm, err))
	}
	return connect.NewError(connect.CodeFailedPrecondition, fmt.Errorf("plan migration of VM %s: %w", vm, err))
}
