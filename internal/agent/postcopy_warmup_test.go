package agent

import (
	"encoding/json"
	"testing"

	"connectrpc.com/connect"
	agentv1 "github.com/ferryvm/ferry/gen/ferry/agent/v1"
	"github.com/ferryvm/ferry/internal/qmp/qmptest"
)

// postcopyBandwidths lists the max-postcopy-bandwidth values the agent
// gave QEMU, in order.
func postcopyBandwidths(t *testing.T, q *qmptest.FakeQEMU) []int64 {
	t.Helper()
	var out []int64
	for _, c := range q.Server().Received() {
		if c.Execute != "migrate-set-parameters" {
			continue
		}
		var p struct {
			B *int64 `json:"max-postcopy-bandwidth"`
		}
		if err := json.Unmarshal(c.Arguments, &p); err != nil {
			t.Fatal(err)
		}
		if p.B != nil {
			out = append(out, *p.B)
		}
	}
	return out
}

// startWarmupPostcopy starts a post-copy with a warm-up of ms on the
// source and brings it to postcopy-active.
func startWarmupPostcopy(t *testing.T, ta *testAgent, ms int64) *qmptest.FakeQEMU {
	t.Helper()
	startVM(t, ta, "web")
	must[agentv1.OutgoingStatusResponse](t)(ta.mig.StartOutgoing(testCtx(t), connect.NewRequest(&agentv1.StartOutgoingRequest{DestHost: "h2", Name: "web", MigrationId: "m1", Uri: dstURI,
		Postcopy: true, MaxBandwidthBytes: 200 << 20, MaxPostcopyBandwidthBytes: 100 << 20,
		Tuning: &agentv1.MigrationTuning{PostcopyWarmupMs: ms, PostcopyWarmupShare: 0.3}})))
	q := ta.qemu("web")
	must[agentv1.OutgoingStatusResponse](t)(ta.mig.StartPostcopy(testCtx(t), step("web", "m1")))
	atPreSwitchover(t, ta, q, "web", "m1")
	continueOut(t, ta, "web", "m1")
	eventually(t, "post-copy", func() bool { return queryOut(t, ta, "web", "m1").PostcopyStartedAt != nil })
	return q
}

// From postcopy-active the background stream gets 30 % of its bandwidth
// for the warm-up, then all of it back.
func TestPostcopyWarmupLowersThenRestores(t *testing.T) {
	ta := newTestAgent(t)
	q := startWarmupPostcopy(t, ta, 200)
	low, full := int64(30<<20), int64(100<<20)
	eventually(t, "warm-up restored", func() bool {
		b := postcopyBandwidths(t, q)
		return len(b) >= 3 && b[len(b)-1] == full
	})
	b := postcopyBandwidths(t, q)
	if b[0] != full || b[1] != low || b[2] != full {
		t.Fatalf("max-postcopy-bandwidth set to %v, want [%d %d %d]: start, warm-up, restore", b, full, low, full)
	}
}

// An agent that dies during the warm-up leaves the restore in the
// record: the next one restores the bandwidth at once.
func TestPostcopyWarmupRestoredAfterRestart(t *testing.T) {
	ta := newTestAgent(t)
	q := startWarmupPostcopy(t, ta, 60_000)
	low, full := int64(30<<20), int64(100<<20)
	eventually(t, "warm-up on", func() bool {
		b := postcopyBandwidths(t, q)
		return len(b) >= 2 && b[len(b)-1] == low
	})
	ta.restart()
	eventually(t, "restored by the restarted agent", func() bool {
		b := postcopyBandwidths(t, q)
		return b[len(b)-1] == full
	})
}

// A warm-up share or length out of range is refused naming the field.
func TestPostcopyWarmupValidated(t *testing.T) {
	ta := newTestAgent(t)
	startVM(t, ta, "web")
	for _, tu := range []*agentv1.MigrationTuning{{PostcopyWarmupShare: 1}, {PostcopyWarmupShare: -0.1}, {PostcopyWarmupMs: -1}, {PostcopyWarmupMs: maxWarmupMs + 1}} {
		_, err := ta.mig.StartOutgoing(testCtx(t), connect.NewRequest(&agentv1.StartOutgoingRequest{DestHost: "h2", Name: "web", MigrationId: "m1", Uri: dstURI,
			Postcopy: true, MaxBandwidthBytes: 1 << 30, Tuning: tu}))
		wantCode(t, err, connect.CodeInvalidArgument)
	}
}

// A link that breaks during the warm-up pauses the post-copy: the restore
// still reaches QEMU, so the resumed post-copy runs at full share.
func TestPostcopyWarmupRestoredWhilePaused(t *testing.T) {
	ta := newTestAgent(t)
	q := startWarmupPostcopy(t, ta, 300)
	low, full := int64(30<<20), int64(100<<20)
	eventually(t, "warm-up on", func() bool {
		b := postcopyBandwidths(t, q)
		return len(b) >= 2 && b[len(b)-1] == low
	})
	q.SetMigrationStatus("postcopy-paused")
	eventually(t, "restored while paused", func() bool {
		b := postcopyBandwidths(t, q)
		return b[len(b)-1] == full
	})
}
