package sim

import (
	"fmt"
	"math/rand"
	"slices"
	"strings"
	"time"

	"github.com/ferryvm/ferry/internal/migration/core"
)

// Scenario is a strategy and the VM's state before the migration.
type Scenario struct {
	Name     string
	Strategy core.Strategy
	Prev     core.VMState
	// LocalDisks gives the VM a local disk: live strategies mirror it to
	// the destination's NBD export first (core.Mirroring).
	LocalDisks bool
	// PostcopyAtBytes sets the planner's switch point in RAM bytes
	// (core.Options.PostcopyAtBytes); the fake's round 1 then lasts
	// postcopyRoundTicks ticks so the point falls inside it.
	PostcopyAtBytes int64
	// Stuck: the guest outruns plain pre-copy (WithStuckGuest); Auto: the
	// planner chose the strategy; ReplanAs: what the controller asks a
	// stuck pre-copy to be retried as (replan.go).
	Stuck    bool
	Auto     bool
	ReplanAs core.Strategy
}

// postcopyRoundTicks is how many ticks round 1 lasts in the byte switch
// point scenarios (1 MiB of RAM per tick).
const postcopyRoundTicks = 4

// newWorld builds a scenario's world with the seed.
func newWorld(s Scenario, seed int64) *World {
	w := NewWorld(s.Strategy, s.Prev, seed)
	if s.LocalDisks {
		w.WithLocalDisks()
	}
	if s.PostcopyAtBytes > 0 {
		w.WithPostcopyAtBytes(s.PostcopyAtBytes, postcopyRoundTicks)
	}
	if s.Stuck {
		w.WithStuckGuest(s.Auto, s.ReplanAs)
	}
	return w
}

// Scenarios is every strategy the engine has; cold twice (running and stopped VM).
var Scenarios = []Scenario{
	{Name: "precopy", Strategy: core.Precopy, Prev: core.VMRunning},
	{Name: "converge", Strategy: core.Converge, Prev: core.VMRunning},
	{Name: "postcopy", Strategy: core.Postcopy, Prev: core.VMRunning},
	{Name: "hybrid", Strategy: core.Hybrid, Prev: core.VMRunning},
	{Name: "cold-running", Strategy: core.Cold, Prev: core.VMRunning},
	{Name: "cold-stopped", Strategy: core.Cold, Prev: core.VMStopped},
	{Name: "precopy-disks", Strategy: core.Precopy, Prev: core.VMRunning, LocalDisks: true},
	{Name: "postcopy-disks", Strategy: core.Postcopy, Prev: core.VMRunning, LocalDisks: true},
	// The switch point in bytes: 2 MiB of RAM into a 4 MiB round 1 (with
	// a disk, the mirror's bytes must not count towards it).
	{Name: "postcopy-bytes", Strategy: core.Postcopy, Prev: core.VMRunning, PostcopyAtBytes: 2 << 20},
	{Name: "postcopy-disks-bytes", Strategy: core.Postcopy, Prev: core.VMRunning, LocalDisks: true, PostcopyAtBytes: 2 << 20},
	{Name: "cold-running-disks", Strategy: core.Cold, Prev: core.VMRunning, LocalDisks: true},
	{Name: "cold-stopped-disks", Strategy: core.Cold, Prev: core.VMStopped, LocalDisks: true},
}

// Case is one simulated run: a scenario with one fault at one step.
type Case struct {
	Scenario Scenario
	Step     int
	Fault    Fault
	Seed     int64
}

// String names the case for reports.
func (c Case) String() string {
	return fmt.Sprintf("%s fault=%s at step %d (seed %d)", c.Scenario.Name, c.Fault, c.Step, c.Seed)
}

// Result is what one case did.
type Result struct {
	Case       Case
	Steps      int
	Trace      []string
	Violations []string
	Final      string
	Outcome    core.State
	// Took is the simulated time from the start to the terminal state.
	Took time.Duration
	// Attempts is how many attempts the migration made (retry.go).
	Attempts int32
}

