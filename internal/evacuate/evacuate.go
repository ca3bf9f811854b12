// Package evacuate plans the drain of one host: for every VM on it a
// destination, a strategy (from internal/planner's predictions) and a
// start order that respects the migration policies' parallelism, with a
// predicted per-VM and total ETA, and a typed reason for every VM it
// cannot place. It also re-plans after a VM's migration failed, avoiding
// the destination that failed.
//
// It is pure: no I/O, no clock, no goroutines. Executors run the plan.
package evacuate

import (
	"errors"
	"fmt"
	"sort"
	"time"

	"github.com/ferryvm/ferry/internal/placement"
	"github.com/ferryvm/ferry/internal/planner"
	"github.com/ferryvm/ferry/internal/policy"
	"github.com/ferryvm/ferry/internal/qemucaps"
)

// ErrInvalidInput is wrapped by PlanDrain's refusals of inputs that make
// no sense (unknown source, invalid policies, duplicate names).
var ErrInvalidInput = errors.New("invalid evacuation input")

// Health is a host's health as its agent reports it.
type Health string

// Host health values. Only a healthy host receives VMs.
const (
	Healthy     Health = "healthy"
	Degraded    Health = "degraded"
	Failed      Health = "failed"
	Unreachable Health = "unreachable"
)

// Host is one host of the cluster as the planner sees it.
type Host struct {
	// Host is its capacity and what is already placed on it (Ready is
	// ignored: Health says it).
	placement.Host
	// Schedulable is false for a host in maintenance.
	Schedulable bool
	// Health is the agent's report; only Healthy hosts receive VMs (the
	// zero value, unknown, receives none).
	Health Health
	// Caps is what its QEMU offers; nil means not checked.
	Caps *qemucaps.Caps
}

// VM is one VM to move off the source.
type VM struct {
	Name      string
	VCPUs     int
	MemoryMiB int64
	DiskGiB   int64
	// DiskBytes is the space its local disks take (their allocated size):
	// a destination needs that plus placement.DiskMargin free in its data
	// directory (Host.DiskFreeBytes), the rule the migration preflight
	// applies. 0: it has no local disks.
	DiskBytes int64
	// NonZeroBytes is the guest RAM that is not zero (0 = all of it).
	NonZeroBytes int64
	// DirtyRateBytesPerSec is its measured dirty rate.
	DirtyRateBytesPerSec float64
	// AntiAffinity lists its anti-affinity groups.
	AntiAffinity []string
	// Labels select policy overrides.
	Labels map[string]string
	// Needs is what it needs from a destination's QEMU.
	Needs qemucaps.VMNeeds
}

// Bandwidths gives the measured rate of a host pair (planner.BandwidthEstimator
// is one).
type Bandwidths interface {
	Estimate(from, to string) (float64, bool)
}

// DefaultMaxCandidates is how many destinations, best score first, are
// tried per VM for a strategy when Input.MaxCandidates is 0.
const DefaultMaxCandidates = 8

// Input is everything a drain plan depends on.
type Input struct {
	// Source is the host to empty.
	Source string
	// Hosts is every host, the source included.
	Hosts []Host
	// VMs are the VMs on Source to move.
	VMs []VM
	// Policies are the cluster's migration policies.
	Policies policy.Set
	// Bandwidth gives the measured host-pair rates.
	Bandwidth Bandwidths
	// Avoid lists, per VM name, destinations it must not go to (a
	// migration there failed).
	Avoid map[string][]string
	// MaxCandidates bounds the destinations tried per VM; 0 means
	// DefaultMaxCandidates.
	MaxCandidates int
	// Setup is the fixed time of one migration besides its transfer and
	// pause (destination start, stream setup, the guest-alive check), as
	// learned from the cluster's past migrations; 0: the planner's default.
	Setup time.Duration
}

// Move is one planned migration.
type Move struct {
	VM   string
	From string
	To   string
	// Strategy and Prediction are the planner's choice on that link.
	Strategy   string
	Prediction planner.Prediction
	// BandwidthBytesPerSec is the rate the prediction assumed (the link's,
	// capped by the policy and the share of the source's bandwidth).
	BandwidthBytesPerSec float64
	// Order is the start order (1 = first).
	Order int
	// Start and End are predicted offsets from the plan's start.
	Start, End time.Duration
	// Reason says why this destination and strategy.
	Reason string
}

