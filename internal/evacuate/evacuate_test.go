package evacuate

import (
	"testing"
	"time"

	"github.com/ferryvm/ferry/internal/placement"
	"github.com/ferryvm/ferry/internal/planner"
	"github.com/ferryvm/ferry/internal/scripttest"
)

// TestScheduleLimits checks Schedule's per-source, per-destination and
// cluster limits with moves out of several hosts (the balancer's case).
func TestScheduleLimits(t *testing.T) {
	mv := func(vm, from, to string, sec int) Move {
		return Move{VM: vm, From: from, To: to, Prediction: planner.Prediction{Total: time.Duration(sec) * time.Second}}
	}
	moves := []Move{mv("a", "h1", "h3", 10), mv("b", "h1", "h4", 10), mv("c", "h2", "h3", 5), mv("d", "h2", "h5", 5)}
	eta := Schedule(moves, 2, 1, 1)
	// Longest first: a (h1->h3) starts; b cannot leave h1 beside it, c
	// cannot join it on h3; d (h2->h5) runs beside it until 5s. When a
	// ends at 10s, b and c start and end at 20s.
	for _, m := range moves {
		for _, o := range moves {
			if m.VM == o.VM || o.Start > m.Start || m.Start >= o.End {
				continue
			}
			if m.From == o.From || m.To == o.To {
				t.Errorf("%s and %s overlap on a host (%v-%v, %v-%v)", m.VM, o.VM, m.Start, m.End, o.Start, o.End)
			}
		}
	}
	if eta != 20*time.Second {
		t.Errorf("eta = %v, want 20s", eta)
	}
}

// TestPlanDrainLeavesInputAlone: planning twice gives the same plan and
// does not change the caller's hosts (allocations, anti-affinity groups).
func TestPlanDrainLeavesInputAlone(t *testing.T) {
	in := Input{Source: "h1", Bandwidth: scripttest.Bandwidths{{"*", "*"}: 100 << 20},
		Hosts: []Host{
			{Host: placement.Host{Name: "h1", CPUs: 8, MemoryMiB: 32 << 10}, Health: Healthy},
			{Host: placement.Host{Name: "h2", CPUs: 8, MemoryMiB: 32 << 10, Groups: map[string]int{"x": 1}}, Schedulable: true, Health: Healthy},
			{Host: placement.Host{Name: "h3", CPUs: 8, MemoryMiB: 32 << 10}, Schedulable: true, Health: Healthy},
		},
		VMs: []VM{{Name: "a", VCPUs: 1, MemoryMiB: 1024, AntiAffinity: []string{"y"}}, {Name: "b", VCPUs: 1, MemoryMiB: 1024, AntiAffinity: []string{"y"}}}}
	p1, err := PlanDrain(in)
	if err != nil {
		t.Fatal(err)
	}
	p2, _ := PlanDrain(in)
	if len(p1.Moves) != 2 || p1.Moves[0].To == p1.Moves[1].To {
		t.Fatalf("want a and b on different hosts (anti-affinity y): %v", p1.Lines())
	}
	if len(p2.Moves) != 2 || p2.Moves[0] != p1.Moves[0] || p2.Moves[1] != p1.Moves[1] {
		t.Fatalf("second plan differs:\n%v\n%v", p1.Lines(), p2.Lines())
	}
	if in.Hosts[1].AllocatedMemoryMiB != 0 || len(in.Hosts[1].Groups) != 1 || in.Hosts[2].Groups != nil {
		t.Fatalf("PlanDrain changed the input hosts: %+v", in.Hosts)
	}
}
