package telemetry

import (
	"testing"
	"time"
)

// A probe's round-trip time rides on the pair's figure; a pair never
// probed has none.
func TestFigureCarriesTheProbesRTT(t *testing.T) {
	l := NewLinks()
	now := time.Unix(1000, 0)
	l.ObserveProbe("h1", "h2", 48<<20, now, false)
	l.ObserveRTT("h1", "h2", 40*time.Millisecond)
	l.ObserveRTT("h1", "h2", 0) // an agent that does not measure: kept
	f, ok := l.Figure("h1", "h2", now.Add(time.Second))
	if !ok || f.RTT != 40*time.Millisecond {
		t.Fatalf("figure h1→h2 = %+v, %v; want RTT 40ms", f, ok)
	}
	l.ObserveMigration("h2", "h1", 40<<20, now)
	if f, ok := l.Figure("h2", "h1", now); !ok || f.RTT != 0 {
		t.Fatalf("figure h2→h1 = %+v, %v; want no RTT", f, ok)
	}
}
