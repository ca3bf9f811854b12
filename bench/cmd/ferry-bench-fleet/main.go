// Command ferry-bench-fleet is `make bench-fleet`: it plans (does not
// execute) the drain of one host and a full rebalance of a FAKE simulated
// fleet (internal/fleetsim: 1,000 hosts, 20,000 VMs by default, seeded)
// and prints the planning time, memory, predicted ETA and migrations
// proposed, as the median of several runs. The targets (drain < 1 s,
// rebalance < 30 s) are printed next to the figures, not asserted.
package main

import (
	"flag"
	"fmt"
	"os"
	"runtime"
	"sort"
	"time"

	"github.com/ferryvm/ferry/internal/balance"
	"github.com/ferryvm/ferry/internal/evacuate"
	"github.com/ferryvm/ferry/internal/fleetsim"
	"github.com/ferryvm/ferry/internal/policy"
)

func main() {
	hosts := flag.Int("hosts", 1000, "fake hosts")
	vms := flag.Int("vms", 20000, "fake VMs")
	seed := flag.Uint64("seed", 1, "seed of the fake fleet")
	runs := flag.Int("runs", 3, "runs of each plan (the median is printed)")
	flag.Parse()
	if *hosts < 2 || *vms < 1 || *runs < 1 {
		fmt.Fprintln(os.Stderr, "ferry-bench-fleet: -hosts must be at least 2, -vms and -runs at least 1")
		os.Exit(2)
	}
	f := fleetsim.New(*seed, *hosts, *vms)
	fmt.Printf("fake fleet (internal/fleetsim, seed %d): %d hosts, %d VMs placed of %d\n", *seed, len(f.Hosts), len(f.VMs), *vms)

	src := f.Busiest()
	din := f.DrainInput(src)
	var plan evacuate.Plan
	dt, alloc, live := measure(*runs, func() {
		var err error
		if plan, err = evacuate.PlanDrain(din); err != nil {
			fmt.Fprintln(os.Stderr, "drain:", err)
			os.Exit(1)
		}
	})
	fmt.Printf("drain %s (%d VMs): plan %v (median of %d; target < 1s), allocated %.1f MiB, live heap %.1f MiB; %d moves, %d unplaced, parallel %d; predicted ETA %v\n",
		src, len(din.VMs), dt, *runs, alloc, live, len(plan.Moves), len(plan.Unplaced), plan.Parallel, plan.ETA.Round(time.Second))
	for _, u := range plan.Unplaced {
		fmt.Printf("  unplaced %s: %s: %s\n", u.VM, u.Reason, u.Detail)
	}

	bin := fleetsim.New(*seed, *hosts, *vms).BalanceInput()
	bin.Config.MaxMoves = len(bin.VMs)
	var res balance.Result
	dt, alloc, live = measure(*runs, func() {
		var err error
		if res, err = balance.Propose(bin); err != nil {
			fmt.Fprintln(os.Stderr, "rebalance:", err)
			os.Exit(1)
		}
	})
	moves := make([]evacuate.Move, len(res.Proposals))
	var bytes int64
	var down time.Duration
	for i, p := range res.Proposals {
		moves[i] = evacuate.Move{VM: p.VM, From: p.From, To: p.To, Strategy: p.Strategy, Prediction: p.Prediction}
		bytes += p.Prediction.Bytes
		down = max(down, p.Prediction.Downtime)
	}
	pol := policy.Set{}.Cluster.WithDefaults()
	eta := evacuate.Schedule(moves, pol.MaxParallelCluster, pol.MaxParallelPerSource, pol.MaxParallelPerDest)
	fmt.Printf("rebalance (%d hosts, %d VMs): plan %v (median of %d; target < 30s), allocated %.1f MiB, live heap %.1f MiB; imbalance %.3f -> %.3f; %d migrations proposed, %.1f GiB to send, longest downtime %v; predicted ETA %v at %d in flight (%d per host)\n",
		len(bin.Hosts), len(bin.VMs), dt, *runs, alloc, live, res.Before, res.After, len(res.Proposals), float64(bytes)/(1<<30),
		down.Round(time.Millisecond), eta.Round(time.Second), pol.MaxParallelCluster, pol.MaxParallelPerSource)
	fmt.Printf("  stopped: %s\n", res.Why)
	runtime.KeepAlive(f)
	runtime.KeepAlive(din)
	runtime.KeepAlive(bin)
}

// measure runs fn runs times and returns the median wall time, the median
// MiB allocated per run (runtime.MemStats.TotalAlloc) and the median live
// heap after a run (HeapAlloc after a GC: the fleet, the inputs and the
// plan).
func measure(runs int, fn func()) (time.Duration, float64, float64) {
	ts := make([]time.Duration, runs)
	as, ls := make([]float64, runs), make([]float64, runs)
	for i := range runs {
		var a, b runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&a)
		t0 := time.Now()
		fn()
		ts[i] = time.Since(t0)
		runtime.ReadMemStats(&b)
		as[i] = float64(b.TotalAlloc-a.TotalAlloc) / (1 << 20)
		runtime.GC()
		runtime.ReadMemStats(&b)
		ls[i] = float64(b.HeapAlloc) / (1 << 20)
	}
	sort.Slice(ts, func(i, j int) bool { return ts[i] < ts[j] })
	sort.Float64s(as)
	sort.Float64s(ls)
	return ts[runs/2].Round(time.Microsecond), as[runs/2], ls[runs/2]
}
