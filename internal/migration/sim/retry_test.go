package sim

import (
	"strings"
	"testing"

	"github.com/ferryvm/ferry/internal/migration/core"
)

// TestRetryScenarios: without injected faults, one flap is retried once
// and completes, two flaps complete on the third attempt, and three flaps
// exhaust the three attempts and fail with the VM running on the source.
func TestRetryScenarios(t *testing.T) {
	want := map[string]struct {
		outcome  core.State
		attempts int32
	}{
		"precopy-flap":               {core.Completed, 2},
		"hybrid-flap2":               {core.Completed, 3},
		"precopy-flap-exhausted":     {core.Failed, 3},
		"auto-precopy-replan-hybrid": {core.Completed, 2},
	}
	for _, s := range RetryScenarios {
		r := HappyPath(s, 1)
		w := want[s.Name]
		if len(r.Violations) > 0 || r.Outcome != w.outcome || r.Attempts != w.attempts {
			t.Errorf("%s: outcome %s after %d attempts, want %s after %d\n%s", s.Name, r.Outcome, r.Attempts, w.outcome, w.attempts, r.Report())
			continue
		}
		waits := 0
		for _, l := range r.Trace {
			if strings.Contains(l, "→ retry-wait") {
				waits++
			}
		}
		if waits != int(w.attempts)-1 {
			t.Errorf("%s: %d retry-waits in the trace, want %d", s.Name, waits, w.attempts-1)
		}
		t.Logf("%s: %d steps, %d attempts, took %s; %s", s.Name, r.Steps, r.Attempts, r.Took, r.Final)
	}
}

// TestCheckerCatchesReleaseBeforeRetry breaks the retry on purpose: the
// VM record is unlocked while the migration waits for its next attempt.
// The checker must see it.
func TestCheckerCatchesReleaseBeforeRetry(t *testing.T) {
	release := func(rec core.Record, ready *core.Ready) {
		if rec.State == core.RetryWait {
			ready.Actions = append(ready.Actions, core.Action{Kind: core.ActUpdateVM, Side: core.Src,
				Update: core.VMUpdate{State: core.VMRunning, Host: "h1", Unlock: true}})
		}
	}
	r := RunCase(Case{Scenario: RetryScenarios[0], Fault: NoFault, Seed: 1}, release)
	if len(r.Violations) == 0 {
		t.Fatalf("the checker missed a VM record released before the retry:\n%s", r.Report())
	}
	t.Logf("caught: %v", r.Violations)
}
