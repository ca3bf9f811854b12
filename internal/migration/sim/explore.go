package sim

import (
	"fmt"
	"strings"

	"github.com/ferryvm/ferry/internal/migration/core"
)

// Scenario is a strategy and the VM's state before the migration.
type Scenario struct {
	Name     string
	Strategy core.Strategy
	Prev     core.VMState
}

// Scenarios is every strategy the engine has; cold twice (running and stopped VM).
var Scenarios = []Scenario{
	{"precopy", core.Precopy, core.VMRunning},
	{"converge", core.Converge, core.VMRunning},
	{"postcopy", core.Postcopy, core.VMRunning},
	{"hybrid", core.Hybrid, core.VMRunning},
	{"cold-running", core.Cold, core.VMRunning},
	{"cold-stopped", core.Cold, core.VMStopped},
}

// Case is one simulated run: a scenario with one fault at one step.
type Case struct {
	Scenario Scenario
	Step     int
	Fault    Fault
	Seed     int64
}

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
}

// RunCase runs one case to quiescence and checks it. mutate, when set,
// breaks the core's output on purpose (the checker's own test).
func RunCase(c Case, mutate func(core.Record, *core.Ready)) Result {
	w := NewWorld(c.Scenario.Strategy, c.Scenario.Prev, c.Seed)
	w.Mutate = mutate
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
	}
	return Result{Case: c, Steps: w.Steps, Trace: w.Trace, Violations: dedup(w.Violations), Final: w.Summary(), Outcome: w.Record().State}
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
	e := &Exploration{PerScen: map[string]int{}, Outcomes: map[core.State]int{}}
	for _, s := range Scenarios {
		happy := RunCase(Case{Scenario: s, Fault: NoFault, Seed: seed}, mutate)
		e.add(happy)
		for k := 0; k < happy.Steps; k++ {
			for _, f := range AllFaults {
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
