package balance

import (
	"errors"
	"math"
	"testing"

	"github.com/ferryvm/ferry/internal/placement"
)

func TestImbalance(t *testing.T) {
	h := func(name string, ready bool, cpu float64) Host {
		return Host{Host: placement.Host{Name: name, Ready: ready, CPUs: 10, MemoryMiB: 1000}, CPUUsed: cpu}
	}
	// CPU utilisation 0.2 and 0.6: standard deviation 0.2; the unready
	// host is left out.
	got := Imbalance([]Host{h("a", true, 2), h("b", true, 6), h("c", false, 10)})
	if math.Abs(got-0.2) > 1e-9 {
		t.Fatalf("Imbalance = %v, want 0.2", got)
	}
	if Imbalance(nil) != 0 {
		t.Fatal("no hosts: want 0")
	}
}

func TestProposeRefusesBadInput(t *testing.T) {
	hosts := []Host{{Host: placement.Host{Name: "h1", Ready: true, CPUs: 4, MemoryMiB: 4096}}}
	_, err := Propose(Inputs{Hosts: hosts, VMs: []VM{{Name: "a", Host: "nowhere"}}})
	if !errors.Is(err, ErrInvalidInput) {
		t.Fatalf("VM on unknown host: err = %v, want ErrInvalidInput", err)
	}
	_, err = Propose(Inputs{Hosts: append(hosts, hosts[0])})
	if !errors.Is(err, ErrInvalidInput) {
		t.Fatalf("duplicate host: err = %v, want ErrInvalidInput", err)
	}
}
