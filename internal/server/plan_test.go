package server

import (
	"github.com/ferryvm/ferry/internal/planner"
	"strings"
	"testing"
	"time"

	agentv1 "github.com/ferryvm/ferry/gen/ferry/agent/v1"
	ferryv1 "github.com/ferryvm/ferry/gen/ferry/v1"
	"github.com/ferryvm/ferry/internal/telemetry"
	"google.golang.org/protobuf/types/known/timestamppb"
)

func TestPlanInputsFromTelemetry(t *testing.T) {
	now := time.Date(2026, 12, 1, 8, 0, 0, 0, time.UTC)
	fig := telemetry.Figure{BytesPerSec: 300 << 20, Kind: telemetry.FromProbe, Age: 40 * time.Second, Source: "background probe h1→h2 40s ago (900 MiB/s)"}
	m := &agentv1.MeasureResponse{
		MemoryBytes: 256 << 20, RssBytes: 120 << 20, NonZeroBytes: 100 << 20,
		DirtyRateMibps: 12, DirtyRateLatestMibps: 10, DirtyRateEwmaMibps: 12, DirtyRatePeakMibps: 30, Samples: 5,
		DirtySampledAt: timestamppb.New(now.Add(-4 * time.Second)), NonZeroSampledAt: timestamppb.New(now.Add(-50 * time.Second)),
	}
	in := planInputsFrom(m, fig, false, "h1", &ferryv1.MigrationOptions{MaxDowntimeMs: 300}, now)
	if in.MeasuredInline || in.DirtyRateMibps != 12 || in.NonZeroBytes != 100<<20 || in.BandwidthMibps != 300 {
		t.Errorf("figures: %v", in)
	}
	if in.DirtyRateAgeMs != 4000 || in.NonZeroAgeMs != 50000 || in.BandwidthAgeMs != 40000 {
		t.Errorf("ages: dirty %d, non-zero %d, link %d", in.DirtyRateAgeMs, in.NonZeroAgeMs, in.BandwidthAgeMs)
	}
	if want := "telemetry of h1: 5 sample(s), latest 10.0, average 12.0, peak 30.0 MiB/s, 4s old"; in.DirtyRateSource != want {
		t.Errorf("dirty source %q, want %q", in.DirtyRateSource, want)
	}
	if !strings.HasPrefix(in.NonZeroSource, "telemetry of h1") || in.BandwidthSource != fig.Source {
		t.Errorf("sources: %q, %q", in.NonZeroSource, in.BandwidthSource)
	}

	// Stale telemetry measured by the agent, no link figure (probed inline),
	// no RAM count, and a --bandwidth cap.
	m = &agentv1.MeasureResponse{
		MemoryBytes: 256 << 20, RssBytes: 120 << 20, DirtyRateMibps: 3, Samples: 1,
		DirtySampledAt: timestamppb.New(now), DirtyFresh: true, NonZeroFresh: true,
		StaleReason: "dirty rate: latest sample 50s old (limit 45s); non-zero RAM: no sample yet",
	}
	in = planInputsFrom(m, fig, true, "h1", &ferryv1.MigrationOptions{BandwidthMibps: 100}, now)
	if !in.MeasuredInline || in.NonZeroBytes != 120<<20 || in.BandwidthMibps != 100 {
		t.Errorf("figures: %v", in)
	}
	if want := "measured for this plan (1 s calc-dirty-rate on h1): latest sample 50s old (limit 45s)"; in.DirtyRateSource != want {
		t.Errorf("dirty source %q, want %q", in.DirtyRateSource, want)
	}
	if !strings.HasPrefix(in.NonZeroSource, "QEMU's RSS") {
		t.Errorf("non-zero source %q", in.NonZeroSource)
	}
	if !strings.HasPrefix(in.BandwidthSource, "measured for this plan") || !strings.HasSuffix(in.BandwidthSource, "capped by --bandwidth 100") {
		t.Errorf("link source %q", in.BandwidthSource)
	}
}

