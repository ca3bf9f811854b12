package migplot

import (
	"errors"
	"testing"
	"time"

	ferryv1 "github.com/ferryvm/ferry/gen/ferry/v1"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// TestChart: one point per sample on each line, the switchover marked at
// its time from the start (once), the downtime noted; no samples is
// ErrNoSamples.
func TestChart(t *testing.T) {
	start := time.Date(2026, 12, 1, 3, 0, 0, 0, time.UTC)
	m := &ferryv1.Migration{Id: "mig-1", Vm: "web", From: "h1", To: "h2", Strategy: "precopy", Status: "completed",
		StartedAt: timestamppb.New(start), DowntimePhases: &ferryv1.DowntimePhases{TotalMs: 37},
		Samples: []*ferryv1.MigrationSample{
			{TMs: 0, RemainingBytes: 512 << 20},
			{TMs: 1000, RemainingBytes: 256 << 20, DirtyRateMibps: 40},
		},
		Events: []*ferryv1.MigrationEvent{
			{At: timestamppb.New(start), State: "transferring"},
			{At: timestamppb.New(start.Add(2500 * time.Millisecond)), State: "switchover"},
			{At: timestamppb.New(start.Add(2700 * time.Millisecond)), State: "switchover"},
		},
	}
	c, err := Chart(m)
	if err != nil {
		t.Fatal(err)
	}
	if len(c.Series) != 2 || len(c.Series[0].Points) != 2 || c.Series[0].Points[1].Y != 256 || c.Series[1].Points[1].Y != 40 {
		t.Errorf("series %+v, want remaining MiB and dirty rate per sample", c.Series)
	}
	if len(c.Markers) != 1 || c.Markers[0].X != 2.5 || c.Markers[0].Label != "switchover" {
		t.Errorf("markers %+v, want the switchover once at 2.5 s", c.Markers)
	}
	if c.Note != "downtime 37 ms" {
		t.Errorf("note %q", c.Note)
	}
	if _, err := Chart(&ferryv1.Migration{Strategy: "cold"}); !errors.Is(err, ErrNoSamples) {
		t.Errorf("no samples: %v, want ErrNoSamples", err)
	}
}
