package cli

import (
	"strings"
	"testing"

	ferryv1 "github.com/ferryvm/ferry/gen/ferry/v1"
)

// The dry run says which stream rate (and, with local disks, which mirror
// rate) it planned with and where each came from.
func TestDryRunShowsTheStreamAndMirrorSources(t *testing.T) {
	in := &ferryv1.PlanInputs{MemoryBytes: 1 << 30, BandwidthMibps: 1203, BandwidthSource: "background probe",
		StreamMibps: 75, StreamSource: "learned from 3 past tls migration(s) h1→h2, last 20s ago (75 MiB/s)",
		MirrorMibps: 362, MirrorSource: "the planner's constant for one tls mirror (362 MiB/s): nothing learned over tls yet"}
	dry := renderPlan("web", "h2", &ferryv1.Plan{Inputs: in, Choice: "precopy"})
	if want := "stream     75 MiB/s when the link is not the limit (learned from 3 past tls migration(s) h1→h2"; !strings.Contains(dry, want) {
		t.Errorf("dry run lacks %q:\n%s", want, dry)
	}
	if strings.Contains(dry, "mirror ") {
		t.Errorf("a VM without local disks shows a mirror rate:\n%s", dry)
	}
	in.DiskBytes = 1 << 30
	dry = renderPlan("web", "h2", &ferryv1.Plan{Inputs: in, Choice: "precopy"})
	if want := "mirror     362 MiB/s for 1024.0 MiB of local disks when the link is not the limit (the planner's constant"; !strings.Contains(dry, want) {
		t.Errorf("dry run lacks %q:\n%s", want, dry)
	}
}
