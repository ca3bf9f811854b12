package server

import (
	"context"
	"errors"
	"fmt"
	agentv1 "github.com/ferryvm/ferry/gen/ferry/agent/v1"
	"strings"
	"time"

	"connectrpc.com/connect"
	ferryv1 "github.com/ferryvm/ferry/gen/ferry/v1"
	"github.com/ferryvm/ferry/internal/planner"
	"github.com/ferryvm/ferry/internal/telemetry"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// Auto-converge steps Ferry asks QEMU for (and the planner models).
const (
	throttleInitial   = 30
	throttleIncrement = 20
)

// The pause's fixed parts the planner predicts with, from the pause phases
// of the bench's Ferry runs on QEMU 10 with the owner switch prepared
// before the pause (bench/results, December 2026): the device state took
// 28–31 ms at 45 MiB/s and 5–10 ms unshaped (≈ 1.5 MiB), stop plus
// switchover 5–16 ms. The planner's defaults (1 MiB, 20 ms) predate both.
const (
	planDeviceStateBytes  = 3 << 19 // 1.5 MiB
	planSwitchoverSeconds = 0.008
)

// How old telemetry may be for a plan to use it without measuring.
const (
	// planDirtyMaxAge is two dirty-rate sampling periods: one missed
	// sample still plans from telemetry.
	planDirtyMaxAge = 2 * telemetry.DefaultDirtyEvery
	// planRAMMaxAge: non-zero RAM changes slowly.
	planRAMMaxAge = 3 * telemetry.DefaultRAMEvery
)

// measurePlanInputs gathers what a plan needs: the VM's dirty rate and
// non-zero RAM from the source agent's background telemetry (measured now
// only when stale), the link from the server's link book (probed now
// only when the pair has no figure), and one stream's and one mirror's
// rate from the rates the pair's migrations showed (rates.go). The two run in parallel; the inputs
// say where each figure came from and how old it is.
func (s *Server) measurePlanInputs(ctx context.Context, vm *ferryv1.VM, src, dst *ferryv1.Host, opt *ferryv1.MigrationOptions) (*ferryv1.PlanInputs, error) {
	sa := s.agents.get(src.Address)
	mctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()

	type linkResult struct {
		fig    telemetry.Figure
		inline bool
		err    error
	}
	linkc := make(chan linkResult, 1)
	go func() {
		if f, ok := s.bw.figure(src.Name, dst.Name); ok {
			linkc <- linkResult{fig: f}
			return
		}
		pr, err := s.probeLink(mctx, src, dst, telemetry.InlineProbe)
		if err != nil {
			linkc <- linkResult{err: err}
			return
		}
		s.bw.observeProbe(src.Name, dst.Name, pr, true)
		f, ok := s.bw.figure(src.Name, dst.Name)
		if !ok {
			linkc <- linkResult{err: fmt.Errorf("probe the link %s → %s: no usable rate (%.1f MiB/s)", src.Name, dst.Name, pr.mibps)}
			return
		}
		linkc <- linkResult{fig: f, inline: true}
	}()

	meas, err := sa.mig.Measure(mctx, connect.NewRequest(&agentv1.MeasureRequest{
		Name: vm.Spec.Name, Seconds: 1,
		MaxAgeMs: planDirtyMaxAge.Milliseconds(), MaxRamAgeMs: planRAMMaxAge.Milliseconds(),
	}))
	link := <-linkc
	if err != nil {
		return nil, fmt.Errorf("measure VM %s on %s: %w", vm.Spec.Name, src.Name, err)
	}
	if link.err != nil {
		return nil, link.err
	}
	in := planInputsFrom(meas.Msg, link.fig, link.inline, src.Name, opt, time.Now())
	s.planRates(in, src.Name, dst.Name, opt)
	c := src.GetCapacity()
	in.SourceSpareCpus = max(c.GetCpus()-c.GetAllocatedVcpus(), 0)
	return in, nil
}

// planInputsFrom turns the agent's answer and the link figure into plan
// inputs with their sources and ages.
func planInputsFrom(m *agentv1.MeasureResponse, fig telemetry.Figure, linkInline bool, src string, opt *ferryv1.MigrationOptions, now time.Time) *ferryv1.PlanInputs {
	// An agent without telemetry (older than this server) measures every
	// time and sets no sample times.
	dirtyFresh := m.DirtyFresh || m.DirtySampledAt == nil
	ramFresh := m.NonZeroFresh || (m.NonZeroBytes > 0 && m.NonZeroSampledAt == nil)
	if m.DirtySampledAt == nil && m.StaleReason == "" {
		m.StaleReason = "dirty rate: the agent keeps no telemetry; non-zero RAM: the agent keeps no telemetry"
	}
	in := &ferryv1.PlanInputs{
		MemoryBytes:      m.MemoryBytes,
		NonZeroBytes:     min(m.RssBytes, m.MemoryBytes),
		NonZeroSource:    "QEMU's RSS (the RAM count failed)",
		DirtyRateMibps:   m.DirtyRateMibps,
		DeviceStateBytes: planDeviceStateBytes,
		MaxDowntimeMs:    opt.MaxDowntimeMs,
		MeasuredInline:   dirtyFresh || ramFresh || linkInline,
	}
	ageOf := func(ts *timestamppb.Timestamp) int64 {
		if ts == nil {
			return 0
		}
		return max(now.Sub(ts.AsTime()).Milliseconds(), 0)
	}
	ms := func(v int64) time.Duration { return time.Duration(v) * time.Millisecond }
	in.DirtyRateAgeMs = ageOf(m.DirtySampledAt)
	if dirtyFresh {
		in.DirtyRateSource = fmt.Sprintf("measured for this plan (1 s calc-dirty-rate on %s): %s", src, staleWhy(m.StaleReason, "dirty rate"))
	} else {
		in.DirtyRateSource = fmt.Sprintf("telemetry of %s: %d sample(s), latest %.1f, average %.1f, peak %.1f MiB/s, %s old",
			src, m.Samples, m.DirtyRateLatestMibps, m.DirtyRateEwmaMibps, m.DirtyRatePeakMibps, ms(in.DirtyRateAgeMs))
	}
	if m.NonZeroBytes > 0 {
		in.NonZeroBytes = m.NonZeroBytes
		in.NonZeroAgeMs = ageOf(m.NonZeroSampledAt)
		in.NonZeroSource = fmt.Sprintf("telemetry of %s (RAM count %s old)", src, ms(in.NonZeroAgeMs))
		if g := m.NonZeroRssGrowthBytes; g > 0 {
			in.NonZeroSource = fmt.Sprintf("telemetry of %s (RAM count %s old, plus %.0f MiB QEMU's RSS grew since)", src, ms(in.NonZeroAgeMs), float64(g)/(1<<20))
		}
		if ramFresh {
			in.NonZeroSource = fmt.Sprintf("counted for this plan on %s: %s", src, staleWhy(m.StaleReason, "non-zero RAM"))
		}
	}
	in.WssBytes = min(in.MemoryBytes, int64(in.DirtyRateMibps*(1<<20)))
	in.BandwidthMibps, in.BandwidthSource = fig.BytesPerSec/(1<<20), fig.Source
	in.BandwidthAgeMs = fig.Age.Milliseconds()
	in.RttMs = float64(fig.RTT.Microseconds()) / 1000
	in.LinkProbeMibps = fig.ProbeBytesPerSec / (1 << 20)
	in.LinkStallMs, in.LinkStallSource = fig.Stall.Milliseconds(), fig.StallSource
	in.CompressRatio = m.CompressRatio
	if linkInline {
		in.BandwidthSource = "measured for this plan (no recent figure for the pair): " + in.BandwidthSource
	}
	if opt.BandwidthMibps > 0 && float64(opt.BandwidthMibps) < in.BandwidthMibps {
		in.BandwidthMibps = float64(opt.BandwidthMibps)
		in.BandwidthSource += fmt.Sprintf(", capped by --bandwidth %d", opt.BandwidthMibps)
	}
	return in
}

// staleWhy picks the part of the agent's stale reason about figure.
func staleWhy(reason, figure string) string {
	for _, part := range strings.Split(reason, "; ") {
		if r, ok := strings.CutPrefix(part, figure+": "); ok {
			return r
		}
	}
	return reason
}

// plannerInputs converts measured inputs and the options' policy.
func plannerInputs(in *ferryv1.PlanInputs, opt *ferryv1.MigrationOptions, zstd bool) planner.Inputs {
	return planner.Inputs{
		MemoryBytes:          in.MemoryBytes,
		NonZeroBytes:         in.NonZeroBytes,
		DirtyRateBytesPerSec: in.DirtyRateMibps * (1 << 20),
		WSSBytes:             in.WssBytes,
		BandwidthBytesPerSec: in.BandwidthMibps * (1 << 20),
		RTT:                  time.Duration(in.RttMs * float64(time.Millisecond)),
		LinkStall:            time.Duration(in.LinkStallMs) * time.Millisecond,
		MultifdChannels:      int(opt.MultifdChannels),
		StreamBytesPerSec:    plannedStream(in, opt),
		MirrorBytesPerSec:    plannedMirror(in, opt),
		MaxChannels:          maxChannels(in, opt),
		Zstd:                 zstd,
		CompressBytesPerSec:  compressBudget(in),
		CompressRatio:        in.GetCompressRatio(),
		DeviceStateBytes:     in.DeviceStateBytes,
		SwitchoverSeconds:    planSwitchoverSeconds,
		MaxDowntime:          time.Duration(in.MaxDowntimeMs) * time.Millisecond,
		// Every live pre-copy the server runs (precopy, converge, hybrid)
		// has a controller stepping the downtime target (engine.go).
		StepDowntime: true,
		DiskBytes:    in.DiskBytes,
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

// maxChannels bounds the multifd channels the planner picks on its own: an
// encrypted migration gets one per spare CPU of the source (one when
// unknown), a plaintext one the planner's own bound.
func maxChannels(in *ferryv1.PlanInputs, opt *ferryv1.MigrationOptions) int {
	if opt.GetInsecureTransport() {
		return 0
	}
	return max(int(in.GetSourceSpareCpus()), 1)
}

// makePlan predicts every strategy and, for auto, chooses one; zstd says
// both hosts' QEMU have multifd zstd (a pre-copy may run through it).
func makePlan(in *ferryv1.PlanInputs, opt *ferryv1.MigrationOptions, zstd bool) (*ferryv1.Plan, error) {
	pin := plannerInputs(in, opt, zstd)
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

// WarnPredictedNoConvergence starts a migration's warning when the
// strategy asked for is one the planner predicts does not converge (its
// predicted times are then 0: none, not instant).
const WarnPredictedNoConvergence = "predicted not to converge"

// predictionWarning is the warning of an explicit strategy's prediction
// that does not converge ("" when it converges, or there is none).
func predictionWarning(p *ferryv1.StrategyPrediction) string {
	if p == nil || p.GetConverges() || p.GetStrategy() == "cold" {
		return ""
	}
	return fmt.Sprintf("%s: the planner predicted %s would not converge (%s); it ran as asked, so its predicted total and downtime are none",
		WarnPredictedNoConvergence, p.GetStrategy(), p.GetReason())
}

// noPlanError turns the planner's refusal into a precondition error that
// changes nothing.
func noPlanError(vm string, err error) error {
	if errors.Is(err, planner.ErrNoPlan) {
		return connect.NewError(connect.CodeFailedPrecondition, fmt.Errorf("no strategy can migrate VM %s within policy: %w", vm, err))
	}
	return connect.NewError(connect.CodeFailedPrecondition, fmt.Errorf("plan migration of VM %s: %w", vm, err))
}
