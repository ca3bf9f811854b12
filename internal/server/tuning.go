package server

import (
	"slices"
	"time"

	agentv1 "github.com/ferryvm/ferry/gen/ferry/agent/v1"
	ferryv1 "github.com/ferryvm/ferry/gen/ferry/v1"
	"github.com/ferryvm/ferry/internal/migration/exec"
	"github.com/ferryvm/ferry/internal/planner"
	"github.com/ferryvm/ferry/internal/qemucaps"
)

// hostFeatures reads a host record's QEMU features (its agent's capability
// probe). A host without a probe (an older agent, a failed probe) has none,
// so the planner leaves every optional feature off for it.
func hostFeatures(h *ferryv1.Host) planner.Features {
	fs := h.GetQemu().GetFeatures()
	has := func(f qemucaps.Feature) bool { return slices.Contains(fs, string(f)) }
	return planner.Features{
		PostcopyPreempt:          has(qemucaps.PostcopyPreempt),
		ZeroPageDetection:        has(qemucaps.MultifdZeroPageDetection),
		AvailSwitchoverBandwidth: has(qemucaps.AvailSwitchoverBandwidth),
		Zstd:                     has(qemucaps.MultifdZstd),
		// QEMU 10.0 refuses multifd with postcopy-ram ("Postcopy is not
		// yet compatible with multifd", measured on 10.0.2); no release
		// Ferry has been tested with combines them.
		MultifdPostcopy: false,
	}
}

// compressBudget is what zstd can compress per second on the source with
// the cores its VMs left free when the plan measured it (none free: no
// budget). Tune and the model take it from the plan's inputs alike.
func compressBudget(in *ferryv1.PlanInputs) float64 {
	return float64(in.GetSourceSpareCpus()) * planner.ZstdBytesPerSecPerCore
}

// bothZstd reports whether both hosts' QEMU compress multifd with zstd.
func bothZstd(src, dst *ferryv1.Host) bool {
	return hostFeatures(src).Zstd && hostFeatures(dst).Zstd
}

// tunePlan chooses the QEMU tuning of a migration with strategy from the
// plan's inputs and both hosts' records.
func tunePlan(strategy string, in *ferryv1.PlanInputs, opt *ferryv1.MigrationOptions, src, dst *ferryv1.Host) *ferryv1.PlanTuning {
	t := planner.Tune(planner.TuneInputs{
		Strategy:             strategy,
		BandwidthBytesPerSec: in.GetBandwidthMibps() * (1 << 20),
		NonZeroBytes:         in.GetNonZeroBytes(),
		DirtyRateBytesPerSec: in.GetDirtyRateMibps() * (1 << 20),
		RTT:                  time.Duration(in.GetRttMs() * float64(time.Millisecond)),
		LinkStall:            time.Duration(in.GetLinkStallMs()) * time.Millisecond,
		Src:                  hostFeatures(src),
		Dst:                  hostFeatures(dst),
		MultifdChannels:      int(opt.GetMultifdChannels()),
		StreamBytesPerSec:    plannedStream(in, opt),
		MaxChannels:          maxChannels(in, opt),
		CompressBytesPerSec:  compressBudget(in),
		// From the source agent's RAM count (a DEFLATE sample; 0 unknown).
		CompressRatio: in.GetCompressRatio(),
	})
	out := &ferryv1.PlanTuning{
		PostcopyPreempt:               t.PostcopyPreempt,
		MultifdChannels:               int32(t.MultifdChannels),
		ZeroPageDetection:             t.ZeroPageDetection,
		MultifdCompression:            t.Compression,
		MultifdZstdLevel:              int32(t.ZstdLevel),
		AvailSwitchoverBandwidthBytes: t.AvailSwitchoverBandwidth,
		PostcopyBackgroundShare:       t.PostcopyBackgroundShare,
		PostcopyAtFraction:            t.PostcopyAtFraction,
		PostcopyAtBytes:               t.PostcopyAtBytes,
		PostcopyWarmupMs:              t.PostcopyWarmup.Milliseconds(),
		PostcopyWarmupShare:           t.PostcopyWarmupShare,
	}
	for _, c := range t.Choices {
		out.Choices = append(out.Choices, &ferryv1.TuningChoice{Name: c.Name, Value: c.Value, Reason: c.Reason})
	}
	return out
}

// tunedStrategy is the strategy a migration runs: the requested one, or
// the plan's choice for auto; "" when there is none to tune (auto without
// a choice, cold).
func tunedStrategy(requested, choice string) string {
	st := requested
	if st == "auto" {
		st = choice
	}
	if st == "cold" || st == "auto" {
		return ""
	}
	return st
}

// applyTuning puts the plan's tuning into the migration's knobs, when it
// was made for the strategy that runs (a plan has one tuning: a retry as
// another strategy is re-tuned first, replan.go). The operator's --multifd, already in
// the knobs, stays unless the tuning turned it down for post-copy.
func applyTuning(k *exec.Knobs, t *ferryv1.PlanTuning, strategy string) {
	if t == nil || strategy == "" {
		return
	}
	k.MultifdChannels = t.MultifdChannels
	k.Tuning = &agentv1.MigrationTuning{
		PostcopyPreempt:               t.PostcopyPreempt,
		ZeroPageDetection:             t.ZeroPageDetection,
		MultifdCompression:            t.MultifdCompression,
		MultifdZstdLevel:              t.MultifdZstdLevel,
		AvailSwitchoverBandwidthBytes: t.AvailSwitchoverBandwidthBytes,
		PostcopyWarmupMs:              t.PostcopyWarmupMs,
		PostcopyWarmupShare:           t.PostcopyWarmupShare,
	}
}

// postcopyAt is the engine's post-copy switch point for a migration
// running strategy under plan, as a fraction of RAM scanned and in RAM
// bytes sent (0, 0: after round 1).
func postcopyAt(plan *ferryv1.Plan, strategy string) (float64, int64) {
	if strategy != "postcopy" {
		return 0, 0
	}
	return plan.GetTuning().GetPostcopyAtFraction(), plan.GetTuning().GetPostcopyAtBytes()
}