// Reason says why a VM cannot be placed.
type Reason string

// Reasons for an unplaced VM.
const (
	// ReasonNoHost: no other host is schedulable and healthy.
	ReasonNoHost Reason = "no-host"
	// ReasonIncompatible: no candidate's QEMU can run the VM.
	ReasonIncompatible Reason = "incompatible"
	// ReasonMemory, ReasonVCPUs, ReasonDisk: compatible hosts lack room.
	ReasonMemory Reason = "memory"
	ReasonVCPUs  Reason = "vcpus"
	ReasonDisk   Reason = "disk"
	// ReasonAntiAffinity: every host with room runs a VM of its group.
	ReasonAntiAffinity Reason = "anti-affinity"
	// ReasonBandwidthUnknown: no link to a host with room was measured.
	ReasonBandwidthUnknown Reason = "bandwidth-unknown"
	// ReasonNoStrategy: no allowed strategy meets the VM's policy on any
	// link to a host with room.
	ReasonNoStrategy Reason = "no-strategy"
)

// Unplaced is a VM the plan cannot move.
type Unplaced struct {
	VM     string
	Reason Reason
	// Detail says what was found; Help says what would make it placeable.
	Detail string
	Help   string
}

// Plan is PlanDrain's answer.
type Plan struct {
	Source string
	// Moves are in start order.
	Moves []Move
	// Unplaced are sorted by VM name.
	Unplaced []Unplaced
	// ETA is when the last move is predicted to end.
	ETA time.Duration
	// Parallel is the number of migrations allowed in flight out of the
	// source; PerDest the limit into one destination.
	Parallel, PerDest int
}

// PlanDrain plans moving every VM of in.VMs off in.Source. Placement is
// first-fit decreasing by memory onto the best-scoring compatible host
// (placement.Score) for which the planner finds a strategy; the start
// order is longest predicted migration first, so the total is short; the
// schedule keeps within the cluster, per-source and per-destination
// limits of the policy.
func PlanDrain(in Input) (Plan, error) {
	if err := in.Policies.Validate(); err != nil {
		return Plan{}, fmt.Errorf("%w: %w", ErrInvalidInput, err)
	}
	cluster := in.Policies.Cluster.WithDefaults()
	parallel := min(cluster.MaxParallelCluster, cluster.MaxParallelPerSource)
	plan := Plan{Source: in.Source, Parallel: parallel, PerDest: cluster.MaxParallelPerDest}
	found := false
	hosts := make([]Host, 0, len(in.Hosts))
	names := map[string]bool{}
	for _, h := range in.Hosts {
		if names[h.Name] {
			return Plan{}, fmt.Errorf("%w: host %q listed twice", ErrInvalidInput, h.Name)
		}
		names[h.Name] = true
		if h.Name == in.Source {
			found = true
			continue
		}
		if h.Schedulable && h.Health == Healthy {
			h.Ready = true
			hosts = append(hosts, h)
		}
	}
	if !found {
		return Plan{}, fmt.Errorf("%w: source host %q is not among the hosts", ErrInvalidInput, in.Source)
	}
	vms := append([]VM(nil), in.VMs...)
	sort.Slice(vms, func(i, j int) bool {
		if vms[i].MemoryMiB != vms[j].MemoryMiB {
			return vms[i].MemoryMiB > vms[j].MemoryMiB
		}
		return vms[i].Name < vms[j].Name
	})
	for i := 1; i < len(vms); i++ {
		if vms[i].Name == vms[i-1].Name {
			return Plan{}, fmt.Errorf("%w: VM %q listed twice", ErrInvalidInput, vms[i].Name)
		}
	}
	maxCand := in.MaxCandidates
	if maxCand <= 0 {
		maxCand = DefaultMaxCandidates
	}
	byName := map[string]VM{}
	for _, vm := range vms {
		byName[vm.Name] = vm
		mv, un := placeOne(in, hosts, vm, parallel, 1, maxCand)
		if un != nil {
			plan.Unplaced = append(plan.Unplaced, *un)
			continue
		}
		plan.Moves = append(plan.Moves, mv)
	}
	sort.Slice(plan.Unplaced, func(i, j int) bool { return plan.Unplaced[i].VM < plan.Unplaced[j].VM })
	sharePass(in, plan.Moves, byName, parallel, cluster.MaxParallelPerDest)
	plan.ETA = Schedule(plan.Moves, cluster.MaxParallelCluster, parallel, cluster.MaxParallelPerDest)
	sort.Slice(plan.Moves, func(i, j int) bool { return plan.Moves[i].Order < plan.Moves[j].Order })
	return plan, nil
}