// RunCase runs one case to quiescence and checks it. mutate, when set,
// breaks the core's output on purpose (the checker's own test).
func RunCase(c Case, mutate func(core.Record, *core.Ready)) Result {
	w := newWorld(c.Scenario, c.Seed)
	w.Mutate = mutate
	w.SetFlaps(scenarioFlaps[c.Scenario.Name])
	if c.Fault != NoFault {
		w.Hook = func(w *World, k int, a core.Action) Disposition {
			if k != c.Step {
				return DispDeliver
			}
			return w.Inject(c.Fault, a)
		}
	}
	w.Start()
	w.Run()
	if len(w.Violations) == 0 {
		w.CheckEnd()
		w.checkRetryEnd(w.Record(), c.Fault != NoFault)
		w.checkReplanEnd(w.Record(), c.Fault != NoFault)
	}
	rec := w.Record()
	return Result{Case: c, Steps: w.Steps, Trace: w.Trace, Violations: dedup(w.Violations), Final: w.Summary(), Outcome: rec.State,
		Took: rec.FinishedAt.Sub(rec.StartedAt), Attempts: rec.Attempt}
}

func dedup(v []string) []string {
	var out []string
	seen := map[string]bool{}
	for _, s := range v {
		if !seen[s] {
			seen[s] = true
			out = append(out, s)
		}
	}
	return out
}

// HappyPath returns the steps of a scenario without faults.
func HappyPath(s Scenario, seed int64) Result {
	return RunCase(Case{Scenario: s, Fault: NoFault, Seed: seed}, nil)
}

// Exploration is the summary of a run over every scenario × step × fault.
type Exploration struct {
	Cases      int
	PerScen    map[string]int
	Outcomes   map[core.State]int
	Violations []Result // every violating case
	// Longest is the longest simulated time a case took to end.
	Longest time.Duration
	// Retried counts the cases that made more than one attempt.
	Retried int
}

// Shortest is the violating case with the shortest trace.
func (e *Exploration) Shortest() *Result {
	var best *Result
	for i := range e.Violations {
		v := &e.Violations[i]
		if best == nil || len(v.Trace) < len(best.Trace) {
			best = v
		}
	}
	return best
}

// Explore runs every scenario's happy path, then every step index × every
// fault kind.
func Explore(seed int64, mutate func(core.Record, *core.Ready)) *Exploration {
	return exploreScenarios(append(slices.Clone(Scenarios), RetryScenarios...), AllFaults, seed, mutate)
}

func exploreScenarios(scen []Scenario, faults []Fault, seed int64, mutate func(core.Record, *core.Ready)) *Exploration {
	e := &Exploration{PerScen: map[string]int{}, Outcomes: map[core.State]int{}}
	for _, s := range scen {
		happy := RunCase(Case{Scenario: s, Fault: NoFault, Seed: seed}, mutate)
		e.add(happy)
		for k := 0; k < happy.Steps; k++ {
			for _, f := range faults {
				e.add(RunCase(Case{Scenario: s, Step: k, Fault: f, Seed: seed + int64(k)}, mutate))
			}
		}
	}
	return e
}

func (e *Exploration) add(r Result) {
	e.Cases++
	e.PerScen[r.Case.Scenario.Name]++
	e.Outcomes[r.Outcome]++
	e.Longest = max(e.Longest, r.Took)
	if r.Attempts > 1 {
		e.Retried++
	}
	if len(r.Violations) > 0 {
		e.Violations = append(e.Violations, r)
	}
}

// Report renders a violating case: the case, the violations, the trace.
func (r *Result) Report() string {
	var b strings.Builder
	fmt.Fprintf(&b, "case: %s\nviolations:\n", r.Case)
	for _, v := range r.Violations {
		fmt.Fprintf(&b, "  - %s\n", v)
	}
	fmt.Fprintf(&b, "end: %s\ntrace (%d lines):\n", r.Final, len(r.Trace))
	for _, t := range r.Trace {
		fmt.Fprintf(&b, "  %s\n", t)
	}
	return b.String()
}

// PairCase is a run with two faults: f1 at step k1, then f2 at step k2 (of
// that run's own steps, k2 > k1) — so the second lands in whatever path the
// first one caused (recovery, rollback, unswitch).
type PairCase struct {
	Scenario Scenario
	K1, K2   int
	F1, F2   Fault
	Seed     int64
}

