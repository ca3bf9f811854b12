package evacuate

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/ferryvm/ferry/internal/placement"
	"github.com/ferryvm/ferry/internal/policy"
	"github.com/ferryvm/ferry/internal/qemucaps"
	"github.com/ferryvm/ferry/internal/scripttest"
)

// A script is a sequence of blocks:
//
//	drain TITLE
//	source HOST
//	host NAME cpus=N mem=SIZE [disk=SIZE] [vcpus-used=N] [mem-used=SIZE] [disk-used=SIZE] [disk-free=SIZE]
//	     [groups=a,b] [unschedulable] [health=H] [machines=m1,m2] [cpu-models=c1,c2]
//	vm NAME vcpus=N mem=SIZE [disk=SIZE] [local-disk=SIZE] [nonzero=SIZE] [dirty=SIZE/s] [groups=a,b]
//	   [labels=k=v,...] [machine=M] [cpu=C]
//	bw FROM TO RATE            (FROM or TO may be * for any)
//	policy cluster|vm NAME|label K=V key=value...
//	fail VM DEST [done=vm1,vm2] (re-plan after that failure)
//	----
//	expected output, up to a blank line
func TestScripts(t *testing.T) {
	scripttest.Dir(t, func(t *testing.T, f string) { scripttest.Run(t, f, runDrain) })
}

func parseHost(t *testing.T, f []string) Host {
	a := scripttest.KV(f[2:])
	h := Host{Host: placement.Host{Name: f[1], CPUs: scripttest.Int(t, a["cpus"]), MemoryMiB: scripttest.Size(t, a["mem"]) >> 20,
		DiskGiB: scripttest.Size(t, a["disk"]) >> 30, AllocatedVCPUs: scripttest.Int(t, a["vcpus-used"]),
		AllocatedMemoryMiB: scripttest.Size(t, a["mem-used"]) >> 20, AllocatedDiskGiB: scripttest.Size(t, a["disk-used"]) >> 30,
		DiskFreeBytes: scripttest.Size(t, a["disk-free"])},
		Schedulable: true, Health: Healthy}
	if _, ok := a["unschedulable"]; ok {
		h.Schedulable = false
	}
	if v := a["health"]; v != "" {
		h.Health = Health(v)
	}
	for _, g := range scripttest.List(a["groups"]) {
		if h.Groups == nil {
			h.Groups = map[string]int{}
		}
		h.Groups[g]++
	}
	if a["machines"] != "" || a["cpu-models"] != "" {
		c := &qemucaps.Caps{}
		for _, m := range scripttest.List(a["machines"]) {
			c.Machines = append(c.Machines, qemucaps.Machine{Name: m})
		}
		for _, m := range scripttest.List(a["cpu-models"]) {
			c.CPUModels = append(c.CPUModels, qemucaps.CPUModel{Name: m, Usable: true})
		}
		h.Caps = c
	}
	return h
}

func parseVM(t *testing.T, f []string) VM {
	a := scripttest.KV(f[2:])
	vm := VM{Name: f[1], VCPUs: scripttest.Int(t, a["vcpus"]), MemoryMiB: scripttest.Size(t, a["mem"]) >> 20, DiskGiB: scripttest.Size(t, a["disk"]) >> 30,
		DiskBytes: scripttest.Size(t, a["local-disk"]), NonZeroBytes: scripttest.Size(t, a["nonzero"]), DirtyRateBytesPerSec: float64(scripttest.Size(t, a["dirty"])),
		AntiAffinity: scripttest.List(a["groups"]), Needs: qemucaps.VMNeeds{MachineType: a["machine"], CPUModel: a["cpu"]}}
	for _, l := range scripttest.List(a["labels"]) {
		k, v, _ := strings.Cut(l, ":")
		if vm.Labels == nil {
			vm.Labels = map[string]string{}
		}
		vm.Labels[k] = v
	}
	return vm
}

