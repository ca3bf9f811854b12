package planner

import (
	"encoding/json"
	"math"
	"testing"
)

func TestBandwidthEstimator(t *testing.T) {
	var e BandwidthEstimator
	if _, ok := e.Estimate("h1", "h2"); ok {
		t.Fatal("estimate from an empty estimator")
	}
	// First observation as is; then EWMA with alpha 0.3:
	// 0.3·200 + 0.7·100 = 130; 0.3·100 + 0.7·130 = 121.
	for _, v := range []float64{100, 200, 100} {
		e.Observe("h1", "h2", v)
	}
	if v, ok := e.Estimate("h1", "h2"); !ok || math.Abs(v-121) > 1e-9 {
		t.Fatalf("h1→h2 = %v, %v; want 121", v, ok)
	}
	// Directed: h2→h1 is a different pair.
	if _, ok := e.Estimate("h2", "h1"); ok {
		t.Fatal("h2→h1 learned from h1→h2")
	}
	e.Observe("h2", "h1", 50)
	// Nonsense is ignored.
	for _, v := range []float64{0, -5, math.NaN(), math.Inf(1)} {
		e.Observe("h1", "h2", v)
	}
	if v, _ := e.Estimate("h1", "h2"); math.Abs(v-121) > 1e-9 {
		t.Fatalf("h1→h2 = %v after bad samples", v)
	}
	data, err := json.Marshal(e)
	if err != nil {
		t.Fatal(err)
	}
	const want = `[{"from":"h1","to":"h2","bytesPerSec":121,"samples":3},{"from":"h2","to":"h1","bytesPerSec":50,"samples":1}]`
	if string(data) != want {
		t.Fatalf("JSON %s, want %s", data, want)
	}
	var back BandwidthEstimator
	if err := json.Unmarshal(data, &back); err != nil {
		t.Fatal(err)
	}
	if v, ok := back.Estimate("h2", "h1"); !ok || v != 50 {
		t.Fatalf("after a round trip h2→h1 = %v, %v", v, ok)
	}
	back.Observe("h2", "h1", 150) // 0.3·150 + 0.7·50 = 80
	if v, _ := back.Estimate("h2", "h1"); math.Abs(v-80) > 1e-9 {
		t.Fatalf("h2→h1 = %v, want 80", v)
	}
	// Inside a struct, by value.
	wrapped, err := json.Marshal(struct{ E BandwidthEstimator }{e})
	if err != nil || string(wrapped) != `{"E":`+want+`}` {
		t.Fatalf("wrapped JSON %s, %v", wrapped, err)
	}
	if err := json.Unmarshal([]byte(`{"x":1}`), &back); err == nil {
		t.Fatal("unmarshalled an object")
	}
}
