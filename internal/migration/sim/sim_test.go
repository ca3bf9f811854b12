package sim

import (
	"fmt"
	"os"
	"slices"
	"strconv"
	"testing"

	"github.com/ferryvm/ferry/internal/migration/core"
)

func TestHappyPaths(t *testing.T) {
	for _, s := range Scenarios {
		r := HappyPath(s, 1)
		if len(r.Violations) > 0 || r.Outcome != "completed" {
			t.Errorf("%s: outcome %s\n%s", s.Name, r.Outcome, r.Report())
			continue
		}
		t.Logf("%s: %d steps; %s", s.Name, r.Steps, r.Final)
	}
}

// TestPostcopySwitchPointInBytes: with Options.PostcopyAtBytes the engine
// asks for post-copy inside round 1 once that much RAM went (the mirror's
// bytes not counted), not at round 2 as without it.
func TestPostcopySwitchPointInBytes(t *testing.T) {
	for _, s := range Scenarios {
		if s.PostcopyAtBytes == 0 {
			continue
		}
		w := newWorld(s, 1)
		src := w.Agents[core.Src].vm.qemu
		w.Start()
		w.Run()
		if len(w.Violations) == 0 {
			w.CheckEnd()
		}
		if len(w.Violations) > 0 || w.Record().State != core.Completed {
			t.Fatalf("%s: ended %s, violations %v", s.Name, w.Record().State, w.Violations)
		}
		if src.pcAskedRound != 1 || src.pcAskedRAM < s.PostcopyAtBytes || src.pcAskedRAM >= postcopyRoundTicks<<20 {
			t.Errorf("%s: post-copy asked in round %d after %d RAM bytes; want round 1, at or after %d bytes and before its end",
				s.Name, src.pcAskedRound, src.pcAskedRAM, s.PostcopyAtBytes)
		}
		t.Logf("%s: post-copy asked in round %d after %d KiB of RAM (switch point %d KiB)", s.Name, src.pcAskedRound, src.pcAskedRAM>>10, s.PostcopyAtBytes>>10)
	}
}

// TestFaultExploration runs every scenario × every step of its happy path ×
// every fault kind and checks the invariants.
//
// FERRY_SIM_SEEDS=N explores N seeds (each orders concurrent replies
// differently); the default is one.
func TestFaultExploration(t *testing.T) {
	seeds := 1
	if v := os.Getenv("FERRY_SIM_SEEDS"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			t.Fatalf("FERRY_SIM_SEEDS=%q: want a number of seeds >= 1", v)
		}
		seeds = n
	}
	e := Explore(1, nil)
	for seed := 2; seed <= seeds; seed++ {
		e.Merge(Explore(int64(seed)*1000, nil))
	}
	summary := fmt.Sprintf("fault exploration: %d cases (%d scenarios × steps × %d fault kinds + happy paths, %d seed(s)), %d violations; outcomes %v; longest case %s simulated; %d cases retried an attempt",
		e.Cases, len(Scenarios)+len(RetryScenarios), len(AllFaults), seeds, len(e.Violations), e.Outcomes, e.Longest, e.Retried)
	t.Log(summary)
	fmt.Println(summary)
	for _, s := range append(slices.Clone(Scenarios), RetryScenarios...) {
		t.Logf("  %s: %d cases", s.Name, e.PerScen[s.Name])
	}
	if len(e.Violations) > 0 {
		groups := map[string]int{}
		for _, v := range e.Violations {
			groups[v.Case.Scenario.Name+"/"+string(v.Case.Fault)+": "+v.Violations[0]]++
		}
		for g, n := range groups {
			t.Logf("  %4d × %s", n, g)
		}
		t.Errorf("shortest violating trace:\n%s", e.Shortest().Report())
	}
}

