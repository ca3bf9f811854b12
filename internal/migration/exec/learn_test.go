package exec

import (
	"testing"
	"time"

	agentv1 "github.com/ferryvm/ferry/gen/ferry/agent/v1"
	ferryv1 "github.com/ferryvm/ferry/gen/ferry/v1"
	"github.com/ferryvm/ferry/internal/migration/core"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// completedPrecopy is a completed pre-copy of sent bytes whose live phase
// took live and the whole migration total, planned on a link of linkMibps
// (probed at probeMibps).
func completedPrecopy(m *ferryv1.Migration, live, total time.Duration, sent int64, linkMibps, probeMibps float64) *reporter {
	if m.Strategy == "" {
		m.Strategy = "precopy"
	}
	m.Plan = &ferryv1.Plan{Inputs: &ferryv1.PlanInputs{BandwidthMibps: linkMibps, LinkProbeMibps: probeMibps, DeviceStateBytes: 3 << 19}}
	r := newReporter(m, nil)
	r.Outgoing(core.ActStartOutgoing, &agentv1.OutgoingStatus{Status: "active", TotalBytes: 1 << 30})
	r.transfer = time.Now().Add(-live)
	r.Outgoing(core.ActQueryOutgoing, &agentv1.OutgoingStatus{Status: "pre-switchover", TotalBytes: 1 << 30, TransferredBytes: sent, PreSwitchoverAt: timestamppb.Now()})
	m.Status, m.TotalMs = "completed", total.Milliseconds()
	return r
}

// A short pre-copy on an unshaped link (the idle bench: 116 MiB in 1.8 s,
// the link probed at 1203 MiB/s) teaches the stream's rate, not the
// link's: its live phase is under minLearnPhase.
func TestLearnedShortUnshapedPrecopyTeachesTheStream(t *testing.T) {
	r := completedPrecopy(&ferryv1.Migration{Transport: "tls"}, 600*time.Millisecond, 1800*time.Millisecond, 116<<20, 1203, 1203)
	l := r.learned()
	if l.LinkMibps != 0 {
		t.Errorf("a 0.6 s live phase taught the link %.0f MiB/s", l.LinkMibps)
	}
	if l.Stream == nil || l.Transport != "tls" {
		t.Fatalf("learned %+v, want a TLS stream run", l)
	}
	if s := l.Stream; s.Total != 1800*time.Millisecond || s.Bytes != 116<<20+3<<19 || s.Raises != 0 || s.MirrorTime != 0 {
		t.Errorf("stream run %+v, want 1.8 s, 117.5 MiB, no raises", *s)
	}
	if l.Empty() {
		t.Error("Empty for a stream run")
	}
}

// The link's figure in the plan can be capped by past migrations: the raw
// probe says what the link carries. A run the stream limited teaches the
// stream, and not the link: its rate as the link's capped the next plans
// at one stream's rate (the big bench: 127 MiB/s of a link probed at 1465
// MiB/s, and Tune chose compression for a slow link).
func TestLearnedJudgesTheLinkByItsProbeToo(t *testing.T) {
	r := completedPrecopy(&ferryv1.Migration{}, 8500*time.Millisecond, 8780*time.Millisecond, 1200<<20, 45, 1203)
	l := r.learned()
	if l.Stream == nil || l.Transport != "tls" {
		t.Fatalf("big's run under a 45 MiB/s plan figure, 1203 MiB/s probe: learned %+v, want a stream run", l)
	}
	if l.LinkMibps != 0 {
		t.Errorf("a run its stream limited (141 MiB/s of 1203) taught the link %.0f MiB/s", l.LinkMibps)
	}
}

// A run that beat its planned stream rate near the link's teaches both:
// the link may have been its limit.
func TestLearnedNearTheLinkTeachesBoth(t *testing.T) {
	m := &ferryv1.Migration{}
	r := completedPrecopy(m, 4*time.Second, 4300*time.Millisecond, 1000<<20, 250, 250)
	m.Plan.Inputs.StreamMibps = 200
	l := r.learned()
	if l.Stream == nil || l.LinkMibps < 200 {
		t.Errorf("1000 MiB in a 4 s live phase on a 250 MiB/s link, 200 planned: learned %+v, want the stream and the link", l)
	}
}

// A pre-copy that the link, a cap, a retry, post-copy, throttling or more
// than one stream may have limited teaches no stream rate.
func TestLearnedNoStreamWhenSomethingElseLimitedIt(t *testing.T) {
	const live, total, sent = 600 * time.Millisecond, 1800 * time.Millisecond, int64(116 << 20)
	for _, tc := range []struct {
		name string
		m    *ferryv1.Migration
		link float64
		edit func(m *ferryv1.Migration)
	}{
		{"the link was the limit", &ferryv1.Migration{}, 180, nil},
		{"capped by --bandwidth", &ferryv1.Migration{Options: &ferryv1.MigrationOptions{BandwidthMibps: 500}}, 1203, nil},
		{"a per-host bandwidth share", &ferryv1.Migration{BandwidthShareBytes: 500 << 20}, 1203, nil},
		{"retried", &ferryv1.Migration{Retries: []*ferryv1.MigrationRetry{{Attempt: 1}}}, 1203, nil},
		{"post-copy", &ferryv1.Migration{Strategy: "postcopy"}, 1203, nil},
		{"multifd", &ferryv1.Migration{Options: &ferryv1.MigrationOptions{MultifdChannels: 4}}, 1203, nil},
		{"multifd by the tuning", &ferryv1.Migration{}, 1203, func(m *ferryv1.Migration) { m.Plan.Tuning = &ferryv1.PlanTuning{MultifdChannels: 2} }},
		{"throttled", &ferryv1.Migration{Strategy: "converge"}, 1203, func(m *ferryv1.Migration) {
			m.ThrottlePercent = 30
			m.Decisions = []*ferryv1.ControllerDecision{{Action: "throttle"}}
		}},
		{"not completed", &ferryv1.Migration{}, 1203, func(m *ferryv1.Migration) { m.Status = "failed" }},
		{"explained by the fixed parts", &ferryv1.Migration{}, 1203, func(m *ferryv1.Migration) { m.TotalMs = 250 }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := completedPrecopy(tc.m, live, total, sent, tc.link, tc.link)
			if tc.edit != nil {
				tc.edit(tc.m)
			}
			if l := r.learned(); l.Stream != nil || l.MirrorTime != 0 {
				t.Errorf("learned %+v, want no stream or mirror rate", l)
			}
		})
	}
}