// request is vm as a placement request.
func request(vm VM) placement.Request {
	return placement.Request{VCPUs: vm.VCPUs, MemoryMiB: vm.MemoryMiB, DiskGiB: vm.DiskGiB, DiskBytes: vm.DiskBytes, AntiAffinity: vm.AntiAffinity}
}

// sharePass predicts every move again at its share of the source's link:
// the migrations in flight together share it (its NIC, and the CPUs that
// send), so with n running at once each gets 1/n. n is what the schedule
// can run at once: the parallelism, the moves, and the per-destination
// limit times the destinations used. The strategy chosen at the whole
// link stays (the engine's controller adapts it to what the link gives);
// one that would not converge at the share keeps its first prediction.
func sharePass(in Input, moves []Move, vms map[string]VM, parallel, perDest int) {
	dests := map[string]bool{}
	for _, m := range moves {
		dests[m.To] = true
	}
	n := min(parallel, len(moves), max(perDest, 1)*len(dests))
	if n <= 1 || in.Bandwidth == nil {
		return
	}
	for i := range moves {
		m := &moves[i]
		vm := vms[m.VM]
		link, ok := in.Bandwidth.Estimate(in.Source, m.To)
		if !ok || link <= 0 {
			continue
		}
		eff := in.Policies.Resolve(vm.Name, vm.Labels)
		bw := eff.Bandwidth(link/float64(n), parallel)
		for _, p := range planner.Predict(plannerInputs(in, vm, eff, bw)) {
			if p.Strategy == m.Strategy && p.Converges {
				m.Prediction, m.BandwidthBytesPerSec = p, bw
				m.Reason = fmt.Sprintf("%s; predicted at 1/%d of the link (%d migrations in flight out of %s)", m.Reason, n, n, in.Source)
			}
		}
	}
}

// plannerInputs are the planner's inputs for vm at bandwidth bw.
func plannerInputs(in Input, vm VM, eff policy.Effective, bw float64) planner.Inputs {
	return planner.Inputs{
		MemoryBytes: vm.MemoryMiB << 20, NonZeroBytes: vm.NonZeroBytes, DirtyRateBytesPerSec: vm.DirtyRateBytesPerSec,
		BandwidthBytesPerSec: bw, MaxDowntime: eff.MaxDowntime, Policy: eff.PlannerPolicy(vm.MemoryMiB << 20),
		SetupSeconds: in.Setup.Seconds(),
	}
}

type cand struct {
	i     int
	score float64
}

