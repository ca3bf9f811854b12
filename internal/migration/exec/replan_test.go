package exec

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	agentv1 "github.com/ferryvm/ferry/gen/ferry/agent/v1"
	ferryv1 "github.com/ferryvm/ferry/gen/ferry/v1"
	"github.com/ferryvm/ferry/internal/migration/core"
	"github.com/ferryvm/ferry/internal/planner"
)

// startStuckPrecopy starts an auto-chosen (or explicit) pre-copy whose
// guest outruns it, on an engine whose knobs follow the report's strategy
// (4 multifd channels for precopy, one stream otherwise) and whose Replan
// fails failFirst times, then succeeds.
func startStuckPrecopy(t *testing.T, auto bool, failFirst int) (*Engine, *fakeQEMUPair, *fakeRecords, *[]string) {
	t.Helper()
	e, pair, _, recs, _, _ := newFakeEngine(t)
	pair.stuck = true
	var mu sync.Mutex
	var replans []string
	e.cfg.Knobs = func(m *ferryv1.Migration, _ *ferryv1.VM) Knobs {
		k := Knobs{Spec: &ferryv1.VMSpec{Name: "web"}}
		if m.Strategy == "precopy" {
			k.MultifdChannels = 4
		}
		k.Tuning = &agentv1.MigrationTuning{PostcopyPreempt: m.GetPlan().GetTuning().GetPostcopyPreempt()}
		return k
	}
	e.cfg.Replan = func(_ context.Context, m *ferryv1.Migration, strategy string) error {
		mu.Lock()
		defer mu.Unlock()
		replans = append(replans, strategy)
		if len(replans) <= failFirst {
			return errors.New("fake: host records unreadable")
		}
		m.Plan = &ferryv1.Plan{Requested: "auto", Choice: "precopy", Tuning: &ferryv1.PlanTuning{PostcopyPreempt: true}}
		m.Predicted = &ferryv1.StrategyPrediction{Strategy: strategy}
		return nil
	}
	rec, report := newFakeRecord(t)
	rec.Options.Auto = auto
	report.Plan = &ferryv1.Plan{Requested: "precopy", Choice: "precopy"}
	if auto {
		report.Plan.Requested = "auto"
	}
	if err := e.Start(context.Background(), rec, report); err != nil {
		t.Fatal(err)
	}
	return e, pair, recs, &replans
}

// steerWhenTransferring hands the core the controller's replan request
// once the migration transfers.
func steerWhenTransferring(t *testing.T, e *Engine, why string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		if rp := e.lookup("mig-1"); rp != nil {
			if runner, rec := rp.current(); runner != nil && rec.State == core.Transferring && rec.Facts.OutgoingStarted {
				rp.rep.mu.Lock()
				steer := rp.rep.steer
				rp.rep.mu.Unlock()
				steer(core.SteerReplan, core.Hybrid, why)
				return
			}
		}
		time.Sleep(2 * time.Millisecond)
	}
	t.Fatal("the migration never transferred")
}

// TestEngineRetriesAStuckAutoPrecopyAsHybrid: the controller's request
// ends attempt 1 (the destination aborted, the source's transfer
// cancelled), the report is re-planned for hybrid before attempt 2 is
// written, and attempt 2 prepares and starts with postcopy-ram, one
// stream and the re-planned tuning under its own id, then completes; the
// report says hybrid, attempt 2 and why.
func TestEngineRetriesAStuckAutoPrecopyAsHybrid(t *testing.T) {
	e, pair, recs, replans := startStuckPrecopy(t, true, 1)
	why := "precopy did not converge in 3.1s after its downtime target reached its cap 270ms: retried as hybrid"
	steerWhenTransferring(t, e, why)
	m := waitStatus(t, e, recs, "mig-1", "completed")
	pair.mu.Lock()
	p, st, calls := pair.prepared, pair.started, strings.Join(pair.calls, " ")
	pair.mu.Unlock()
	if m.Strategy != "hybrid" || m.Attempt != 2 || len(m.Retries) != 1 || m.Retries[0].Strategy != "hybrid" || m.Retries[0].Reason != why {
		t.Fatalf("report: strategy %s attempt %d retries %v; want hybrid in attempt 2 after one retry as hybrid saying why", m.Strategy, m.Attempt, m.Retries)
	}
	if m.GetPredicted().GetStrategy() != "hybrid" || !m.GetPlan().GetTuning().GetPostcopyPreempt() || m.GetOptions().GetStrategy() != "hybrid" {
		t.Errorf("report: predicted %v tuning %v options %v; want the hybrid re-plan", m.GetPredicted(), m.GetPlan().GetTuning(), m.GetOptions())
	}
	if !p.Postcopy || p.MigrationId != "mig-1-a2" || !st.Postcopy || !st.AutoConverge || st.MultifdChannels != 0 || !st.GetTuning().GetPostcopyPreempt() || st.MigrationId != "mig-1-a2" {
		t.Errorf("attempt 2: prepare postcopy %v id %s; start postcopy %v auto-converge %v channels %d preempt %v id %s; want hybrid's knobs under mig-1-a2",
			p.Postcopy, p.MigrationId, st.Postcopy, st.AutoConverge, st.MultifdChannels, st.GetTuning().GetPostcopyPreempt(), st.MigrationId)
	}
	if !strings.Contains(calls, "AbortIncoming") || !strings.Contains(calls, "CancelOutgoing") || strings.Count(calls, "StartOutgoing") != 2 {
		t.Errorf("agent calls %s: want attempt 1 undone and two transfers", calls)
	}
	if len(*replans) != 2 || (*replans)[1] != "hybrid" {
		t.Errorf("replans %v: want a failed one, then hybrid", *replans)
	}
	pr := recs.get("mig-1")
	if pr.GetVersion() != 3 || pr.GetStrategy() != "hybrid" || pr.GetRetries()[0].GetStrategy() != "hybrid" || !pr.GetOptions().GetAuto() {
		t.Errorf("stored record: version %d strategy %s retries %v auto %v; want a version 3 record of the hybrid retry",
			pr.GetVersion(), pr.GetStrategy(), pr.GetRetries(), pr.GetOptions().GetAuto())
	}
}