// TestCheckerCatchesBrokenRule breaks one rule of the core on purpose —
// after the owner CAS the source is resumed (CancelOutgoing with
// resume_completed) instead of quit — and expects the checker to report it.
func TestCheckerCatchesBrokenRule(t *testing.T) {
	resumeAfterCAS := func(rec core.Record, ready *core.Ready) {
		for i, a := range ready.Actions {
			if a.Kind == core.ActFinishOutgoing {
				ready.Actions[i] = core.Action{Kind: core.ActCancelOutgoing, Side: core.Src, ResumeCompleted: true}
			}
		}
	}
	r := RunCase(Case{Scenario: Scenarios[0], Fault: NoFault, Seed: 1}, resumeAfterCAS)
	if len(r.Violations) == 0 {
		t.Fatalf("the checker missed a source resumed after the CAS:\n%s", r.Report())
	}
	t.Logf("caught: %v", r.Violations)
	e := exploreScenarios([]Scenario{Scenarios[0]}, []Fault{CrashServer, LoseReply}, 1, resumeAfterCAS)
	if len(e.Violations) == 0 {
		t.Fatal("the exploration found no violation with a broken core")
	}
	t.Logf("broken core: %d of %d cases violate; shortest:\n%s", len(e.Violations), e.Cases, e.Shortest().Report())
	fmt.Printf("checker self-test: a core that resumes the source after the owner CAS is caught (%d of %d cases violate; first: %s)\n",
		len(e.Violations), e.Cases, r.Violations[0])
}

// TestPairFaults samples two faults per case (the second lands in the
// recovery path the first caused).
//
// FERRY_SIM_PAIRS=N samples N cases per scenario (default 150).
func TestPairFaults(t *testing.T) {
	n := 150
	if v := os.Getenv("FERRY_SIM_PAIRS"); v != "" {
		var err error
		if n, err = strconv.Atoi(v); err != nil || n < 1 {
			t.Fatalf("FERRY_SIM_PAIRS=%q: want a number of cases >= 1", v)
		}
	}
	e := ExplorePairs(7, n, nil)
	summary := fmt.Sprintf("pair-fault exploration: %d cases, %d violations; outcomes %v; longest case %s simulated", e.Cases, len(e.Violations), e.Outcomes, e.Longest)
	t.Log(summary)
	fmt.Println(summary)
	if len(e.Violations) > 0 {
		groups := map[string]int{}
		for _, v := range e.Violations {
			groups[v.Case.Scenario.Name+"/"+string(v.Case.Fault)+": "+v.Violations[0]]++
		}
		for g, n := range groups {
			t.Logf("  %4d × %s", n, g)
		}
		t.Errorf("shortest violating trace:\n%s", e.Shortest().Report())
	}
}