func TestPlanInputsSayTheRSSGrowthAdded(t *testing.T) {
	now := time.Date(2026, 12, 1, 8, 0, 0, 0, time.UTC)
	m := &agentv1.MeasureResponse{
		MemoryBytes: 4 << 30, RssBytes: 1500 << 20, NonZeroBytes: 1180 << 20, NonZeroRssGrowthBytes: 1024 << 20, DirtyRateMibps: 1,
		DirtySampledAt: timestamppb.New(now), NonZeroSampledAt: timestamppb.New(now.Add(-10 * time.Second)),
	}
	in := planInputsFrom(m, telemetry.Figure{BytesPerSec: 100 << 20, Source: "x"}, false, "h1", &ferryv1.MigrationOptions{}, now)
	if want := "telemetry of h1 (RAM count 10s old, plus 1024 MiB QEMU's RSS grew since)"; in.NonZeroSource != want || in.NonZeroBytes != 1180<<20 || in.MeasuredInline {
		t.Errorf("non-zero %d MiB from %q (inline %v), want 1180 MiB from %q", in.NonZeroBytes>>20, in.NonZeroSource, in.MeasuredInline, want)
	}
}

func TestPlanInputsFromAnAgentWithoutTelemetry(t *testing.T) {
	m := &agentv1.MeasureResponse{MemoryBytes: 256 << 20, RssBytes: 120 << 20, NonZeroBytes: 90 << 20, DirtyRateMibps: 3}
	fig := telemetry.Figure{BytesPerSec: 300 << 20, Source: "x"}
	in := planInputsFrom(m, fig, false, "h1", &ferryv1.MigrationOptions{}, time.Now())
	if !in.MeasuredInline || !strings.Contains(in.DirtyRateSource, "measured for this plan") || !strings.Contains(in.DirtyRateSource, "keeps no telemetry") ||
		!strings.HasPrefix(in.NonZeroSource, "counted for this plan") || in.DirtyRateAgeMs != 0 {
		t.Errorf("old agent's answer: %v", in)
	}
}

func TestBandwidthsIgnoresTheAnyPair(t *testing.T) {
	var b bandwidths
	b.observe("h1", "h2", 300)
	b.observe("*", "*", 300) // the driver reports it too; the book folds it in itself
	if f, ok := b.figure("h1", "h2"); !ok || f.Kind != telemetry.FromMigrations || f.BytesPerSec != 300<<20 {
		t.Errorf("h1→h2: %+v %v", f, ok)
	}
	if v, ok := b.book().Learned("*", "*"); !ok || v != 300<<20 {
		t.Errorf("any pair learned %v %v, want one observation of 300 MiB/s", v, ok)
	}
	if d := b.due([]string{"h1", "h2"}); len(d) != 2 {
		t.Errorf("due after a migration: %v, want both directions", d)
	}
}

// TestPlanPredictsTheTLSStream: on a link faster than one stream, an
// encrypted one-stream migration (the default transport) is predicted at
// the TLS stream's rate, a plaintext one (insecureTransport) at the plain
// stream's — the same inputs otherwise. (With channels left to Tune, TLS
// makes multifd pay sooner: each channel encrypts on its own thread.)
func TestPlanPredictsTheTLSStream(t *testing.T) {
	in := &ferryv1.PlanInputs{MemoryBytes: 1 << 30, NonZeroBytes: 351 << 20, BandwidthMibps: 1000, MaxDowntimeMs: 300}
	total := func(insecure bool) float64 {
		t.Helper()
		plan, err := makePlan(in, &ferryv1.MigrationOptions{Strategy: "precopy", MultifdChannels: 1, InsecureTransport: insecure}, false)
		if err != nil {
			t.Fatal(err)
		}
		p := predictionFor(plan, "precopy")
		if p == nil {
			t.Fatalf("no precopy prediction in %v", plan)
		}
		return float64(p.TotalMs)
	}
	tls, plain := total(false), total(true)
	want := float64(planner.DefaultStreamBytesPerSec) / float64(planner.DefaultTLSStreamBytesPerSec)
	if r := tls / plain; r < 0.8*want || r > 1.2*want {
		t.Fatalf("predicted TLS %.0f ms vs plain %.0f ms (ratio %.2f); want about the streams' ratio %.2f", tls, plain, r, want)
	}
}
