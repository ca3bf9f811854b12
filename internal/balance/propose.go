package balance

import (
	"fmt"
	"math"
	"sort"
	"time"

	"github.com/ferryvm/ferry/internal/placement"
	"github.com/ferryvm/ferry/internal/planner"
	"github.com/ferryvm/ferry/internal/policy"
	"github.com/ferryvm/ferry/internal/qemucaps"
)

// sourcesPerStep is how many of the most loaded hosts each step looks at.
const sourcesPerStep = 4

// minCost is the least cost of a move (GiB-equivalents), so a ratio is finite.
const minCost = 1e-3

// stats keeps Σu and Σu² of one resource's utilisation over the hosts.
type stats struct{ s1, s2, n float64 }

func (s stats) variance() float64 { return max(s.s2/s.n-(s.s1/s.n)*(s.s1/s.n), 0) }

// moved is s after one host's utilisation went from a to a2 and another's
// from b to b2.
func (s stats) moved(a, a2, b, b2 float64) stats {
	return stats{s.s1 - a - b + a2 + b2, s.s2 - a*a - b*b + a2*a2 + b2*b2, s.n}
}

type cost struct {
	ok       bool
	strategy string
	pred     planner.Prediction
	cost     float64
}

type planState struct {
	hosts  []Host
	vms    []VM
	ucpu   []float64
	umem   []float64
	onHost [][]int
	cpu    stats
	mem    stats
	eff    map[int]policy.Effective
	costs  map[[2]int]cost // vm, bandwidth (bytes/s, rounded)
	in     Inputs
	cfg    Config
	moved  map[int]bool
}

// Inputs are what Propose plans from.
type Inputs struct {
	Hosts     []Host
	VMs       []VM
	Policies  policy.Set
	Bandwidth Bandwidths
	Config    Config
	State     State
}

// Imbalance is the larger of the standard deviations of the hosts' CPU
// and memory utilisation (over Ready hosts).
func Imbalance(hosts []Host) float64 {
	var c, m stats
	for _, h := range hosts {
		if !h.Ready {
			continue
		}
		uc, um := util(h)
		c = stats{c.s1 + uc, c.s2 + uc*uc, c.n + 1}
		m = stats{m.s1 + um, m.s2 + um*um, m.n + 1}
	}
	if c.n == 0 {
		return 0
	}
	return math.Sqrt(max(c.variance(), m.variance()))
}

func util(h Host) (cpu, mem float64) {
	return h.CPUUsed / float64(max(h.CPUs, 1)), h.MemUsedMiB / float64(max(h.MemoryMiB, 1))
}

