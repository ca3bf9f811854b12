package cli

import ferryv1 "github.com/ferryvm/ferry/gen/ferry/v1"

// tuningLines are the planner's QEMU tuning choices, "NAME=VALUE: reason",
// for the dry run and the report.
func tuningLines(t *ferryv1.PlanTuning) []string {
	var out []string
	for _, c := range t.GetChoices() {
		out = append(out, c.GetName()+"="+c.GetValue()+": "+c.GetReason())
	}
	return out
}