// placeOne chooses vm's destination among hosts (updating it) or says why
// there is none.
func placeOne(in Input, hosts []Host, vm VM, parallel, concurrent, maxCand int) (Move, *Unplaced) {
	if len(hosts) == 0 {
		return Move{}, &Unplaced{VM: vm.Name, Reason: ReasonNoHost, Detail: "no other host is schedulable and healthy",
			Help: "add a host, or bring one out of maintenance or back to health"}
	}
	req := request(vm)
	avoid := map[string]bool{}
	for _, h := range in.Avoid[vm.Name] {
		avoid[h] = true
	}
	var cands []cand
	rejects := map[placement.RejectKind]int{}
	var firstIncompat error
	incompat, avoided := 0, 0
	var bestFree int64
	bestDisk := int64(-1) // most data-directory space free on a compatible host reporting it
	for i, h := range hosts {
		if avoid[h.Name] {
			avoided++
			continue
		}
		if h.Caps != nil {
			if err := qemucaps.CheckDestination(h.Name, *h.Caps, vm.Needs); err != nil {
				incompat++
				if firstIncompat == nil {
					firstIncompat = err
				}
				continue
			}
		}
		bestFree = max(bestFree, h.FreeMemoryMiB())
		if h.DiskFreeBytes > 0 {
			bestDisk = max(bestDisk, h.DiskFreeBytes-h.AllocatedDiskBytes)
		}
		if r := placement.Check(h.Host, req); r != nil {
			rejects[r.Kind]++
			continue
		}
		cands = append(cands, cand{i, placement.Score(h.Host, req)})
	}
	sort.Slice(cands, func(a, b int) bool {
		if cands[a].score != cands[b].score {
			return cands[a].score > cands[b].score
		}
		return hosts[cands[a].i].Name < hosts[cands[b].i].Name
	})
	eff := in.Policies.Resolve(vm.Name, vm.Labels)
	noBW := 0
	var firstNoPlan error
	for k, c := range cands {
		if k == maxCand {
			break
		}
		h := &hosts[c.i]
		link, ok := 0.0, false
		if in.Bandwidth != nil {
			link, ok = in.Bandwidth.Estimate(in.Source, h.Name)
		}
		if !ok || link <= 0 {
			noBW++
			continue
		}
		bw := eff.Bandwidth(link/float64(concurrent), parallel)
		d, err := planner.Choose(plannerInputs(in, vm, eff, bw), nil)
		if err != nil {
			if firstNoPlan == nil {
				firstNoPlan = err
			}
			continue
		}
		h.Place(req)
		return Move{VM: vm.Name, From: in.Source, To: h.Name, Strategy: d.Strategy, Prediction: d.Prediction, BandwidthBytesPerSec: bw,
			Reason: fmt.Sprintf("best-scoring host with room (%d candidates); %s", len(cands), d.Reason)}, nil
	}
	return Move{}, unplaced(vm, len(hosts), avoided, incompat, firstIncompat, rejects, bestFree, bestDisk, len(cands), noBW, firstNoPlan, in.Source)
}

// unplaced chooses the reason a VM found no destination: the last hurdle
// the most hosts passed.
func unplaced(vm VM, hosts, avoided, incompat int, firstIncompat error, rejects map[placement.RejectKind]int, bestFree, bestDisk int64, cands, noBW int, noPlan error, src string) *Unplaced {
	u := &Unplaced{VM: vm.Name}
	switch {
	case cands > 0 && noPlan != nil:
		u.Reason = ReasonNoStrategy
		u.Detail = noPlan.Error()
		u.Help = "allow another strategy, a longer maxDowntime or completion timeout for this VM, or raise the bandwidth cap"
	case cands > 0:
		u.Reason = ReasonBandwidthUnknown
		u.Detail = fmt.Sprintf("%d hosts have room but no bandwidth from %s to them is known", noBW, src)
		u.Help = "measure the links from " + src + " (a first migration or a probe)"
	case incompat+avoided == hosts && incompat > 0:
		u.Reason = ReasonIncompatible
		u.Detail = fmt.Sprintf("%d of %d hosts cannot run it, e.g. %v", incompat, hosts, firstIncompat)
		u.Help = "add a host whose QEMU offers its machine type and CPU model, or give the VM ones the hosts share"
	case len(rejects) == 0:
		u.Reason = ReasonNoHost
		u.Detail = fmt.Sprintf("every other host (%d) is avoided after a failed migration", avoided)
		u.Help = "fix the failed destinations, or add a host"
	default:
		kind, n := placement.RejectKind(""), 0
		for _, k := range []placement.RejectKind{placement.RejectMemory, placement.RejectVCPUs, placement.RejectDisk, placement.RejectAntiAffinity} {
			if rejects[k] > n {
				kind, n = k, rejects[k]
			}
		}
		compatible := hosts - avoided - incompat
		switch kind {
		case placement.RejectMemory:
			u.Reason = ReasonMemory
			u.Detail = fmt.Sprintf("needs %d MiB; %d of %d compatible hosts lack the memory (most free: %d MiB)", vm.MemoryMiB, n, compatible, max(bestFree, 0))
			u.Help = fmt.Sprintf("free %d MiB on a compatible host, or add one", vm.MemoryMiB-max(bestFree, 0))
		case placement.RejectVCPUs:
			u.Reason = ReasonVCPUs
			u.Detail = fmt.Sprintf("needs %d vCPUs; %d of %d compatible hosts are at their vCPU overcommit limit", vm.VCPUs, n, compatible)
			u.Help = "add a host, or move smaller VMs off a compatible host"
		case placement.RejectDisk:
			u.Reason = ReasonDisk
			u.Detail = fmt.Sprintf("needs %d GiB of local disk; %d of %d compatible hosts lack it", vm.DiskGiB, n, compatible)
			u.Help = "free local disk on a compatible host, or add one"
			if vm.DiskBytes > 0 && bestDisk >= 0 {
				margin := placement.DiskMargin(vm.DiskBytes)
				u.Detail = fmt.Sprintf("local disks take %d MiB, + %d MiB margin = %d MiB; %d of %d compatible hosts lack the space in their data directory (most free: %d MiB)",
					vm.DiskBytes>>20, margin>>20, (vm.DiskBytes+margin)>>20, n, compatible, max(bestDisk, 0)>>20)
				u.Help = fmt.Sprintf("free %d MiB in a compatible host's data directory, or add one", (vm.DiskBytes+margin-max(bestDisk, 0)+(1<<20)-1)>>20)
			}
		default:
			u.Reason = ReasonAntiAffinity
			u.Detail = fmt.Sprintf("groups %v: %d of %d compatible hosts already run a VM of its group", vm.AntiAffinity, n, compatible)
			u.Help = "add a host, or take the VM out of its anti-affinity group"
		}
	}
	return u
}