// TestEngineNeverRetriesAnExplicitPrecopy: the same request for a pre-copy
// the operator named is refused by the core: no second attempt, the
// report still says precopy and the note says why.
func TestEngineNeverRetriesAnExplicitPrecopy(t *testing.T) {
	e, pair, _, replans := startStuckPrecopy(t, false, 0)
	steerWhenTransferring(t, e, "precopy did not converge")
	deadline := time.Now().Add(5 * time.Second)
	for {
		_, rec := e.lookup("mig-1").current()
		if strings.Contains(rec.Note, "not retried as hybrid") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("note %q: want the refusal", rec.Note)
		}
		time.Sleep(2 * time.Millisecond)
	}
	m, _ := e.Get("mig-1", false)
	pair.mu.Lock()
	defer pair.mu.Unlock()
	if m.Strategy != "precopy" || m.Attempt != 1 || len(m.Retries) != 0 || len(*replans) != 0 || strings.Contains(strings.Join(pair.calls, " "), "AbortIncoming") {
		t.Fatalf("report strategy %s attempt %d retries %v, replans %v, calls %v: want the pre-copy left alone", m.Strategy, m.Attempt, m.Retries, *replans, pair.calls)
	}
}

// TestReporterTurnsTheControllersRetryIntoAReplan: a real controller of an
// auto-chosen pre-copy at its cap asks for the retry; the reporter records
// the decision line and hands the core SteerReplan with hybrid.
func TestReporterTurnsTheControllersRetryIntoAReplan(t *testing.T) {
	in := planner.Inputs{MemoryBytes: 2 << 30, NonZeroBytes: 1 << 30, DirtyRateBytesPerSec: 120 << 20, BandwidthBytesPerSec: 100 << 20,
		MaxDowntime: 300 * time.Millisecond, StepDowntime: true,
		Policy: planner.Policy{AllowPrecopy: true, AllowConverge: true, AllowPostcopy: true}}
	ctrl := planner.NewSteppedController(in, planner.ControllerOptions{DowntimeOnly: true, AutoChosen: true})
	r := newReporter(&ferryv1.Migration{Id: "mig-1", Strategy: "precopy", StartedAt: nil}, ctrl)
	r.m.StartedAt = nil
	type steered struct {
		s   core.Steer
		as  core.Strategy
		why string
	}
	got := make(chan steered, 1)
	r.steer = func(s core.Steer, as core.Strategy, why string) { got <- steered{s, as, why} }
	for _, smp := range []struct {
		at        time.Duration
		round     int64
		remaining int64
	}{{10300 * time.Millisecond, 2, 410 << 20}, {14500 * time.Millisecond, 3, 408 << 20}, {18600 * time.Millisecond, 4, 406 << 20}} {
		r.mu.Lock()
		r.transfer = time.Now().Add(-smp.at)
		r.mu.Unlock()
		r.Outgoing(core.ActQueryOutgoing, &agentv1.OutgoingStatus{Status: "active", DirtySyncCount: smp.round, RemainingBytes: smp.remaining,
			TotalBytes: 2 << 30, TransferredBytes: 1 << 30, PageSize: 4096, DirtyPagesRate: 120 * 256, Mbps: float64(100<<20) * 8 / 1e6})
	}
	select {
	case s := <-got:
		if s.s != core.SteerReplan || s.as != core.Hybrid || !strings.HasPrefix(s.why, "precopy did not converge in ") ||
			!strings.Contains(s.why, "after its downtime target reached its cap 270ms: retried as hybrid") {
			t.Fatalf("steer %v as %q why %q: want SteerReplan as hybrid with the controller's reason", s.s, s.as, s.why)
		}
	case <-time.After(2 * time.Second):
		t.Fatalf("no steer; decisions %v", r.m.Decisions)
	}
	if n := len(r.m.Decisions); n == 0 || r.m.Decisions[n-1].Action != "abort" || !strings.Contains(r.m.Decisions[n-1].Reason, "retried as hybrid") {
		t.Fatalf("decisions %v: want the abort with its reason last", r.m.Decisions)
	}
}