// TestCheckerCatchesMoreBrokenRules: each deliberately broken rule must be
// reported by the checker in its scenario's happy path.
func TestCheckerCatchesMoreBrokenRules(t *testing.T) {
	for _, tc := range []struct {
		name   string
		scen   Scenario
		mutate func(core.Record, *core.Ready)
	}{
		{"the VM record is never released", Scenarios[0], func(_ core.Record, r *core.Ready) {
			for i, a := range r.Actions {
				if a.Kind == core.ActUpdateVM {
					r.Actions[i] = core.Action{Kind: core.ActSetTimer, At: a.At}
				}
			}
		}},
		{"a stopped VM is booted by its cold migration", Scenarios[5], func(_ core.Record, r *core.Ready) {
			for _, a := range r.Actions {
				if a.Kind == core.ActDeleteVM && a.Side == core.Src {
					r.Actions = append(r.Actions, core.Action{Kind: core.ActStartVM, Side: core.Dst})
					return
				}
			}
		}},
		{"the source is resumed after the CAS without moving the owner back", Scenarios[0], func(_ core.Record, r *core.Ready) {
			for i, a := range r.Actions {
				if a.Kind == core.ActContinueOutgoing { // the first action after the CAS (the arm precedes it)
					r.Actions[i] = core.Action{Kind: core.ActCancelOutgoing, Side: core.Src}
				}
			}
		}},
		{"migrate-continue before the owner CAS (the destination is armed before it)", Scenarios[0], func(rec core.Record, r *core.Ready) {
			for i, a := range r.Actions {
				if a.Kind == core.ActCASOwner && rec.State == core.Switchover {
					r.Actions[i] = core.Action{Kind: core.ActContinueOutgoing, Side: core.Src}
				}
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := RunCase(Case{Scenario: tc.scen, Fault: NoFault, Seed: 1}, tc.mutate)
			if len(r.Violations) == 0 {
				t.Fatalf("not caught:\n%s", r.Report())
			}
			t.Logf("caught: %s", r.Violations[0])
		})
	}
}

// TestTripleFaults samples cases with three faults. FERRY_SIM_TRIPLES=N
// runs N cases (default 300).
func TestTripleFaults(t *testing.T) {
	n := 300
	if v := os.Getenv("FERRY_SIM_TRIPLES"); v != "" {
		var err error
		if n, err = strconv.Atoi(v); err != nil || n < 1 {
			t.Fatalf("FERRY_SIM_TRIPLES=%q: want a number of cases >= 1", v)
		}
	}
	e := ExploreTriples(99, n)
	summary := fmt.Sprintf("triple-fault exploration: %d cases, %d violations; outcomes %v; longest case %s simulated", e.Cases, len(e.Violations), e.Outcomes, e.Longest)
	t.Log(summary)
	fmt.Println(summary)
	if len(e.Violations) > 0 {
		t.Errorf("shortest violating trace:\n%s", e.Shortest().Report())
	}
}

// TestCheckerCatchesBrokenDiskRules breaks a storage rule on purpose: a
// core whose StartOutgoing carries no disk URI (the RAM transfer starts
// without the local disk's mirror) must be caught.
func TestCheckerCatchesBrokenDiskRules(t *testing.T) {
	disks := Scenario{Name: "precopy-disks", Strategy: core.Precopy, Prev: core.VMRunning, LocalDisks: true}
	noMirror := func(rec core.Record, ready *core.Ready) {
		for i, a := range ready.Actions {
			if a.Kind == core.ActStartOutgoing {
				ready.Actions[i].DiskURI = ""
			}
		}
	}
	r := RunCase(Case{Scenario: disks, Fault: NoFault, Seed: 1}, noMirror)
	if len(r.Violations) == 0 {
		t.Fatalf("the checker missed a migration that did not mirror its local disk:\n%s", r.Report())
	}
	t.Logf("caught: %v", r.Violations)
}

// TestCheckerCatchesBrokenColdDiskRules breaks the cold copy's rules on
// purpose: a core that removes the source's disk before the copy is
// verified, and one whose rollback removes the source's disk instead of the
// destination's copy must each be caught.
func TestCheckerCatchesBrokenColdDiskRules(t *testing.T) {
	cold := Scenario{Name: "cold-running-disks", Strategy: core.Cold, Prev: core.VMRunning, LocalDisks: true}
	for _, tc := range []struct {
		name   string
		mutate func(core.Record, *core.Ready)
	}{
		{"the source's disk removed before the copy is verified", func(rec core.Record, ready *core.Ready) {
			for _, a := range ready.Actions {
				if a.Kind == core.ActPrepareDisks {
					ready.Actions = append(ready.Actions, core.Action{Kind: core.ActDeleteVM, Side: core.Src, RemoveDisks: true, MigrationID: a.MigrationID})
				}
			}
		}},
		{"the rollback removes the source's disk", func(rec core.Record, ready *core.Ready) {
			for i, a := range ready.Actions {
				if a.Kind == core.ActDeleteVM && a.Side == core.Dst && rec.State == core.RollingBack {
					ready.Actions[i].Side = core.Src
				}
			}
		}},
	} {
		e := exploreScenarios([]Scenario{cold}, AllFaults, 1, tc.mutate)
		if len(e.Violations) == 0 {
			t.Errorf("%s: the checker missed it in %d cases", tc.name, e.Cases)
			continue
		}
		t.Logf("%s: %d of %d cases caught, e.g. %v", tc.name, len(e.Violations), e.Cases, e.Shortest().Violations)
	}
}