// Schedule assigns Order, Start and End to moves (in place), longest
// predicted migration first, with at most parallel in flight in the
// cluster, perSource out of one host and perDest into one host; it
// returns the end of the last. The balancer's proposals use it too.
func Schedule(moves []Move, parallel, perSource, perDest int) time.Duration {
	parallel, perSource, perDest = max(parallel, 1), max(perSource, 1), max(perDest, 1)
	idx := make([]int, len(moves))
	for i := range idx {
		idx[i] = i
	}
	sort.Slice(idx, func(a, b int) bool {
		ma, mb := moves[idx[a]], moves[idx[b]]
		if ma.Prediction.Total != mb.Prediction.Total {
			return ma.Prediction.Total > mb.Prediction.Total
		}
		return ma.VM < mb.VM
	})
	var now, eta time.Duration
	var running []int
	into, outOf := map[string]int{}, map[string]int{}
	order := 0
	for len(idx) > 0 || len(running) > 0 {
		rest := idx[:0:0]
		for _, i := range idx {
			m := &moves[i]
			if len(running) < parallel && into[m.To] < perDest && outOf[m.From] < perSource {
				order++
				m.Order, m.Start, m.End = order, now, now+m.Prediction.Total
				eta = max(eta, m.End)
				running = append(running, i)
				into[m.To]++
				outOf[m.From]++
				continue
			}
			rest = append(rest, i)
		}
		idx = rest
		if len(running) == 0 {
			break // cannot happen: an empty schedule admits any move
		}
		next := moves[running[0]].End
		for _, i := range running {
			next = min(next, moves[i].End)
		}
		now = next
		keep := running[:0]
		for _, i := range running {
			if moves[i].End <= now {
				into[moves[i].To]--
				outOf[moves[i].From]--
				continue
			}
			keep = append(keep, i)
		}
		running = keep
	}
	return eta
}

// Replan plans the rest of a drain after the migration of failedVM to
// failedDest failed: done maps every VM that has moved to the host it now
// runs on (that host's capacity is taken), failedVM avoids failedDest (as
// well as in.Avoid's hosts), and every other VM of in.VMs is planned again.
func Replan(in Input, done map[string]string, failedVM, failedDest string) (Plan, error) {
	next := in
	next.Hosts = append([]Host(nil), in.Hosts...)
	byName := map[string]int{}
	for i, h := range next.Hosts {
		byName[h.Name] = i
	}
	next.VMs = nil
	for _, vm := range in.VMs {
		to, moved := done[vm.Name]
		if !moved {
			next.VMs = append(next.VMs, vm)
			continue
		}
		i, ok := byName[to]
		if !ok {
			return Plan{}, fmt.Errorf("%w: VM %q moved to unknown host %q", ErrInvalidInput, vm.Name, to)
		}
		next.Hosts[i].Place(request(vm))
	}
	next.Avoid = map[string][]string{}
	for k, v := range in.Avoid {
		next.Avoid[k] = append([]string(nil), v...)
	}
	if failedVM != "" {
		next.Avoid[failedVM] = append(next.Avoid[failedVM], failedDest)
	}
	return PlanDrain(next)
}
