package server

import (
	"context"
	"strings"
	"testing"
	"time"

	ferryv1 "github.com/ferryvm/ferry/gen/ferry/v1"
	"github.com/ferryvm/ferry/internal/planner"
)

// stuckPlan is a plan of a guest that dirties faster than the link
// carries (the plan's figures say pre-copy converges; they are stale).
func stuckMigration(requested string, opt *ferryv1.MigrationOptions) *ferryv1.Migration {
	in := &ferryv1.PlanInputs{MemoryBytes: 2 << 30, NonZeroBytes: 1 << 30, DirtyRateMibps: 120, BandwidthMibps: 100, MaxDowntimeMs: 300,
		SourceSpareCpus: 2}
	opt.Strategy = "precopy"
	return &ferryv1.Migration{Id: "mig-1", Vm: "web", From: "h1", To: "h2", Strategy: "precopy", Options: opt,
		Plan: &ferryv1.Plan{Inputs: in, Requested: requested, Choice: "precopy"}}
}

// observeStuck feeds a controller a pre-copy stuck at 410 MiB and returns
// the last action.
func observeStuck(c *planner.Controller) planner.Action {
	var a planner.Action
	for _, s := range []planner.Sample{
		{Elapsed: 10300 * time.Millisecond, Round: 2, RemainingBytes: 410 << 20},
		{Elapsed: 14500 * time.Millisecond, Round: 3, RemainingBytes: 408 << 20},
		{Elapsed: 18600 * time.Millisecond, Round: 4, RemainingBytes: 406 << 20},
		{Elapsed: 22700 * time.Millisecond, Round: 5, RemainingBytes: 405 << 20},
	} {
		s.DirtyRateBytesPerSec, s.RateBytesPerSec = 120<<20, 100<<20
		if a = c.Observe(s); a.Kind == planner.Abort {
			return a
		}
	}
	return a
}

// TestControllerRetriesOnlyAnAutoChosenPrecopy: the pre-copy controller of
// a migration auto chose asks for a retry as hybrid (post-copy allowed) or
// converge (--no-postcopy), and asks nothing with --no-postcopy
// --no-throttle or for a pre-copy the operator named.
func TestControllerRetriesOnlyAnAutoChosenPrecopy(t *testing.T) {
	for _, tc := range []struct {
		name      string
		requested string
		opt       *ferryv1.MigrationOptions
		want      string
	}{
		{"auto", "auto", &ferryv1.MigrationOptions{}, "hybrid"},
		{"auto --no-postcopy", "auto", &ferryv1.MigrationOptions{NoPostcopy: true}, "converge"},
		{"auto --no-postcopy --no-throttle", "auto", &ferryv1.MigrationOptions{NoPostcopy: true, NoThrottle: true}, ""},
		{"explicit precopy", "precopy", &ferryv1.MigrationOptions{}, ""},
	} {
		a := observeStuck(controller(stuckMigration(tc.requested, tc.opt)))
		switch {
		case tc.want == "" && a.Kind != planner.None:
			t.Errorf("%s: %s %q (%s), want the pre-copy left alone", tc.name, a.Kind, a.RetryAs, a.Reason)
		case tc.want != "" && (a.Kind != planner.Abort || a.RetryAs != tc.want || !strings.Contains(a.Reason, "retried as "+tc.want)):
			t.Errorf("%s: %s %q (%s), want abort to retry as %s", tc.name, a.Kind, a.RetryAs, a.Reason, tc.want)
		}
	}
}

// TestReplanRetunesForHybrid: the re-plan of a multifd zstd pre-copy as
// hybrid chooses hybrid's tuning (one stream, no compression, preempt on
// hosts that have it) and prediction; the knobs and the controller follow.
func TestReplanRetunesForHybrid(t *testing.T) {
	s, st := newTestServer(t)
	ctx := context.Background()
	for _, name := range []string{"h1", "h2"} {
		h := qemuHost(name, "10.0.2", qemu10...)
		h.Address = "unix:///nonexistent/" + name
		if err := st.PutHost(ctx, h, time.Minute); err != nil {
			t.Fatal(err)
		}
	}
	m := stuckMigration("auto", &ferryv1.MigrationOptions{})
	m.Plan.Inputs.BandwidthMibps, m.Plan.Inputs.DirtyRateMibps = 1200, 40
	h := qemuHost("h1", "10.0.2", qemu10...)
	plan, err := makePlan(m.Plan.Inputs, m.Options, true)
	if err != nil {
		t.Fatal(err)
	}
	plan.Requested = "auto"
	plan.Tuning = tunePlan("precopy", plan.Inputs, m.Options, h, h)
	m.Plan = plan
	if plan.Tuning.MultifdChannels < 2 {
		t.Fatalf("precopy tuning %v: want multifd for this test", plan.Tuning)
	}
	if err := s.replanMigration(ctx, m, "hybrid"); err != nil {
		t.Fatal(err)
	}
	tu := m.GetPlan().GetTuning()
	if m.Strategy != "hybrid" || m.Options.Strategy != "hybrid" || tu.MultifdChannels > 1 || tu.MultifdCompression != "" || !tu.PostcopyPreempt ||
		m.GetPredicted().GetStrategy() != "hybrid" {
		t.Fatalf("re-planned: strategy %s/%s tuning %v predicted %v; want hybrid's", m.Strategy, m.Options.Strategy, tu, m.GetPredicted())
	}
	vm := &ferryv1.VM{Spec: &ferryv1.VMSpec{Name: "web"}}
	if k := knobs(m, vm); k.MultifdChannels > 1 || k.Tuning.GetMultifdCompression() != "" || !k.Tuning.GetPostcopyPreempt() {
		t.Fatalf("knobs after the re-plan: channels %d tuning %v", k.MultifdChannels, k.Tuning)
	}
	if c := controller(m); c == nil {
		t.Fatal("no controller for the re-planned hybrid")
	}
	m.To = "h-gone"
	if err := s.replanMigration(ctx, m, "hybrid"); err == nil || !strings.Contains(err.Error(), "h-gone") {
		t.Fatalf("re-plan with a missing host: %v, want an error naming it", err)
	}
}