// RunPair runs one two-fault case.
func RunPair(c PairCase, mutate func(core.Record, *core.Ready)) Result {
	w := newWorld(c.Scenario, c.Seed)
	w.Mutate = mutate
	w.SetFlaps(scenarioFlaps[c.Scenario.Name])
	w.Hook = func(w *World, k int, a core.Action) Disposition {
		switch k {
		case c.K1:
			return w.Inject(c.F1, a)
		case c.K2:
			return w.Inject(c.F2, a)
		}
		return DispDeliver
	}
	w.Start()
	w.Run()
	if len(w.Violations) == 0 {
		w.CheckEnd()
		w.checkReplanEnd(w.Record(), true)
	}
	name := fmt.Sprintf("%s+%s", c.F1, c.F2)
	rec := w.Record()
	return Result{Case: Case{Scenario: c.Scenario, Step: c.K1, Fault: Fault(name), Seed: c.Seed}, Steps: w.Steps, Trace: w.Trace,
		Violations: dedup(w.Violations), Final: w.Summary(), Outcome: rec.State, Took: rec.FinishedAt.Sub(rec.StartedAt)}
}

// ExplorePairs samples n two-fault cases per scenario from seed.
func ExplorePairs(seed int64, n int, mutate func(core.Record, *core.Ready)) *Exploration {
	rng := rand.New(rand.NewSource(seed))
	e := &Exploration{PerScen: map[string]int{}, Outcomes: map[core.State]int{}}
	for _, s := range append(slices.Clone(Scenarios), RetryScenarios...) {
		steps := HappyPath(s, seed).Steps
		for i := 0; i < n; i++ {
			k1 := rng.Intn(steps)
			c := PairCase{Scenario: s, K1: k1, K2: k1 + 1 + rng.Intn(12), F1: AllFaults[rng.Intn(len(AllFaults))],
				F2: AllFaults[rng.Intn(len(AllFaults))], Seed: seed + int64(i)}
			e.add(RunPair(c, mutate))
		}
	}
	return e
}

// Merge adds another exploration's counts and violations to e.
func (e *Exploration) Merge(o *Exploration) {
	e.Cases += o.Cases
	for k, v := range o.PerScen {
		e.PerScen[k] += v
	}
	for k, v := range o.Outcomes {
		e.Outcomes[k] += v
	}
	e.Violations = append(e.Violations, o.Violations...)
	e.Longest = max(e.Longest, o.Longest)
	e.Retried += o.Retried
}

// ExploreTriples samples n cases with three faults each (at increasing
// steps) over all scenarios.
func ExploreTriples(seed int64, n int) *Exploration {
	rng := rand.New(rand.NewSource(seed))
	e := &Exploration{PerScen: map[string]int{}, Outcomes: map[core.State]int{}}
	for i := 0; i < n; i++ {
		s := Scenarios[rng.Intn(len(Scenarios))]
		ks := []int{rng.Intn(25)}
		ks = append(ks, ks[0]+1+rng.Intn(10))
		ks = append(ks, ks[1]+1+rng.Intn(10))
		fs := []Fault{AllFaults[rng.Intn(len(AllFaults))], AllFaults[rng.Intn(len(AllFaults))], AllFaults[rng.Intn(len(AllFaults))]}
		w := newWorld(s, seed+int64(i))
		w.Hook = func(w *World, k int, a core.Action) Disposition {
			for j := range ks {
				if ks[j] == k {
					return w.Inject(fs[j], a)
				}
			}
			return DispDeliver
		}
		w.Start()
		w.Run()
		if len(w.Violations) == 0 {
			w.CheckEnd()
		}
		rec := w.Record()
		name := fmt.Sprintf("%s@%d+%s@%d+%s@%d", fs[0], ks[0], fs[1], ks[1], fs[2], ks[2])
		e.add(Result{Case: Case{Scenario: s, Step: ks[0], Fault: Fault(name), Seed: seed + int64(i)}, Steps: w.Steps, Trace: w.Trace,
			Violations: dedup(w.Violations), Final: w.Summary(), Outcome: rec.State, Took: rec.FinishedAt.Sub(rec.StartedAt)})
	}
	return e
}
