package cli

import (
	"strings"
	"testing"

	ferryv1 "github.com/ferryvm/ferry/gen/ferry/v1"
)

// The dry run and the report print every tuning choice with its reason.
func TestTuningInDryRunAndReport(t *testing.T) {
	tu := &ferryv1.PlanTuning{Choices: []*ferryv1.TuningChoice{
		{Name: "postcopy-preempt", Value: "on", Reason: "faulted pages overtake"},
		{Name: "multifd-channels", Value: "1", Reason: "one stream fills the link"},
	}}
	plan := &ferryv1.Plan{Choice: "postcopy", Reason: "fastest", Tuning: tu}
	dry := renderPlan("web", "h2", plan)
	rep := renderReport(&ferryv1.Migration{Id: "m1", Vm: "web", Strategy: "postcopy", Status: "completed", Plan: plan})
	for _, want := range []string{"postcopy-preempt=on: faulted pages overtake", "multifd-channels=1: one stream fills the link"} {
		if !strings.Contains(dry, "tuning     "+want) {
			t.Errorf("dry run lacks %q:\n%s", want, dry)
		}
		if !strings.Contains(rep, want) {
			t.Errorf("report lacks %q:\n%s", want, rep)
		}
	}
}
