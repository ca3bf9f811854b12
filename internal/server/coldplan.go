package server

import (
	"context"
	"fmt"
	"time"

	ferryv1 "github.com/ferryvm/ferry/gen/ferry/v1"
	"github.com/ferryvm/ferry/internal/planner"
	"github.com/ferryvm/ferry/internal/telemetry"
)

// coldPlan is the plan of a cold migration: planner.PredictCold from the
// local disks' allocated data and the link's figure (the link book's, a
// probe when the pair has none; not needed without local disks). A link
// that cannot be measured leaves the plan without a prediction, saying
// why: the migration itself does not need one.
func (s *Server) coldPlan(ctx context.Context, vm *ferryv1.VM, src, dst *ferryv1.Host, disks []*ferryv1.MigrationDisk, opt *ferryv1.MigrationOptions) *ferryv1.Plan {
	reason := "cold migration: the guest is stopped, moved and booted again"
	if len(disks) > 0 {
		reason = fmt.Sprintf("cold migration: the guest is stopped, its %d local disk(s) copied (allocated extents) and verified, then it is booted again", len(disks))
	}
	plan := &ferryv1.Plan{Choice: "cold", Reason: reason, Inputs: &ferryv1.PlanInputs{MaxDowntimeMs: opt.GetMaxDowntimeMs()}}
	in := planner.ColdInputs{Running: vm.GetState() == "running"}
	for _, d := range disks {
		in.DiskBytes += d.GetAllocatedBytes()
	}
	plan.Inputs.DiskBytes = in.DiskBytes
	if in.DiskBytes > 0 {
		fig, err := s.coldLinkFigure(ctx, src, dst)
		if err != nil {
			plan.Reason += fmt.Sprintf(" (no prediction: %v)", err)
			return plan
		}
		in.BandwidthBytesPerSec = fig.BytesPerSec
		plan.Inputs.BandwidthMibps, plan.Inputs.BandwidthSource = fig.BytesPerSec/(1<<20), fig.Source
		plan.Inputs.BandwidthAgeMs = fig.Age.Milliseconds()
		if bw := opt.GetBandwidthMibps(); bw > 0 && float64(bw<<20) < in.BandwidthBytesPerSec {
			in.BandwidthBytesPerSec = float64(bw << 20)
			plan.Inputs.BandwidthMibps = float64(bw)
			plan.Inputs.BandwidthSource += fmt.Sprintf(", capped by --bandwidth %d", bw)
		}
	}
	p, err := planner.PredictCold(in)
	if err != nil {
		plan.Reason += fmt.Sprintf(" (no prediction: %v)", err)
		return plan
	}
	plan.Predictions = []*ferryv1.StrategyPrediction{predictionProto(p, true)}
	return plan
}

// coldLinkFigure is the link book's figure for the pair, probed now when
// there is none (bounded like a live plan's measurement).
func (s *Server) coldLinkFigure(ctx context.Context, src, dst *ferryv1.Host) (telemetry.Figure, error) {
	if f, ok := s.bw.figure(src.Name, dst.Name); ok {
		return f, nil
	}
	pctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	pr, err := s.probeLink(pctx, src, dst, telemetry.InlineProbe)
	if err != nil {
		return telemetry.Figure{}, err
	}
	s.bw.observeProbe(src.Name, dst.Name, pr, true)
	f, ok := s.bw.figure(src.Name, dst.Name)
	if !ok {
		return telemetry.Figure{}, fmt.Errorf("probe the link %s → %s: no usable rate (%.1f MiB/s)", src.Name, dst.Name, pr.mibps)
	}
	f.Source = "measured for this plan (no recent figure for the pair): " + f.Source
	return f, nil
}
