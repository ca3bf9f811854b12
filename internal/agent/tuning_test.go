package agent

import (
	"io"
	"net"
	"testing"
	"time"

	"connectrpc.com/connect"
	agentv1 "github.com/ferryvm/ferry/gen/ferry/agent/v1"
	ferryv1 "github.com/ferryvm/ferry/gen/ferry/v1"
)

func setHostQEMU(ta *testAgent, version string, features ...string) {
	ta.a.capsMu.Lock()
	ta.a.qemuCaps = &ferryv1.HostQEMU{Version: version, Features: features}
	ta.a.capsMu.Unlock()
}

// The source applies a pre-copy tuning: multifd channels, zero-page
// detection in the channels, zstd at level 1, avail-switchover-bandwidth.
func TestStartOutgoingAppliesTuning(t *testing.T) {
	ta := newTestAgent(t)
	setHostQEMU(ta, "10.0.2", "postcopy-preempt", "multifd-zero-page-detection", "avail-switchover-bandwidth", "multifd-zstd")
	startVM(t, ta, "web")
	_, err := ta.mig.StartOutgoing(testCtx(t), connect.NewRequest(&agentv1.StartOutgoingRequest{DestHost: "h2", Name: "web", MigrationId: "m1", Uri: dstURI,
		MaxBandwidthBytes: 1 << 30, DowntimeLimitMs: 300, MultifdChannels: 4,
		Tuning: &agentv1.MigrationTuning{ZeroPageDetection: "multifd", MultifdCompression: "zstd", MultifdZstdLevel: 1, AvailSwitchoverBandwidthBytes: 45298483}}))
	if err != nil {
		t.Fatal(err)
	}
	q := ta.qemu("web")
	if !q.Capability("multifd") || q.Capability("postcopy-preempt") || q.Capability("postcopy-ram") {
		t.Fatalf("capabilities: multifd %v, postcopy-preempt %v, postcopy-ram %v; want only multifd", q.Capability("multifd"), q.Capability("postcopy-preempt"), q.Capability("postcopy-ram"))
	}
	for name, want := range map[string]string{
		"multifd-channels": "4", "zero-page-detection": `"multifd"`, "multifd-compression": `"zstd"`, "multifd-zstd-level": "1",
		"avail-switchover-bandwidth": "45298483",
	} {
		if got := string(q.Parameter(name)); got != want {
			t.Errorf("parameter %s = %s, want %s", name, got, want)
		}
	}
}

// Post-copy with preempt: the capability on both sides, nothing else.
func TestPostcopyPreemptOnBothSides(t *testing.T) {
	src, dst := newTestAgent(t), newTestAgent(t)
	for _, ta := range []*testAgent{src, dst} {
		setHostQEMU(ta, "10.0.2", "postcopy-preempt", "multifd-zero-page-detection", "avail-switchover-bandwidth", "multifd-zstd")
	}
	tu := &agentv1.MigrationTuning{PostcopyPreempt: true}
	if _, err := dst.mig.PrepareIncoming(testCtx(t), connect.NewRequest(&agentv1.PrepareIncomingRequest{SourceHost: "h1", Spec: testSpec(t, "db"), MigrationId: "m2", Postcopy: true, Tuning: tu})); err != nil {
		t.Fatal(err)
	}
	startVM(t, src, "db")
	if _, err := src.mig.StartOutgoing(testCtx(t), connect.NewRequest(&agentv1.StartOutgoingRequest{DestHost: "h2", Name: "db", MigrationId: "m2", Uri: dstURI,
		MaxBandwidthBytes: 1 << 30, DowntimeLimitMs: 300, Postcopy: true, Tuning: tu})); err != nil {
		t.Fatal(err)
	}
	for side, q := range map[string]interface {
		Capability(string) bool
	}{"source": src.qemu("db"), "destination": dst.qemu("db")} {
		if !q.Capability("postcopy-ram") || !q.Capability("postcopy-preempt") || q.Capability("multifd") {
			t.Errorf("%s: postcopy-ram %v, postcopy-preempt %v, multifd %v; want post-copy with preempt, no multifd", side,
				q.Capability("postcopy-ram"), q.Capability("postcopy-preempt"), q.Capability("multifd"))
		}
	}
	if p := src.qemu("db").Parameter("zero-page-detection"); p != nil {
		t.Errorf("zero-page-detection set to %s without multifd", p)
	}
}

// A host whose QEMU lacks a feature refuses the tuning naming it, before
// any QMP command; a host without tuning (QEMU 7.2) keeps its commands.
func TestTuningCheckedAgainstHostRecord(t *testing.T) {
	ta := newTestAgent(t)
	setHostQEMU(ta, "7.2.0", "multifd-zstd")
	startVM(t, ta, "old")
	_, err := ta.mig.StartOutgoing(testCtx(t), connect.NewRequest(&agentv1.StartOutgoingRequest{DestHost: "h2", Name: "old", MigrationId: "m3", Uri: dstURI,
		MaxBandwidthBytes: 1 << 30, DowntimeLimitMs: 300, Postcopy: true, Tuning: &agentv1.MigrationTuning{PostcopyPreempt: true}}))
	wantCode(t, err, connect.CodeFailedPrecondition)
	if q := ta.qemu("old"); q.Capability("postcopy-preempt") || q.Capability("postcopy-ram") {
		t.Fatal("a refused tuning set capabilities")
	}
	_, err = ta.mig.PrepareIncoming(testCtx(t), connect.NewRequest(&agentv1.PrepareIncomingRequest{SourceHost: "h1", Spec: testSpec(t, "new"), MigrationId: "m4",
		Tuning: &agentv1.MigrationTuning{MultifdCompression: "lz4"}}))
	wantCode(t, err, connect.CodeInvalidArgument)

	// No tuning: the 7.2 commands as before, no new parameter named.
	mustStartOut(t, ta, "old", "m5")
	q := ta.qemu("old")
	for _, p := range []string{"zero-page-detection", "avail-switchover-bandwidth", "multifd-compression"} {
		if v := q.Parameter(p); v != nil {
			t.Errorf("parameter %s = %s without tuning", p, v)
		}
	}
}

// A probe reports the round-trip time of its connection (the kernel's
// estimate after the handshake), here over loopback: above 0, below 100 ms.
func TestProbeSendReportsTheRTT(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		c, err := l.Accept()
		if err == nil {
			defer c.Close()
			_, _ = io.Copy(io.Discard, c)
		}
	}()
	resp, err := probeSend(testCtx(t), l.Addr().String(), 20*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	if resp.RttUs <= 0 || resp.RttUs > 100_000 || resp.Bytes <= 0 {
		t.Fatalf("probe: rtt %d µs, %d bytes", resp.RttUs, resp.Bytes)
	}
}
