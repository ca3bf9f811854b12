package telemetry

import (
	"math"
	"strings"
	"testing"
	"time"
)

const testMiB = 1 << 20

func near(a, b float64) bool { return math.Abs(a-b) < 1e-6*math.Max(1, math.Abs(b)) }

// A learned stream rate is the pair's moving average; a pair that never
// migrated over the transport plans with the cluster's (Any), and a book
// with nothing learned says so.
func TestRatesLearnAndFallBackToAnyPair(t *testing.T) {
	c := newFakeClock()
	r := NewRates()
	if _, ok := r.Figure(StreamRate, TransportTLS, "h1", "h2", c.now()); ok {
		t.Fatal("an empty book has a figure")
	}
	r.Observe(StreamRate, TransportTLS, "h1", "h2", 70*testMiB, c.now())
	r.Observe(StreamRate, TransportTLS, "h1", "h2", 80*testMiB, c.advance(10*time.Second))
	f, ok := r.Figure(StreamRate, TransportTLS, "h1", "h2", c.advance(5*time.Second))
	if want := 70 + 0.3*(80-70); !ok || !near(f.BytesPerSec, want*testMiB) || f.AnyPair || f.Samples != 2 || f.Age != 5*time.Second {
		t.Fatalf("pair figure %+v (ok %v), want %.0f MiB/s from 2 migrations 5 s old", f, ok, want)
	}
	if !strings.Contains(f.Source, "h1→h2") || !strings.Contains(f.Source, "tls") {
		t.Errorf("source %q does not name the pair and the transport", f.Source)
	}
	g, ok := r.Figure(StreamRate, TransportTLS, "h3", "h4", c.now())
	if !ok || !g.AnyPair || !near(g.BytesPerSec, f.BytesPerSec) || !strings.Contains(g.Source, "any pair") {
		t.Errorf("a pair that never migrated: %+v (ok %v), want the any-pair figure %.0f MiB/s", g, ok, f.BytesPerSec/testMiB)
	}
	// "*" is folded in by the book itself, never observed directly.
	r.Observe(StreamRate, TransportTLS, Any, Any, 1000*testMiB, c.now())
	if g2, _ := r.Figure(StreamRate, TransportTLS, "h3", "h4", c.now()); !near(g2.BytesPerSec, g.BytesPerSec) {
		t.Errorf("an observation of the any pair itself moved it to %.0f MiB/s", g2.BytesPerSec/testMiB)
	}
}

// TLS and plaintext streams, and streams and mirrors, are learned apart:
// one never answers for the other.
func TestRatesKeepTransportsAndKindsApart(t *testing.T) {
	c := newFakeClock()
	r := NewRates()
	r.Observe(StreamRate, TransportTLS, "h1", "h2", 70*testMiB, c.now())
	if f, ok := r.Figure(StreamRate, TransportPlain, "h1", "h2", c.now()); ok {
		t.Errorf("a TLS stream answered for plaintext: %+v", f)
	}
	if f, ok := r.Figure(MirrorRate, TransportTLS, "h1", "h2", c.now()); ok {
		t.Errorf("a stream answered for a mirror: %+v", f)
	}
	r.Observe(StreamRate, TransportPlain, "h1", "h2", 120*testMiB, c.now())
	r.Observe(MirrorRate, TransportTLS, "h1", "h2", 150*testMiB, c.now())
	for _, tc := range []struct {
		kind      RateKind
		transport string
		want      float64
	}{{StreamRate, TransportTLS, 70}, {StreamRate, TransportPlain, 120}, {MirrorRate, TransportTLS, 150}} {
		if f, ok := r.Figure(tc.kind, tc.transport, "h1", "h2", c.now()); !ok || !near(f.BytesPerSec, tc.want*testMiB) {
			t.Errorf("%s %s: %+v (ok %v), want %.0f MiB/s", tc.kind, tc.transport, f, ok, tc.want)
		}
	}
}

// A rate more than LinkChanged off the pair's average restarts it, as the
// link book does: a guest or host that changed would otherwise mislead
// several plans. The any-pair figure keeps averaging.
func TestRatesChangedRateReplacesTheAverage(t *testing.T) {
	c := newFakeClock()
	r := NewRates()
	for _, v := range []float64{240, 250, 245} {
		r.Observe(StreamRate, TransportTLS, "h1", "h2", v*testMiB, c.advance(time.Minute))
	}
	r.Observe(StreamRate, TransportTLS, "h1", "h2", 210*testMiB, c.advance(time.Minute)) // within 1.4×: averaged
	f, _ := r.Figure(StreamRate, TransportTLS, "h1", "h2", c.now())
	if f.Samples != 4 || f.BytesPerSec < 220*testMiB {
		t.Errorf("a rate within LinkChanged: %+v, want it averaged in (4 samples)", f)
	}
	r.Observe(StreamRate, TransportTLS, "h1", "h2", 70*testMiB, c.advance(time.Minute))
	f, _ = r.Figure(StreamRate, TransportTLS, "h1", "h2", c.now())
	if f.Samples != 1 || !near(f.BytesPerSec, 70*testMiB) {
		t.Errorf("a rate 3× below the average: %+v, want it to replace the average", f)
	}
	if a, _ := r.Figure(StreamRate, TransportTLS, "h3", "h4", c.now()); a.Samples != 5 || a.BytesPerSec <= 70*testMiB {
		t.Errorf("any pair: %+v, want all 5 migrations averaged", a)
	}
}

// TestSizeClassesAndTheWiderBand: the size classes' edges, and a rate
// within RateChanged of the average joins it (the idle runs' 57–105
// MiB/s) while one beyond replaces it.
func TestSizeClassesAndTheWiderBand(t *testing.T) {
	for n, want := range map[int64]string{112 << 20: "<256MiB", 256 << 20: "256MiB-1GiB", 1 << 30: "256MiB-1GiB", 1200 << 20: "1-4GiB", 5 << 30: ">4GiB"} {
		if got := SizeClass(n); got != want {
			t.Errorf("SizeClass(%d MiB) = %s, want %s", n>>20, got, want)
		}
	}
	if StreamRateFor(112<<20) == StreamRateFor(1200<<20) {
		t.Error("a small and a big guest share a stream rate kind")
	}
	r := NewRates()
	now := time.Now()
	k := StreamRateFor(112 << 20)
	r.Observe(k, TransportTLS, "a", "b", 57<<20, now)
	r.Observe(k, TransportTLS, "a", "b", 105<<20, now)
	f, _ := r.Figure(k, TransportTLS, "a", "b", now)
	if f.Samples != 2 {
		t.Errorf("57 then 105 MiB/s: %d sample(s) (%s), want both averaged", f.Samples, f.Source)
	}
	r.Observe(k, TransportTLS, "a", "b", 500<<20, now)
	if f, _ := r.Figure(k, TransportTLS, "a", "b", now); f.Samples != 1 || f.BytesPerSec != 500<<20 {
		t.Errorf("a rate 6× the average: %d sample(s) at %.0f MiB/s, want it alone", f.Samples, f.BytesPerSec/(1<<20))
	}
}
