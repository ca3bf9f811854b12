// Package fleetsim is a FAKE, simulated fleet: seeded, made-up hosts and
// VMs with realistic size, dirty-rate and load distributions, used only by
// the planners' benchmarks (make bench-fleet) and tests. Nothing in it
// talks to a host; it never stands in for a real one in an e2e test.
package fleetsim

import (
	"fmt"
	"math"
	"math/rand/v2"

	"github.com/ferryvm/ferry/internal/balance"
	"github.com/ferryvm/ferry/internal/evacuate"
	"github.com/ferryvm/ferry/internal/placement"
	"github.com/ferryvm/ferry/internal/qemucaps"
)

// HostsPerRack is how many fake hosts share a rack (and a fast link).
const HostsPerRack = 20

// Link rates of the fake network: within a rack (25 GbE after protocol
// overhead, shared) and across racks.
const (
	SameRackBytesPerSec  = 1100 << 20
	CrossRackBytesPerSec = 600 << 20
)

// FakeVM is one simulated VM: what the evacuation planner needs, where it
// runs, and its measured use.
type FakeVM struct {
	evacuate.VM
	Host string
	// CPUUsed is its mean CPU use in cores; RSSMiB its resident memory.
	CPUUsed float64
	RSSMiB  float64
}

// FakeFleet is a simulated cluster.
type FakeFleet struct {
	Hosts []evacuate.Host
	VMs   []FakeVM
	rack  map[string]int
}

// Estimate is the fake network's rate between two hosts (it satisfies
// the planners' Bandwidths).
func (f *FakeFleet) Estimate(from, to string) (float64, bool) {
	a, ok1 := f.rack[from]
	b, ok2 := f.rack[to]
	if !ok1 || !ok2 {
		return 0, false
	}
	if a == b {
		return SameRackBytesPerSec, true
	}
	return CrossRackBytesPerSec, true
}

// Two fake QEMU builds: the newer offers pc-q35-10.0 and Icelake-Server.
var (
	oldCaps = qemucaps.Caps{Version: qemucaps.Version{Major: 9, Minor: 2},
		Machines:  []qemucaps.Machine{{Name: "pc-q35-9.2"}, {Name: "pc-q35-9.1"}},
		CPUModels: []qemucaps.CPUModel{{Name: "qemu64", Usable: true}, {Name: "Skylake-Server", Usable: true}}}
	newCaps = qemucaps.Caps{Version: qemucaps.Version{Major: 10, Minor: 0},
		Machines:  []qemucaps.Machine{{Name: "pc-q35-10.0"}, {Name: "pc-q35-9.2"}, {Name: "pc-q35-9.1"}},
		CPUModels: []qemucaps.CPUModel{{Name: "qemu64", Usable: true}, {Name: "Skylake-Server", Usable: true}, {Name: "Icelake-Server", Usable: true}}}
)

// memGiB and memWeight are the VM size distribution (percent).
var (
	memGiB    = []int64{2, 4, 8, 16, 32, 64}
	memWeight = []int{20, 30, 25, 15, 7, 3}
)

// HostDiskBytes is a fake host's data directory size (4 TiB).
const HostDiskBytes = 4 << 40