func parsePolicy(t *testing.T, set *policy.Set, f []string) {
	var kvs []string
	var o policy.Override
	target := f[1]
	switch target {
	case "cluster":
		kvs = f[2:]
	case "vm", "label":
		kvs = f[3:]
	default:
		t.Fatalf("policy %q: want cluster, vm NAME or label K=V", target)
	}
	for k, v := range scripttest.KV(kvs) {
		d, _ := time.ParseDuration(v)
		switch k {
		case "parallel":
			set.Cluster.MaxParallelCluster = scripttest.Int(t, v)
		case "per-source":
			set.Cluster.MaxParallelPerSource = scripttest.Int(t, v)
		case "per-dest":
			set.Cluster.MaxParallelPerDest = scripttest.Int(t, v)
		case "host-bw":
			set.Cluster.BandwidthPerHost = float64(scripttest.Size(t, v))
		case "bw":
			b := float64(scripttest.Size(t, v))
			o.BandwidthPerMigration = &b
		case "strategies":
			o.AllowedStrategies = scripttest.List(v)
		case "max-downtime":
			o.MaxDowntime = &d
		case "timeout-per-gib":
			o.CompletionTimeoutPerGiB = &d
		default:
			t.Fatalf("policy: unknown key %q", k)
		}
	}
	switch target {
	case "cluster":
		if o.BandwidthPerMigration != nil {
			set.Cluster.BandwidthPerMigration = *o.BandwidthPerMigration
		}
		set.Cluster.AllowedStrategies = o.AllowedStrategies
		if o.MaxDowntime != nil {
			set.Cluster.MaxDowntime = *o.MaxDowntime
		}
		if o.CompletionTimeoutPerGiB != nil {
			set.Cluster.CompletionTimeoutPerGiB = *o.CompletionTimeoutPerGiB
		}
	case "vm":
		if set.VMs == nil {
			set.VMs = map[string]policy.Override{}
		}
		set.VMs[f[2]] = o
	case "label":
		k, v, _ := strings.Cut(f[2], "=")
		set.Labels = append(set.Labels, policy.LabelOverride{Key: k, Value: v, Override: o})
	}
}

func runDrain(t *testing.T, b scripttest.Block) []string {
	in := Input{}
	bw := scripttest.Bandwidths{}
	in.Bandwidth = bw
	type failure struct {
		vm, dest string
		done     []string
	}
	var fails []failure
	for _, l := range b.Header[1:] {
		f := strings.Fields(l)
		switch f[0] {
		case "source":
			in.Source = f[1]
		case "host":
			in.Hosts = append(in.Hosts, parseHost(t, f))
		case "vm":
			in.VMs = append(in.VMs, parseVM(t, f))
		case "bw":
			bw[[2]string{f[1], f[2]}] = float64(scripttest.Size(t, f[3]))
		case "policy":
			parsePolicy(t, &in.Policies, f)
		case "fail":
			a := scripttest.KV(f[3:])
			fails = append(fails, failure{f[1], f[2], scripttest.List(a["done"])})
		default:
			b.Fatalf(t, "unknown line %q", l)
		}
	}
	plan, err := PlanDrain(in)
	if err != nil {
		return []string{"error: " + err.Error()}
	}
	out := plan.Lines()
	out = append(out, checkPlan(in, plan)...)
	done := map[string]string{}
	for _, fl := range fails {
		dest := map[string]string{}
		for _, m := range plan.Moves {
			dest[m.VM] = m.To
		}
		for _, d := range fl.done {
			if dest[d] == "" {
				t.Fatalf("fail: done VM %s is not in the current plan", d)
			}
			done[d] = dest[d]
		}
		next, err := Replan(in, done, fl.vm, fl.dest)
		if err != nil {
			out = append(out, "replan error: "+err.Error())
			break
		}
		out = append(out, fmt.Sprintf("after %s failed on %s (done: %s):", fl.vm, fl.dest, strings.Join(fl.done, ",")))
		out = append(out, next.Lines()...)
		out = append(out, checkPlan(in, next)...)
		avoid := map[string][]string{}
		for k, v := range in.Avoid {
			avoid[k] = v
		}
		avoid[fl.vm] = append(avoid[fl.vm], fl.dest)
		in.Avoid = avoid
		plan = next
	}
	return out
}

// checkPlan verifies the plan's invariants and reports violations as
// output lines (so a script fails visibly): no more than Parallel in
// flight, no more than PerDest into one host, nobody placed on the source.
func checkPlan(in Input, p Plan) []string {
	var bad []string
	for _, m := range p.Moves {
		if m.To == in.Source {
			bad = append(bad, "VIOLATION: "+m.VM+" placed on the source")
		}
		inFlight, into := 0, 0
		for _, o := range p.Moves {
			if o.Start <= m.Start && m.Start < o.End {
				inFlight++
				if o.To == m.To {
					into++
				}
			}
		}
		if inFlight > p.Parallel {
			bad = append(bad, fmt.Sprintf("VIOLATION: %d in flight when %s starts, limit %d", inFlight, m.VM, p.Parallel))
		}
		if into > p.PerDest {
			bad = append(bad, fmt.Sprintf("VIOLATION: %d into %s when %s starts, limit %d", into, m.To, m.VM, p.PerDest))
		}
	}
	return bad
}
