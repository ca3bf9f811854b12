package cli

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	ferryv1 "github.com/ferryvm/ferry/gen/ferry/v1"
	"google.golang.org/protobuf/types/known/timestamppb"
)

func plottedMig() *ferryv1.Migration {
	start := time.Date(2026, 12, 1, 3, 0, 0, 0, time.UTC)
	return &ferryv1.Migration{Id: "mig-1a2b3c4d", Vm: "web", From: "h1", To: "h2", Strategy: "precopy", Status: "completed",
		StartedAt: timestamppb.New(start), DowntimePhases: &ferryv1.DowntimePhases{TotalMs: 37},
		Samples: []*ferryv1.MigrationSample{
			{TMs: 0, RemainingBytes: 512 << 20, DirtyRateMibps: 0},
			{TMs: 1000, RemainingBytes: 256 << 20, DirtyRateMibps: 40},
			{TMs: 2000, RemainingBytes: 8 << 20, DirtyRateMibps: 35},
		},
		Events: []*ferryv1.MigrationEvent{
			{At: timestamppb.New(start), State: "transferring"},
			{At: timestamppb.New(start.Add(2500 * time.Millisecond)), State: "switchover"},
			{At: timestamppb.New(start.Add(2600 * time.Millisecond)), State: "resuming"},
		},
	}
}

// TestMigrationPlot: `ferry migration plot ID -o FILE.svg` writes an SVG
// with the remaining bytes and dirty rate lines and the switchover marked
// at its time; a name without .svg and a migration without samples are
// refused clearly.
func TestMigrationPlot(t *testing.T) {
	f := &fakeMigrations{final: plottedMig()}
	url := serveFake(t, f)
	out := filepath.Join(t.TempDir(), "migration.svg")
	if _, _, err := runCLI(t, nil, "--server", url, "migration", "plot", "mig-1a2b3c4d", "-o", out); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	svg := string(b)
	for _, want := range []string{"<svg", "remaining MiB", "dirty rate MiB/s", ">switchover<", "downtime 37 ms", "</svg>"} {
		if !strings.Contains(svg, want) {
			t.Errorf("plot lacks %q", want)
		}
	}
	if n := strings.Count(svg, "<polyline"); n != 2 {
		t.Errorf("%d lines, want 2 (remaining, dirty rate)", n)
	}
	if _, _, err := runCLI(t, nil, "--server", url, "migration", "plot", "mig-1a2b3c4d", "-o", "plot.png"); err == nil || !strings.Contains(err.Error(), ".svg") {
		t.Errorf("-o plot.png: err %v, want one naming .svg", err)
	}
	f.final = &ferryv1.Migration{Id: "mig-1a2b3c4d", Strategy: "cold", Status: "completed"}
	if _, _, err := runCLI(t, nil, "--server", url, "migration", "plot", "mig-1a2b3c4d", "-o", out+"2.svg"); err == nil || !strings.Contains(err.Error(), "no progress samples") {
		t.Errorf("no samples: err %v, want errNoSamples", err)
	}
}