// New builds a fake fleet of hosts hosts and vms VMs from seed. Hosts have
// 64 or 96 CPUs and 512 or 768 GiB; 60% run the newer fake QEMU. VM sizes
// follow memGiB/memWeight, non-zero RAM is 20–90% of it, dirty rates are
// log-normal (median 8 MiB/s, capped at 1 GiB/s), CPU use 5–80% of the
// vCPUs; local disks of 20 GiB + 2 GiB per GiB of RAM are 30–90%
// allocated against 4 TiB per host (reported free space, as agents do);
// 10% of VMs are in anti-affinity groups of three. Placement is
// skewed (hosts get log-normal weights), so the fleet starts imbalanced.
func New(seed uint64, hosts, vms int) *FakeFleet {
	r := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	f := &FakeFleet{rack: make(map[string]int, hosts)}
	weights := make([]float64, hosts)
	var wsum float64
	for i := 0; i < hosts; i++ {
		name := fmt.Sprintf("fake-host-%04d", i)
		h := evacuate.Host{Host: placement.Host{Name: name, Ready: true, CPUs: 64, MemoryMiB: 512 << 10, DiskFreeBytes: HostDiskBytes}, Schedulable: true, Health: evacuate.Healthy}
		if r.IntN(10) < 3 {
			h.CPUs, h.MemoryMiB = 96, 768<<10
		}
		c := oldCaps
		if r.IntN(10) < 6 {
			c = newCaps
		}
		h.Caps = &c
		f.Hosts = append(f.Hosts, h)
		f.rack[name] = i / HostsPerRack
		weights[i] = math.Exp(r.NormFloat64() * 0.6)
		wsum += weights[i]
	}
	pick := func() int {
		x := r.Float64() * wsum
		for i, w := range weights {
			if x -= w; x <= 0 {
				return i
			}
		}
		return hosts - 1
	}
	group := 0
	for j := 0; j < vms; j++ {
		mem := memGiB[weighted(r, memWeight)]
		vm := FakeVM{VM: evacuate.VM{Name: fmt.Sprintf("fake-vm-%05d", j), MemoryMiB: mem << 10}}
		vm.VCPUs = int(max(1, min(16, mem/4))) * (1 + r.IntN(2))
		used := 0.2 + 0.7*r.Float64()
		vm.NonZeroBytes = int64(float64(mem<<30) * used)
		// Local disks of 20 GiB + 2 GiB per GiB of RAM, allocated as much
		// as the guest uses its RAM (30-90 %).
		vm.DiskBytes = int64(float64((20+mem*2)<<30) * (0.3 + 0.6*(used-0.2)/0.7))
		vm.DirtyRateBytesPerSec = min(float64(1<<30), 8*(1<<20)*math.Exp(r.NormFloat64()*1.2))
		vm.CPUUsed = float64(vm.VCPUs) * (0.05 + 0.75*r.Float64())
		vm.RSSMiB = float64(vm.NonZeroBytes >> 20)
		vm.Needs = qemucaps.VMNeeds{MachineType: "pc-q35-9.2", CPUModel: "qemu64"}
		switch x := r.IntN(10); {
		case x < 2:
			vm.Needs.MachineType = "pc-q35-10.0"
		case x < 4:
			vm.Needs.CPUModel = "Skylake-Server"
		}
		if j%10 == 0 {
			group = j / 30
		}
		if j%10 < 1 {
			vm.AntiAffinity = []string{fmt.Sprintf("fake-group-%04d", group)}
		}
		req := placement.Request{VCPUs: vm.VCPUs, MemoryMiB: vm.MemoryMiB, DiskBytes: vm.DiskBytes, AntiAffinity: vm.AntiAffinity}
		for try := 0; try < 100; try++ {
			h := &f.Hosts[pick()]
			if placement.Check(h.Host, req) != nil || qemucaps.CheckDestination(h.Name, *h.Caps, vm.Needs) != nil {
				continue
			}
			h.Place(req)
			vm.Host = h.Name
			break
		}
		if vm.Host == "" {
			continue // the fleet is full for it: leave it out
		}
		f.VMs = append(f.VMs, vm)
	}
	for i := range f.Hosts { // what an agent reports: free space after its VMs' disks
		h := &f.Hosts[i].Host
		h.DiskFreeBytes, h.AllocatedDiskBytes = h.DiskFreeBytes-h.AllocatedDiskBytes, 0
	}
	return f
}

func weighted(r *rand.Rand, w []int) int {
	total := 0
	for _, x := range w {
		total += x
	}
	x := r.IntN(total)
	for i, v := range w {
		if x -= v; x < 0 {
			return i
		}
	}
	return len(w) - 1
}

// Busiest is the host running the most fake VMs (ties by name).
func (f *FakeFleet) Busiest() string {
	n := map[string]int{}
	for _, vm := range f.VMs {
		n[vm.Host]++
	}
	best := ""
	for _, h := range f.Hosts {
		if best == "" || n[h.Name] > n[best] {
			best = h.Name
		}
	}
	return best
}

// DrainInput is the evacuation of host: every other host as it is, the
// source unschedulable, its VMs to move.
func (f *FakeFleet) DrainInput(host string) evacuate.Input {
	in := evacuate.Input{Source: host, Bandwidth: f}
	for _, h := range f.Hosts {
		if h.Name == host {
			h.Schedulable = false
		}
		in.Hosts = append(in.Hosts, h)
	}
	for _, vm := range f.VMs {
		if vm.Host == host {
			in.VMs = append(in.VMs, vm.VM)
		}
	}
	return in
}

// BalanceInput is the whole fleet as the balancer sees it.
func (f *FakeFleet) BalanceInput() balance.Inputs {
	idx := make(map[string]int, len(f.Hosts))
	in := balance.Inputs{Bandwidth: f}
	for i, h := range f.Hosts {
		idx[h.Name] = i
		in.Hosts = append(in.Hosts, balance.Host{Host: h.Host, Caps: h.Caps})
	}
	for _, vm := range f.VMs {
		h := &in.Hosts[idx[vm.Host]]
		h.CPUUsed += vm.CPUUsed
		h.MemUsedMiB += vm.RSSMiB
		in.VMs = append(in.VMs, balance.VM{Name: vm.Name, Host: vm.Host, VCPUs: vm.VCPUs, MemoryMiB: vm.MemoryMiB,
			CPUUsed: vm.CPUUsed, RSSMiB: vm.RSSMiB, NonZeroBytes: vm.NonZeroBytes, DirtyRateBytesPerSec: vm.DirtyRateBytesPerSec,
			AntiAffinity: vm.AntiAffinity, Labels: vm.Labels, Needs: vm.Needs, DiskBytes: vm.DiskBytes})
	}
	return in
}
