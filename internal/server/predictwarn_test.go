package server

import (
	"strings"
	"testing"

	ferryv1 "github.com/ferryvm/ferry/gen/ferry/v1"
)

// TestPredictionWarning: an explicit strategy the planner predicts does
// not converge gets a warning with the planner's reason (its predicted
// times are 0: none); a converging or cold prediction, or none, gets none.
func TestPredictionWarning(t *testing.T) {
	w := predictionWarning(&ferryv1.StrategyPrediction{Strategy: "precopy", Reason: "dirty rate 9 MiB/s ≥ bandwidth 8 MiB/s: pre-copy never converges"})
	if !strings.HasPrefix(w, WarnPredictedNoConvergence) || !strings.Contains(w, "precopy") || !strings.Contains(w, "never converges") {
		t.Errorf("warning %q: want it to name the strategy and the planner's reason", w)
	}
	for _, p := range []*ferryv1.StrategyPrediction{nil, {Strategy: "precopy", Converges: true, TotalMs: 3000}, {Strategy: "cold"}} {
		if w := predictionWarning(p); w != "" {
			t.Errorf("prediction %v: warning %q, want none", p, w)
		}
	}
}