// The controller's downtime raises are in the model (about a second
// each): the run says how many there were.
func TestLearnedStreamCountsTheDowntimeRaises(t *testing.T) {
	m := &ferryv1.Migration{Decisions: []*ferryv1.ControllerDecision{{Action: "raise-downtime"}, {Action: "raise-downtime"}}}
	r := completedPrecopy(m, 2600*time.Millisecond, 3800*time.Millisecond, 116<<20, 1203, 1203)
	if l := r.learned(); l.Stream == nil || l.Stream.Raises != 2 {
		t.Errorf("learned %+v, want a stream run with 2 raises", l)
	}
}

// A migration with local disks teaches the mirrors' rate (the plan's disk
// data over the time until the last mirror was ready), not the stream's.
func TestLearnedMirrorOfLocalDisks(t *testing.T) {
	m := &ferryv1.Migration{Transport: "plain", Disks: []*ferryv1.MigrationDisk{{Name: "data", MirrorMs: 6800}, {Name: "logs", MirrorMs: 900}}}
	r := completedPrecopy(m, 7400*time.Millisecond, 8800*time.Millisecond, 116<<20, 1203, 1203)
	m.Plan.Inputs.DiskBytes = 1 << 30
	m.DiskBytesTransferred = 1100 << 20
	l := r.learned()
	if l.Stream != nil || l.DiskBytes != 1<<30 || l.MirrorTime != 6800*time.Millisecond || l.Transport != "plain" {
		t.Errorf("learned %+v, want 1 GiB of plaintext mirrors in 6.8 s and no stream run", l)
	}
	m.Disks[1].MirrorMs = 0 // a mirror never ready
	if l := r.learned(); l.MirrorTime != 0 {
		t.Errorf("a mirror never ready: learned %+v", l)
	}
}

// A stream that did better than its plan's stream figure teaches its rate
// even when the link may have been the limit (the big bench planned with a
// small migration's 75 MiB/s and a stale 45 MiB/s link figure, and its
// stream sent 140 MiB/s): what one stream did it can do.
func TestLearnedStreamThatBeatItsPlan(t *testing.T) {
	m := &ferryv1.Migration{}
	r := completedPrecopy(m, 8500*time.Millisecond, 8780*time.Millisecond, 1200<<20, 150, 150)
	if l := r.learned(); l.Stream != nil {
		t.Fatalf("a link-limited run without a planned stream figure taught %+v", *l.Stream)
	}
	m.Plan.Inputs.StreamMibps = 75
	if l := r.learned(); l.Stream == nil {
		t.Errorf("a stream at 140 MiB/s planned at 75 taught nothing")
	}
	m.Plan.Inputs.StreamMibps = 240
	if l := r.learned(); l.Stream != nil {
		t.Errorf("a link-limited stream slower than planned taught %+v", *l.Stream)
	}
}

