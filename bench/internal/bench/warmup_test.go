package bench

import (
	"slices"
	"strings"
	"testing"

	"github.com/ferryvm/ferry/bench/internal/report"
)

// One warm-up per distinct setting: each change of the link, and a
// scenario with a local disk once per link setting (its mirror rate), in
// the default scenario order too.
func TestWarmupsPerLinkAndDisk(t *testing.T) {
	scs, err := (Options{Scenarios: AllScenarios, LinkMiBps: 48, WSSMiB: 256, MemoryMiB: 1024}).scenarios()
	if err != nil {
		t.Fatal(err)
	}
	var w warmState
	var got []string
	for _, sc := range scs {
		if w.due(sc) {
			w.done(sc)
			got = append(got, sc.Name)
		}
	}
	// half, heavy and flaky share a link; big and disk the unshaped one,
	// but only disk mirrors.
	if want := "idle half wan flaky big disk"; strings.Join(got, " ") != want {
		t.Errorf("warm-ups before %v, want %s", got, want)
	}

	by := map[string]Scenario{}
	for _, sc := range scs {
		by[sc.Name] = sc
	}
	w = warmState{}
	var seq []bool
	for _, name := range []string{"disk", "disk", "idle", "disk", "half", "disk"} {
		due := w.due(by[name])
		if due {
			w.done(by[name])
		}
		seq = append(seq, due)
	}
	// A disk warm-up also warms the link; after another link's warm-up a
	// disk scenario gets its own again.
	if want := []bool{true, false, false, false, true, true}; !slices.Equal(seq, want) {
		t.Errorf("warm-ups %v, want %v", seq, want)
	}
}

// Ferry's dry-run line names the stream's source, and with local disks the
// mirror's, after the link's.
func TestPredictionStringShowsTheSources(t *testing.T) {
	r := report.Run{Migration: report.Migration{Status: "completed", TotalMs: 1800, Strategy: "precopy"},
		DryRun: &report.DryRun{Choice: "precopy", Predicted: &report.Predicted{Strategy: "precopy", Converges: true, TotalMs: 1750},
			BandwidthMiBps: 1203, BandwidthSource: "background probe h1→h2 5s ago (1203 MiB/s)",
			StreamMiBps: 75, StreamSource: "learned from 1 past tls migration(s) h1→h2, last 9s ago (75 MiB/s)"}}
	s := predictionString(r)
	for _, want := range []string{"; link 1203 MiB/s (background probe", "; stream 75 MiB/s (learned from 1 past tls migration(s) h1→h2"} {
		if !strings.Contains(s, want) {
			t.Errorf("%q lacks %q", s, want)
		}
	}
	if strings.Contains(s, "mirror") {
		t.Errorf("%q names a mirror without local disks", s)
	}
	r.DryRun.MirrorMiBps, r.DryRun.MirrorSource = 362, "the planner's constant for one tls mirror (362 MiB/s): nothing learned over tls yet"
	if s := predictionString(r); !strings.Contains(s, "; mirror 362 MiB/s (the planner's constant") {
		t.Errorf("%q lacks the mirror's source", s)
	}
}
