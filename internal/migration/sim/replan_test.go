package sim

import (
	"strings"
	"testing"

	statev1 "github.com/ferryvm/ferry/gen/ferry/state/v1"
	"github.com/ferryvm/ferry/internal/migration/core"
	"google.golang.org/protobuf/proto"
)

// replanScenario is the retry scenario of a stuck auto pre-copy.
func replanScenario(t *testing.T) Scenario {
	t.Helper()
	for _, s := range RetryScenarios {
		if s.Stuck {
			return s
		}
	}
	t.Fatal("no stuck-guest scenario in RetryScenarios")
	return Scenario{}
}

// storedVersion is the version of the record the store holds.
func storedVersion(t *testing.T, w *World) uint32 {
	t.Helper()
	m := &statev1.MigrationRecord{}
	if err := proto.Unmarshal(w.Store.Record, m); err != nil {
		t.Fatal(err)
	}
	return m.GetVersion()
}

// TestReplanAsHybridCompletes: auto chose pre-copy, the guest outruns it,
// the controller asks for the re-plan: attempt 1 is cleaned up, attempt 2
// runs hybrid (postcopy-ram armed on both sides), switches to post-copy
// and completes; the record is version 3 and names hybrid.
func TestReplanAsHybridCompletes(t *testing.T) {
	w := newWorld(replanScenario(t), 1)
	w.Start()
	w.Run()
	w.CheckEnd()
	r := w.Record()
	if len(w.Violations) > 0 || r.State != core.Completed || r.Attempt != 2 || r.Strategy != core.Hybrid || !r.Facts.PostcopyStarted {
		t.Fatalf("ended %s in attempt %d as %s (post-copy started %v), want completed in attempt 2 as hybrid through post-copy: %v\n%s",
			r.State, r.Attempt, r.Strategy, r.Facts.PostcopyStarted, w.Violations, strings.Join(w.Trace, "\n"))
	}
	if len(r.Retries) != 1 || r.Retries[0].Strategy != core.Hybrid || !strings.Contains(r.Retries[0].Reason, "retried as hybrid") {
		t.Fatalf("retries %+v, want one re-planned as hybrid with the controller's reason", r.Retries)
	}
	if v := storedVersion(t, w); v != core.Version || core.Version != 3 {
		t.Fatalf("stored record version %d (engine %d), want 3 for a re-planned record", v, core.Version)
	}
	prepared := 0
	for _, l := range w.Trace {
		if strings.Contains(l, "PrepareIncoming(dst) [mig-1-a2]") {
			prepared++
		}
	}
	if prepared == 0 {
		t.Fatalf("attempt 2 never prepared the destination under its own id:\n%s", strings.Join(w.Trace, "\n"))
	}
}

// TestReplanNeverTouchesExplicitPrecopy: the operator asked for precopy
// (not auto): a re-plan request is refused, the pre-copy goes on until the
// migration's timeout and ends failed in attempt 1 as precopy, with the
// VM on the source.
func TestReplanNeverTouchesExplicitPrecopy(t *testing.T) {
	w := newWorld(Scenario{Name: "explicit-precopy-stuck", Strategy: core.Precopy, Prev: core.VMRunning, Stuck: true, ReplanAs: core.Hybrid}, 1)
	w.Start()
	w.Run()
	w.CheckEnd()
	r := w.Record()
	if len(w.Violations) > 0 || r.State != core.Failed || r.Attempt != 1 || r.Strategy != core.Precopy || len(r.Retries) != 0 ||
		!strings.Contains(r.Error, "timeout") {
		t.Fatalf("ended %s in attempt %d as %s (%d retries, error %q), want failed by the timeout in attempt 1 as precopy: %v",
			r.State, r.Attempt, r.Strategy, len(r.Retries), r.Error, w.Violations)
	}
	if !strings.Contains(r.Note, "not retried as hybrid (the operator asked for precopy explicitly)") {
		t.Fatalf("note %q, want the refused re-plan's reason", r.Note)
	}
	if v := storedVersion(t, w); v != core.BaseVersion {
		t.Fatalf("stored record version %d, want %d for a record never re-planned", v, core.BaseVersion)
	}
}

// TestStuckAutoPrecopyWithoutReplanGoesOn: a policy that allows neither
// post-copy nor throttling makes the controller ask nothing: the pre-copy
// runs as today, until the migration's timeout.
func TestStuckAutoPrecopyWithoutReplanGoesOn(t *testing.T) {
	w := newWorld(Scenario{Name: "auto-precopy-stuck", Strategy: core.Precopy, Prev: core.VMRunning, Stuck: true, Auto: true}, 1)
	w.Start()
	w.Run()
	w.CheckEnd()
	r := w.Record()
	if len(w.Violations) > 0 || r.State != core.Failed || r.Attempt != 1 || r.Strategy != core.Precopy || !strings.Contains(r.Error, "timeout") {
		t.Fatalf("ended %s in attempt %d as %s (error %q), want failed by the timeout in attempt 1 as precopy: %v",
			r.State, r.Attempt, r.Strategy, r.Error, w.Violations)
	}
}

// TestReplanAsConvergeCompletes: with post-copy forbidden the controller
// asks for converge; the throttled attempt converges.
func TestReplanAsConvergeCompletes(t *testing.T) {
	w := newWorld(Scenario{Name: "auto-precopy-replan-converge", Strategy: core.Precopy, Prev: core.VMRunning, Stuck: true, Auto: true,
		ReplanAs: core.Converge}, 1)
	w.Start()
	w.Run()
	w.CheckEnd()
	w.checkReplanEnd(w.Record(), false)
	r := w.Record()
	if len(w.Violations) > 0 || r.State != core.Completed || r.Attempt != 2 || r.Strategy != core.Converge || r.Facts.PostcopyStarted {
		t.Fatalf("ended %s in attempt %d as %s, want completed in attempt 2 as converge: %v", r.State, r.Attempt, r.Strategy, w.Violations)
	}
}

// TestReplanSurvivesRestartInSecondAttempt: the server crashes as the
// re-planned attempt prepares its destination; the restarted server reads
// hybrid from the record and completes the migration through post-copy.
func TestReplanSurvivesRestartInSecondAttempt(t *testing.T) {
	w := newWorld(replanScenario(t), 1)
	crashed := false
	w.Hook = func(w *World, k int, a core.Action) Disposition {
		if !crashed && a.Kind == core.ActPrepareIncoming && a.MigrationID == core.AttemptIDOf(migID, 2) {
			crashed = true
			if r := w.Record(); r.Strategy != core.Hybrid || r.Attempt != 2 {
				t.Errorf("the stored record says attempt %d as %s before attempt 2 prepares, want attempt 2 as hybrid", r.Attempt, r.Strategy)
			}
			return w.Inject(CrashServer, a)
		}
		return DispDeliver
	}
	w.Start()
	w.Run()
	w.CheckEnd()
	r := w.Record()
	if !crashed || len(w.Violations) > 0 || r.State != core.Completed || r.Attempt != 2 || r.Strategy != core.Hybrid || !r.Facts.PostcopyStarted {
		t.Fatalf("crashed %v; ended %s in attempt %d as %s: %v\n%s", crashed, r.State, r.Attempt, r.Strategy, w.Violations, strings.Join(w.Trace, "\n"))
	}
}