// A mirror teaches its rate also when the link may have been its limit:
// the disk bench's mirror reached 119 MiB/s where the contended link was
// probed at 157 MiB/s, and the rule "under 0.7 of the link" learned
// nothing, leaving a 362 MiB/s constant that predicted −49 %.
func TestLearnedMirrorAtTheLinksRate(t *testing.T) {
	m := &ferryv1.Migration{Transport: "tls", Disks: []*ferryv1.MigrationDisk{{Name: "data", MirrorMs: 8620}}}
	r := completedPrecopy(m, 10000*time.Millisecond, 10740*time.Millisecond, 45<<20, 105, 157)
	m.Plan.Inputs.DiskBytes = 1026 << 20
	if l := r.learned(); l.DiskBytes != 1026<<20 || l.MirrorTime != 8620*time.Millisecond {
		t.Errorf("a mirror at 119 MiB/s on a link probed at 157 MiB/s: learned %+v, want its 1026 MiB in 8.62 s", l)
	}
	// RAM sends nothing while the mirrors run: its progress counts a
	// stall, which must not hide the mirrors' rate.
	r.stalled = 8 * time.Second
	if l := r.learned(); l.MirrorTime != 8620*time.Millisecond {
		t.Errorf("a mirror whose RAM waited 8 s for it: learned %+v, want its mirror time", l)
	}
	m.Options = &ferryv1.MigrationOptions{BandwidthMibps: 100}
	if l := r.learned(); l.MirrorTime != 0 {
		t.Errorf("a mirror under --bandwidth taught %+v", l)
	}
}

// A stream run counts the bytes its plan counted when they exceed what
// QEMU sent (the idle bench: 154 MB of non-zero RAM planned, 122 MB
// sent), so the rate it teaches predicts that run again from the next
// plan's figure; a run that sent more than planned keeps its own.
func TestLearnedStreamCountsThePlannedBytes(t *testing.T) {
	m := &ferryv1.Migration{Transport: "tls"}
	r := completedPrecopy(m, 600*time.Millisecond, 1470*time.Millisecond, 116<<20, 1203, 1203)
	m.Predicted = &ferryv1.StrategyPrediction{Strategy: "precopy", Bytes: 155516928}
	if l := r.learned(); l.Stream == nil || l.Stream.Bytes != 155516928 {
		t.Fatalf("learned %+v, want the planned 155516928 bytes", l.Stream)
	}
	m.Predicted.Bytes = 50 << 20
	if l := r.learned(); l.Stream == nil || l.Stream.Bytes != 116<<20+3<<19 {
		t.Fatalf("learned %+v, want the bytes sent (more than planned)", l.Stream)
	}
}

// A completed migration teaches how long its link carried nothing: the
// pre-copy's stalls and the post-copy's pauses; one with local disks, or
// a cold one, teaches nothing of it.
func TestLearnedStalls(t *testing.T) {
	r := completedPrecopy(&ferryv1.Migration{}, 12*time.Second, 13*time.Second, 600<<20, 44, 45)
	r.stalled = 6 * time.Second
	if l := r.learned(); !l.StallKnown || l.Stalled != 6*time.Second {
		t.Errorf("pre-copy with 6 s of stalls: learned %+v", l)
	}
	r = completedPrecopy(&ferryv1.Migration{}, 12*time.Second, 13*time.Second, 600<<20, 44, 45)
	if l := r.learned(); !l.StallKnown || l.Stalled != 0 || l.Empty() {
		t.Errorf("pre-copy without stalls: learned %+v, want a known 0 s", l)
	}
	r = completedPrecopy(&ferryv1.Migration{Strategy: "postcopy", PostcopyPausedMs: 4100}, 12*time.Second, 13*time.Second, 600<<20, 44, 45)
	if l := r.learned(); !l.StallKnown || l.Stalled != 4100*time.Millisecond {
		t.Errorf("post-copy paused 4.1 s: learned %+v", l)
	}
	r = completedPrecopy(&ferryv1.Migration{DiskBytesTotal: 1 << 30}, 12*time.Second, 13*time.Second, 600<<20, 44, 45)
	r.stalled = 8 * time.Second
	if l := r.learned(); l.StallKnown {
		t.Errorf("a migration with local disks taught a stall: %+v", l)
	}
	r = completedPrecopy(&ferryv1.Migration{Strategy: "cold"}, 12*time.Second, 13*time.Second, 600<<20, 44, 45)
	if l := r.learned(); l.StallKnown {
		t.Errorf("a cold migration taught a stall: %+v", l)
	}
	r = completedPrecopy(&ferryv1.Migration{}, 12*time.Second, 13*time.Second, 600<<20, 44, 45)
	r.m.Status = "failed"
	if l := r.learned(); l.StallKnown {
		t.Errorf("a failed migration taught a stall: %+v", l)
	}
}