// Propose plans the migrations that bring the imbalance down to
// Threshold − Hysteresis, best gain per cost first, one move at a time,
// each from one of the most loaded hosts to one of the least loaded that
// can take the VM (placement.Check, QEMU compatibility) and for which the
// planner finds a strategy within the VM's policy. Every move strictly
// lowers the objective and no VM moves twice in a plan, so a plan cannot
// ping-pong; the cooldown keeps consecutive plans from doing so.
func Propose(in Inputs) (Result, error) {
	if err := in.Policies.Validate(); err != nil {
		return Result{}, fmt.Errorf("%w: %w", ErrInvalidInput, err)
	}
	cfg := in.Config.withDefaults()
	if cfg.Hysteresis >= cfg.Threshold {
		return Result{}, fmt.Errorf("%w: config.hysteresis %.3f must be below config.threshold %.3f", ErrInvalidInput, cfg.Hysteresis, cfg.Threshold)
	}
	p := &planState{hosts: append([]Host(nil), in.Hosts...), vms: in.VMs, in: in, cfg: cfg,
		eff: map[int]policy.Effective{}, costs: map[[2]int]cost{}, moved: map[int]bool{}}
	byName := map[string]int{}
	for i, h := range p.hosts {
		if _, dup := byName[h.Name]; dup {
			return Result{}, fmt.Errorf("%w: host %q listed twice", ErrInvalidInput, h.Name)
		}
		byName[h.Name] = i
	}
	p.ucpu, p.umem = make([]float64, len(p.hosts)), make([]float64, len(p.hosts))
	p.onHost = make([][]int, len(p.hosts))
	for i, h := range p.hosts {
		if h.Ready {
			p.ucpu[i], p.umem[i] = util(h)
			p.cpu = stats{p.cpu.s1 + p.ucpu[i], p.cpu.s2 + p.ucpu[i]*p.ucpu[i], p.cpu.n + 1}
			p.mem = stats{p.mem.s1 + p.umem[i], p.mem.s2 + p.umem[i]*p.umem[i], p.mem.n + 1}
		}
	}
	for j, vm := range in.VMs {
		i, ok := byName[vm.Host]
		if !ok {
			return Result{}, fmt.Errorf("%w: VM %q is on unknown host %q", ErrInvalidInput, vm.Name, vm.Host)
		}
		p.onHost[i] = append(p.onHost[i], j)
	}
	res := Result{Before: p.imbalance()}
	if p.cpu.n < 2 {
		res.After, res.Why = res.Before, "fewer than two schedulable hosts"
		return res, nil
	}
	low := cfg.Threshold - cfg.Hysteresis
	if !in.State.Active && res.Before <= cfg.Threshold {
		res.After, res.Why = res.Before, fmt.Sprintf("imbalance %.3f ≤ threshold %.3f", res.Before, cfg.Threshold)
		return res, nil
	}
	res.Active = true
	cooling := map[string]bool{}
	for len(res.Proposals) < cfg.MaxMoves {
		imb := p.imbalance()
		if imb <= low {
			res.Active = false
			res.Why = fmt.Sprintf("imbalance %.3f ≤ %.3f (threshold %.3f − hysteresis %.3f)", imb, low, cfg.Threshold, cfg.Hysteresis)
			break
		}
		pr, ok := p.step(cooling)
		if !ok {
			// Nothing helps: rest until the threshold is crossed again.
			res.Active = false
			res.Why = fmt.Sprintf("imbalance %.3f: no allowed move (capacity, anti-affinity, compatibility, cooldown, policy) lowers it by enough per cost", imb)
			break
		}
		res.Proposals = append(res.Proposals, pr)
	}
	if len(res.Proposals) == cfg.MaxMoves && res.Why == "" {
		res.Why = fmt.Sprintf("stopped at config.maxMoves = %d", cfg.MaxMoves)
	}
	res.After = p.imbalance()
	for n := range cooling {
		res.Cooling = append(res.Cooling, n)
	}
	sort.Strings(res.Cooling)
	return res, nil
}

func (p *planState) imbalance() float64 {
	if p.cpu.n == 0 {
		return 0
	}
	return math.Sqrt(max(p.cpu.variance(), p.mem.variance()))
}

func (p *planState) load(i int) float64 { return max(p.ucpu[i], p.umem[i]) }

// step finds and applies the best move, if any.
func (p *planState) step(cooling map[string]bool) (Proposal, bool) {
	var ready []int
	for i, h := range p.hosts {
		if h.Ready {
			ready = append(ready, i)
		}
	}
	sort.Slice(ready, func(a, b int) bool {
		la, lb := p.load(ready[a]), p.load(ready[b])
		if la != lb {
			return la > lb
		}
		return p.hosts[ready[a]].Name < p.hosts[ready[b]].Name
	})
	srcs := ready[:min(sourcesPerStep, len(ready))]
	dsts := ready[max(len(ready)-p.cfg.Candidates, 0):]
	f0 := p.cpu.variance() + p.mem.variance()
	type best struct {
		vm, from, to int
		gain, ratio  float64
		c            cost
	}
	var b *best
	for _, s := range srcs {
		for _, j := range p.onHost[s] {
			vm := p.vms[j]
			if p.moved[j] {
				continue
			}
			if t, ok := p.in.State.LastMoved[vm.Name]; ok && p.in.State.Now.Sub(t) < p.cfg.Cooldown {
				cooling[vm.Name] = true
				continue
			}
			req := placement.Request{VCPUs: vm.VCPUs, MemoryMiB: vm.MemoryMiB, DiskBytes: vm.DiskBytes, AntiAffinity: vm.AntiAffinity}
			for _, d := range dsts {
				if d == s || p.load(d) >= p.load(s) {
					continue
				}
				gain := (f0 - p.objectiveAfter(j, s, d)) * p.cpu.n
				if gain <= 0 || (b != nil && gain/minCost < b.ratio) {
					continue
				}
				h := p.hosts[d]
				if placement.Check(h.Host, req) != nil {
					continue
				}
				if h.Caps != nil && qemucaps.CheckDestination(h.Name, *h.Caps, vm.Needs) != nil {
					continue
				}
				c := p.cost(j, s, d)
				if !c.ok {
					continue
				}
				ratio := gain / c.cost
				if ratio < p.cfg.MinGainPerCost {
					continue
				}
				if b == nil || ratio > b.ratio || (ratio == b.ratio && vm.Name < p.vms[b.vm].Name) {
					b = &best{j, s, d, gain, ratio, c}
				}
			}
		}
	}
	if b == nil {
		return Proposal{}, false
	}
	p.apply(b.vm, b.from, b.to)
	vm := p.vms[b.vm]
	return Proposal{VM: vm.Name, From: p.hosts[b.from].Name, To: p.hosts[b.to].Name, Strategy: b.c.strategy, Prediction: b.c.pred,
		Gain: b.gain, Cost: b.c.cost,
		Reason: fmt.Sprintf("%s is among the most loaded, %s among the least; gain %.4f for cost %.2f (%s, %v downtime)",
			p.hosts[b.from].Name, p.hosts[b.to].Name, b.gain, b.c.cost, bytesStr(b.c.pred.Bytes), b.c.pred.Downtime.Round(time.Millisecond))}, true
}

