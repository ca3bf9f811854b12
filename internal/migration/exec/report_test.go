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

// A pre-copy with local disks teaches the link's rate over both: the
// disks' mirrors ran first, over the same link, in the same time.
func TestLearnableRateWithDisks(t *testing.T) {
	m := &ferryv1.Migration{Strategy: "precopy"}
	r := newReporter(m, nil)
	r.Outgoing(core.ActStartOutgoing, &agentv1.OutgoingStatus{Status: "mirroring"})
	r.transfer = time.Now().Add(-4 * time.Second)
	// 3 s of mirroring 135 MiB, then 1 s of RAM: 45 MiB over 4 s is not the link's rate.
	r.Outgoing(core.ActQueryOutgoing, &agentv1.OutgoingStatus{Status: "mirroring", DiskBytesTotal: 135 << 20, DiskBytesTransferred: 135 << 20,
		Disks: []*agentv1.DiskMirror{{Name: "data", State: "ready", DataBytes: 135 << 20}}})
	r.Outgoing(core.ActQueryOutgoing, &agentv1.OutgoingStatus{Status: "pre-switchover", TotalBytes: 1 << 30, TransferredBytes: 45 << 20,
		DiskBytesTransferred: 135 << 20, PreSwitchoverAt: timestamppb.Now()})
	m.Status = "completed"
	if got := r.learnable(); got < 42 || got > 46 {
		t.Errorf("learned %.1f MiB/s, want about 45 (180 MiB of disk and RAM over 4 s)", got)
	}
}

// A pre-copy whose link was down for a while teaches the rate of the time
// the link carried data: the flaky bench's two 2 s outages otherwise
// taught 31, 16, then 10.5 MiB/s of a link that sent 35-37 MiB/s.
func TestLearnableRateLeavesOutOutages(t *testing.T) {
	m := &ferryv1.Migration{Strategy: "precopy"}
	r := newReporter(m, nil)
	start := time.Now()
	r.transfer = start
	at := func(el time.Duration, bytes int64, status string, sw bool) {
		r.transfer = time.Now().Add(-el)
		st := &agentv1.OutgoingStatus{Status: status, TotalBytes: 1 << 30, TransferredBytes: bytes}
		if sw {
			st.PreSwitchoverAt = timestamppb.Now()
		}
		r.Outgoing(core.ActQueryOutgoing, st)
	}
	// 45 MiB/s for 2 s, nothing for 3 s (the link down), 45 MiB/s for 2 s.
	for i := 1; i <= 10; i++ {
		at(time.Duration(i)*200*time.Millisecond, int64(i)*9<<20, "active", false)
	}
	at(3*time.Second, 90<<20, "active", false)
	at(4800*time.Millisecond, 90<<20, "active", false)
	for i := 1; i <= 10; i++ {
		at(5*time.Second+time.Duration(i)*200*time.Millisecond, int64(90+i*9)<<20, "active", false)
	}
	at(7*time.Second, 180<<20, "pre-switchover", true)
	m.Status = "completed"
	if got := r.learnable(); got < 40 || got > 50 {
		t.Errorf("learned %.1f MiB/s, want about 45 (180 MiB over the 4 s the link was up)", got)
	}
	if m.BandwidthMibps > 30 {
		t.Errorf("the report's bandwidth %.1f MiB/s: want the whole transfer's, about 26", m.BandwidthMibps)
	}
}
