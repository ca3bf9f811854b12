package exec

import (
	"testing"
	"time"

	agentv1 "github.com/ferryvm/ferry/gen/ferry/agent/v1"
	ferryv1 "github.com/ferryvm/ferry/gen/ferry/v1"
	"github.com/ferryvm/ferry/internal/migration/core"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// TestPausePhasesWithAutostart: an armed destination (cont while it
// loads) resumes before QEMU announces its incoming migration completed
// (real QEMU 10: vm_start, then the completed event). No phase is
// negative, the resume is 0 and the parts add up to the pause, the device
// state ending at the resume; a destination resumed after it announced
// completed keeps its resume phase.
func TestPausePhasesWithAutostart(t *testing.T) {
	t0 := time.Now()
	ts := func(d time.Duration) *timestamppb.Timestamp { return timestamppb.New(t0.Add(d)) }
	ms := time.Millisecond
	for _, tc := range []struct {
		name              string
		loaded, resumed   time.Duration
		wantDev, wantResm int64
	}{
		{"resume before completed (autostart)", 1030 * ms, 1024 * ms, 18, 0},
		{"resume after completed", 1020 * ms, 1024 * ms, 14, 4},
	} {
		r := newReporter(&ferryv1.Migration{Strategy: "precopy", StartedAt: ts(0)}, nil)
		r.Outgoing(core.ActQueryOutgoing, &agentv1.OutgoingStatus{Status: "completed", TotalBytes: 1 << 28,
			StoppedAt: ts(1000 * ms), PreSwitchoverAt: ts(1001 * ms), ContinuedAt: ts(1006 * ms)})
		in := &agentv1.IncomingStatus{LoadedAt: ts(tc.loaded), ResumedAt: ts(tc.resumed)}
		r.Incoming(core.ActFinishIncoming, in)
		p := r.snapshot(false).GetDowntimePhases()
		sum := p.GetStopMs() + p.GetFinalRoundMs() + p.GetSwitchoverMs() + p.GetDeviceStateMs() + p.GetResumeMs()
		if p.GetTotalMs() != 24 || p.GetDeviceStateMs() != tc.wantDev || p.GetResumeMs() != tc.wantResm || sum != p.GetTotalMs() {
			t.Errorf("%s: phases %+v (parts sum to %d); want total 24, device state %d, resume %d, the parts adding up",
				tc.name, p, sum, tc.wantDev, tc.wantResm)
		}
	}
}