// deltas is how VM j changes the utilisation of hosts s and d.
func (p *planState) deltas(j, s, d int) (cs, ms, cd, md float64) {
	vm, hs, hd := p.vms[j], p.hosts[s], p.hosts[d]
	return vm.CPUUsed / float64(max(hs.CPUs, 1)), vm.RSSMiB / float64(max(hs.MemoryMiB, 1)),
		vm.CPUUsed / float64(max(hd.CPUs, 1)), vm.RSSMiB / float64(max(hd.MemoryMiB, 1))
}

func (p *planState) objectiveAfter(j, s, d int) float64 {
	cs, ms, cd, md := p.deltas(j, s, d)
	c := p.cpu.moved(p.ucpu[s], p.ucpu[s]-cs, p.ucpu[d], p.ucpu[d]+cd)
	m := p.mem.moved(p.umem[s], p.umem[s]-ms, p.umem[d], p.umem[d]+md)
	return c.variance() + m.variance()
}

func (p *planState) apply(j, s, d int) {
	cs, ms, cd, md := p.deltas(j, s, d)
	p.cpu = p.cpu.moved(p.ucpu[s], p.ucpu[s]-cs, p.ucpu[d], p.ucpu[d]+cd)
	p.mem = p.mem.moved(p.umem[s], p.umem[s]-ms, p.umem[d], p.umem[d]+md)
	p.ucpu[s] -= cs
	p.umem[s] -= ms
	p.ucpu[d] += cd
	p.umem[d] += md
	vm := p.vms[j]
	req := placement.Request{VCPUs: vm.VCPUs, MemoryMiB: vm.MemoryMiB, DiskBytes: vm.DiskBytes, AntiAffinity: vm.AntiAffinity}
	p.hosts[s].Remove(req)
	p.hosts[d].Place(req)
	list := p.onHost[s]
	for k, x := range list {
		if x == j {
			p.onHost[s] = append(list[:k:k], list[k+1:]...)
			break
		}
	}
	p.onHost[d] = append(p.onHost[d], j)
	p.moved[j] = true
}

// cost predicts the migration of VM j from s to d (cached per VM and
// bandwidth).
func (p *planState) cost(j, s, d int) cost {
	vm := p.vms[j]
	link, ok := 0.0, false
	if p.in.Bandwidth != nil {
		link, ok = p.in.Bandwidth.Estimate(p.hosts[s].Name, p.hosts[d].Name)
	}
	if !ok || link <= 0 {
		return cost{}
	}
	eff, ok := p.eff[j]
	if !ok {
		eff = p.in.Policies.Resolve(vm.Name, vm.Labels)
		p.eff[j] = eff
	}
	bw := eff.Bandwidth(link, eff.MaxParallelPerSource)
	key := [2]int{j, int(bw)}
	if c, ok := p.costs[key]; ok {
		return c
	}
	pin := planner.Inputs{MemoryBytes: vm.MemoryMiB << 20, NonZeroBytes: vm.NonZeroBytes, DirtyRateBytesPerSec: vm.DirtyRateBytesPerSec,
		BandwidthBytesPerSec: bw, MaxDowntime: eff.MaxDowntime, Policy: eff.PlannerPolicy(vm.MemoryMiB << 20)}
	c := cost{}
	if dec, err := planner.Choose(pin, nil); err == nil {
		c = cost{ok: true, strategy: dec.Strategy, pred: dec.Prediction,
			cost: float64(dec.Prediction.Bytes)/(1<<30) + p.cfg.DowntimeWeight*dec.Prediction.Downtime.Seconds()}
		c.cost = max(c.cost, minCost)
	}
	p.costs[key] = c
	return c
}

func bytesStr(b int64) string {
	return fmt.Sprintf("%.2f GiB", float64(b)/(1<<30))
}
