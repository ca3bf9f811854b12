package fleetsim

import (
	"testing"

	"github.com/ferryvm/ferry/internal/balance"
	"github.com/ferryvm/ferry/internal/evacuate"
)

// TestFakeFleetPlans plans a drain and a rebalance of a small fake fleet
// and checks the plans' invariants (not their speed).
func TestFakeFleetPlans(t *testing.T) {
	f := New(1, 50, 1000)
	if len(f.VMs) < 900 {
		t.Fatalf("only %d of 1000 fake VMs placed", len(f.VMs))
	}
	again := New(1, 50, 1000)
	if again.VMs[17].Host != f.VMs[17].Host || again.VMs[17].DirtyRateBytesPerSec != f.VMs[17].DirtyRateBytesPerSec {
		t.Fatal("the same seed gave a different fleet")
	}
	src := f.Busiest()
	in := f.DrainInput(src)
	plan, err := evacuate.PlanDrain(in)
	if err != nil {
		t.Fatal(err)
	}
	if len(plan.Moves)+len(plan.Unplaced) != len(in.VMs) || len(plan.Moves) == 0 {
		t.Fatalf("drain of %s: %d moves + %d unplaced for %d VMs", src, len(plan.Moves), len(plan.Unplaced), len(in.VMs))
	}
	for _, m := range plan.Moves {
		if m.To == src {
			t.Fatalf("%s placed on its source", m.VM)
		}
	}
	bin := f.BalanceInput()
	res, err := balance.Propose(bin)
	if err != nil {
		t.Fatal(err)
	}
	if res.Before > 0.1 && (len(res.Proposals) == 0 || res.After >= res.Before) {
		t.Fatalf("rebalance: imbalance %.3f -> %.3f with %d proposals", res.Before, res.After, len(res.Proposals))
	}
	seen := map[string]bool{}
	for _, p := range res.Proposals {
		if seen[p.VM] {
			t.Fatalf("%s proposed twice in one plan", p.VM)
		}
		seen[p.VM] = true
	}
}
