package exec

import (
	"testing"
	"time"

	agentv1 "github.com/ferryvm/ferry/gen/ferry/agent/v1"
	ferryv1 "github.com/ferryvm/ferry/gen/ferry/v1"
	"github.com/ferryvm/ferry/internal/migration/core"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// A pre-copy teaches its live phase's rate only when that phase ran long
// enough to be more than setup and the final sync.
func TestLearnableRateOfAPrecopy(t *testing.T) {
	for _, tc := range []struct {
		phase time.Duration
		want  bool
	}{{4 * time.Second, true}, {400 * time.Millisecond, false}} {
		m := &ferryv1.Migration{Strategy: "precopy"}
		r := newReporter(m, nil)
		r.Outgoing(core.ActStartOutgoing, &agentv1.OutgoingStatus{TotalBytes: 1 << 30})
		r.transfer = time.Now().Add(-tc.phase)
		r.Outgoing(core.ActQueryOutgoing, &agentv1.OutgoingStatus{Status: "pre-switchover", TotalBytes: 1 << 30,
			TransferredBytes: int64(tc.phase.Seconds() * 45 * (1 << 20)), PreSwitchoverAt: timestamppb.Now()})
		m.Status = "completed"
		got := r.learnable()
		switch {
		case tc.want && (got < 40 || got > 46):
			t.Errorf("phase %s: learned %.1f MiB/s, want about 45", tc.phase, got)
		case !tc.want && got != 0:
			t.Errorf("phase %s: learned %.1f MiB/s from a migration that short, want nothing", tc.phase, got)
		}
	}
}

// A post-copy teaches the rate of its pre-copy phase: what the bytes sent
// until the switch took, not the whole transfer over that phase's time.
func TestLearnableRateOfAPostcopy(t *testing.T) {
	for _, tc := range []struct {
		name    string
		phase   time.Duration
		want    bool
		options *ferryv1.MigrationOptions
	}{
		{"long pre-copy phase", 4 * time.Second, true, nil},
		{"post-copy right away", 500 * time.Millisecond, false, nil},
		{"capped by --bandwidth", 4 * time.Second, false, &ferryv1.MigrationOptions{BandwidthMibps: 40}},
		{"paused by a broken link", 4 * time.Second, false, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := &ferryv1.Migration{Strategy: "postcopy", Options: tc.options, StartedAt: timestamppb.New(time.Now().Add(-tc.phase))}
			r := newReporter(m, nil)
			r.Outgoing(core.ActQueryOutgoing, &agentv1.OutgoingStatus{TotalBytes: 1 << 30, TransferredBytes: int64(tc.phase.Seconds() * 45 * (1 << 20))})
			r.Outgoing(core.ActStartPostcopy, &agentv1.OutgoingStatus{TotalBytes: 1 << 30, TransferredBytes: 600 << 20})
			m.Status = "completed"
			if tc.name == "paused by a broken link" {
				m.PostcopyPausedMs = 2000
			}
			got := r.learnable()
			if !tc.want {
				if got != 0 {
					t.Errorf("learned %.1f MiB/s, want nothing", got)
				}
				return
			}
			if got < 40 || got > 46 {
				t.Errorf("learned %.1f MiB/s, want about 45 (the pre-copy phase's rate)", got)
			}
		})
	}
}
