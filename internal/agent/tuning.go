package agent

import (
	"cmp"
	"fmt"
	"math"
	"slices"

	"connectrpc.com/connect"
	agentv1 "github.com/ferryvm/ferry/gen/ferry/agent/v1"
	"github.com/ferryvm/ferry/internal/qemucaps"
	"github.com/ferryvm/ferry/internal/qmp"
)

// The planner's tuning (planner.Tune, carried as agentv1.MigrationTuning)
// turned into QMP: the capabilities to enable and the parameters to set on
// one side. A zero tuning adds nothing, so QEMU 7.2 hosts and requests from
// an older server keep the commands they had.

// tuningNeeds lists the host features a tuning asks of one side.
func tuningNeeds(t *agentv1.MigrationTuning, source bool) []qemucaps.Feature {
	var need []qemucaps.Feature
	if t.GetPostcopyPreempt() {
		need = append(need, qemucaps.PostcopyPreempt)
	}
	if t.GetZeroPageDetection() != "" && source {
		need = append(need, qemucaps.MultifdZeroPageDetection)
	}
	if t.GetMultifdCompression() == string(qmp.MultiFDCompressionZstd) {
		need = append(need, qemucaps.MultifdZstd)
	}
	if t.GetAvailSwitchoverBandwidthBytes() > 0 && source {
		need = append(need, qemucaps.AvailSwitchoverBandwidth)
	}
	return need
}

// checkTuning refuses a tuning this host's QEMU cannot apply (from its
// capability probe; an unprobed host leaves the check to QEMU) and values
// QEMU does not know.
func (a *Agent) checkTuning(t *agentv1.MigrationTuning, source bool) error {
	if t == nil {
		return nil
	}
	switch qmp.ZeroPageDetection(t.ZeroPageDetection) {
	case "", qmp.ZeroPageDetectionNone, qmp.ZeroPageDetectionLegacy, qmp.ZeroPageDetectionMultifd:
	default:
		return invalidArg("tuning.zero_page_detection: want none, legacy or multifd, got %q", t.ZeroPageDetection)
	}
	switch qmp.MultiFDCompression(t.MultifdCompression) {
	case "", qmp.MultiFDCompressionNone, qmp.MultiFDCompressionZstd, qmp.MultiFDCompressionZlib:
	default:
		return invalidArg("tuning.multifd_compression: want none, zlib or zstd, got %q", t.MultifdCompression)
	}
	if t.MultifdZstdLevel < 0 || t.MultifdZstdLevel > 20 {
		return invalidArg("tuning.multifd_zstd_level: want 0..20, got %d", t.MultifdZstdLevel)
	}
	if t.AvailSwitchoverBandwidthBytes < 0 {
		return invalidArg("tuning.avail_switchover_bandwidth_bytes: must not be negative, got %d", t.AvailSwitchoverBandwidthBytes)
	}
	if s := t.PostcopyWarmupShare; s < 0 || s >= 1 || math.IsNaN(s) {
		return invalidArg("tuning.postcopy_warmup_share: want a share in [0, 1), got %g", s)
	}
	if ms := t.PostcopyWarmupMs; ms < 0 || ms > maxWarmupMs {
		return invalidArg("tuning.postcopy_warmup_ms: want 0..%d, got %d", maxWarmupMs, ms)
	}
	h := a.hostQEMU()
	if h == nil || h.ProbeError != "" {
		return nil
	}
	for _, f := range tuningNeeds(t, source) {
		if !slices.Contains(h.Features, string(f)) {
			return failedPrecondition("host %s's QEMU %s lacks %s, which the migration's tuning asks for (see `ferry host get %s`; the planner leaves it off for such hosts)",
				a.cfg.Name, h.Version, f, a.cfg.Name)
		}
	}
	return nil
}

// tuningCaps are the capabilities a tuning sets. A capability QEMU lacks
// must not even be named, so postcopy-preempt is named off only when the
// QEMU has it (hasPreempt): a source that was a preempt destination keeps
// the capability on otherwise.
func tuningCaps(t *agentv1.MigrationTuning, hasPreempt bool) []qmp.CapabilityState {
	if t.GetPostcopyPreempt() || hasPreempt {
		return []qmp.CapabilityState{{Capability: qmp.CapPostcopyPreempt, State: t.GetPostcopyPreempt()}}
	}
	return nil
}

// hasFeature says whether this host's probed QEMU has f (false when the
// probe failed or has not run).
func (a *Agent) hasFeature(f qemucaps.Feature) bool {
	h := a.hostQEMU()
	return h != nil && h.ProbeError == "" && slices.Contains(h.Features, string(f))
}

// tuneParams adds a tuning's parameters to p for one side: compression on
// both (they must agree), zero-page detection and the switchover bandwidth
// on the source only (the destination does not use them).
func tuneParams(t *agentv1.MigrationTuning, source bool, multifd bool, p *qmp.MigrationParameters) {
	if t == nil {
		return
	}
	if multifd {
		// Always named: a QEMU keeps the parameters of the migration it
		// received, so a source that was the zstd destination of the last
		// migration would compress again although this one asks for none,
		// and its fresh destination would refuse the stream ("multifd 0:
		// flags received 4 flags expected 0", seen in CI).
		c := cmp.Or(t.MultifdCompression, string(qmp.MultiFDCompressionNone))
		p.MultifdCompression = qmp.Ptr(qmp.MultiFDCompression(c))
		if c == string(qmp.MultiFDCompressionZstd) && t.MultifdZstdLevel > 0 {
			p.MultifdZstdLevel = qmp.Ptr(int64(t.MultifdZstdLevel))
		}
	}
	if !source {
		return
	}
	if z := t.ZeroPageDetection; z != "" {
		p.ZeroPageDetection = qmp.Ptr(qmp.ZeroPageDetection(z))
	}
	if b := t.AvailSwitchoverBandwidthBytes; b > 0 {
		p.AvailSwitchoverBandwidth = qmp.Ptr(b)
	}
}

// describeTuning is the tuning for log lines.
func describeTuning(t *agentv1.MigrationTuning) string {
	if t == nil {
		return "none"
	}
	return fmt.Sprintf("preempt=%v zero-page=%q compression=%q/%d avail-switchover=%d warmup=%dms/%g",
		t.PostcopyPreempt, t.ZeroPageDetection, t.MultifdCompression, t.MultifdZstdLevel, t.AvailSwitchoverBandwidthBytes,
		t.PostcopyWarmupMs, t.PostcopyWarmupShare)
}

// maxWarmupMs bounds a post-copy warm-up (tuning.postcopy_warmup_ms).
const maxWarmupMs = 60_000

func invalidArg(format string, args ...any) error {
	return connect.NewError(connect.CodeInvalidArgument, fmt.Errorf(format, args...))
}
