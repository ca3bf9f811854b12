package planner

import (
	"math"
	"strings"
	"testing"
	"time"
)

// idleInputs is the idle bench scenario: a 1 GiB guest with 112 MiB
// non-zero on a 1203 MiB/s link, one stream of stream bytes/s.
func idleInputs(stream float64) Inputs {
	return Inputs{
		MemoryBytes: 1 << 30, NonZeroBytes: 112 << 20, DirtyRateBytesPerSec: 0.2 * testMiB,
		BandwidthBytesPerSec: 1203 * testMiB, StreamBytesPerSec: stream, MultifdChannels: 1,
		DeviceStateBytes: 3 << 19, SwitchoverSeconds: 0.008, StepDowntime: true,
		Policy: Policy{AllowPrecopy: true},
	}
}

func precopyOf(t *testing.T, in Inputs) Prediction {
	t.Helper()
	for _, p := range Predict(in) {
		if p.Strategy == StrategyPrecopy {
			if !p.Converges || strings.Contains(p.Reason, "raise") {
				t.Fatalf("want a converging pre-copy without raises: %+v", p)
			}
			return p
		}
	}
	t.Fatal("no pre-copy prediction")
	return Prediction{}
}

// The rate learned from a run is the one at which the model predicts that
// run's total again: a plan after it predicts the same total, where
// bytes/total undershoots by the fixed parts.
func TestStreamRateOfReproducesTheModelsTotal(t *testing.T) {
	for _, stream := range []float64{60 * testMiB, 240 * testMiB, 900 * testMiB} {
		p := precopyOf(t, idleInputs(stream))
		got, ok := StreamRateOf(StreamRun{Total: p.Total, Bytes: p.Bytes, SwitchoverSeconds: 0.008})
		if !ok || math.Abs(got-stream) > 0.001*stream {
			t.Errorf("stream %.0f MiB/s: learned %.1f MiB/s (ok %v) from total %s, bytes %d", stream/testMiB, got/testMiB, ok, p.Total, p.Bytes)
		}
		if naive := float64(p.Bytes) / p.Total.Seconds(); naive > 0.95*stream {
			t.Errorf("stream %.0f MiB/s: bytes/total is %.1f MiB/s, the fixed parts should show", stream/testMiB, naive/testMiB)
		}
		again := precopyOf(t, idleInputs(got))
		if d := again.Total - p.Total; d > time.Millisecond || d < -time.Millisecond {
			t.Errorf("stream %.0f MiB/s: the plan with the learned rate predicts %s, the run took %s", stream/testMiB, again.Total, p.Total)
		}
	}
}

// With local disks, the mirrors' time is left out of the stream's and
// teaches the mirror rate: both together predict the run's total again.
func TestMirrorAndStreamRatesReproduceADiskMigration(t *testing.T) {
	in := idleInputs(70 * testMiB)
	in.DiskBytes = 1 << 30
	in.MirrorBytesPerSec = 150 * testMiB
	p := precopyOf(t, in)
	mirror := time.Duration(float64(in.DiskBytes) / in.MirrorBytesPerSec * float64(time.Second))
	m, ok := MirrorRateOf(in.DiskBytes, mirror)
	if !ok || math.Abs(m-in.MirrorBytesPerSec) > 0.001*in.MirrorBytesPerSec {
		t.Fatalf("mirror rate %.1f MiB/s (ok %v), want 150", m/testMiB, ok)
	}
	ram := p.Bytes - in.DiskBytes // Prediction.Bytes counts the disks' data too
	s, ok := StreamRateOf(StreamRun{Total: p.Total, Bytes: ram, MirrorTime: mirror, SwitchoverSeconds: 0.008})
	if !ok || math.Abs(s-70*testMiB) > 0.001*70*testMiB {
		t.Errorf("stream rate %.1f MiB/s (ok %v), want 70", s/testMiB, ok)
	}
}

// A run the fixed parts explain, or with unusable figures, teaches nothing.
func TestStreamRateOfRefusesWhatTheFixedPartsExplain(t *testing.T) {
	for _, r := range []StreamRun{
		{Total: 200 * time.Millisecond, Bytes: 100 << 20},
		{Total: 3 * time.Second, Bytes: 100 << 20, Raises: 3},
		{Total: 0, Bytes: 100 << 20},
		{Total: time.Second, Bytes: 0},
		{Total: 3 * time.Second, Bytes: 100 << 20, MirrorTime: -time.Second},
	} {
		if got, ok := StreamRateOf(r); ok {
			t.Errorf("%+v: learned %.1f MiB/s, want nothing", r, got/testMiB)
		}
	}
	if _, ok := MirrorRateOf(0, time.Second); ok {
		t.Error("a mirror of no bytes taught a rate")
	}
}
