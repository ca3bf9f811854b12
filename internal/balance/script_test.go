package balance

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/ferryvm/ferry/internal/placement"
	"github.com/ferryvm/ferry/internal/scripttest"
)

// A script block:
//
//	balance TITLE
//	host NAME cpus=N mem=SIZE [disk-free=SIZE] [unready]
//	vm NAME host=H vcpus=N mem=SIZE cpu=CORES rss=SIZE [local-disk=SIZE] [dirty=RATE] [nonzero=SIZE] [groups=a,b]
//	bw FROM TO RATE
//	config threshold=F hysteresis=F cooldown=DUR max-moves=N
//	round at=DUR             plan, print, and apply the proposals
//	load VM cpu=CORES [rss=SIZE]   change a VM's measured use
//	----
//
// Host use is the sum of its VMs' use; after a round the proposals are
// applied (VMs move, LastMoved is the round's time) and every VM's move
// count is checked: a VM moved twice within the cooldown prints a
// VIOLATION line.
func TestScripts(t *testing.T) {
	scripttest.Dir(t, func(t *testing.T, f string) { scripttest.Run(t, f, runBalance) })
}

func runBalance(t *testing.T, b scripttest.Block) []string {
	var hosts []Host
	var vms []VM
	bw := scripttest.Bandwidths{}
	in := Inputs{Bandwidth: bw}
	st := State{LastMoved: map[string]time.Time{}}
	epoch := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	var out []string
	vmIdx := func(name string) int {
		for i := range vms {
			if vms[i].Name == name {
				return i
			}
		}
		t.Fatalf("unknown VM %s", name)
		return -1
	}
	for _, l := range b.Header[1:] {
		f := strings.Fields(l)
		a := scripttest.KV(f[1:])
		switch f[0] {
		case "host":
			_, unready := a["unready"]
			hosts = append(hosts, Host{Host: placement.Host{Name: f[1], Ready: !unready, CPUs: scripttest.Int(t, a["cpus"]), MemoryMiB: scripttest.Size(t, a["mem"]) >> 20,
				DiskFreeBytes: scripttest.Size(t, a["disk-free"])}})
		case "vm":
			vms = append(vms, VM{Name: f[1], Host: a["host"], VCPUs: scripttest.Int(t, a["vcpus"]), MemoryMiB: scripttest.Size(t, a["mem"]) >> 20,
				CPUUsed: scripttest.Float(t, a["cpu"]), RSSMiB: float64(scripttest.Size(t, a["rss"]) >> 20),
				NonZeroBytes: scripttest.Size(t, a["nonzero"]), DirtyRateBytesPerSec: float64(scripttest.Size(t, a["dirty"])),
				AntiAffinity: scripttest.List(a["groups"]), DiskBytes: scripttest.Size(t, a["local-disk"])})
		case "bw":
			bw[[2]string{f[1], f[2]}] = float64(scripttest.Size(t, f[3]))
		case "config":
			c := &in.Config
			c.Threshold = scripttest.Float(t, a["threshold"])
			c.Hysteresis = scripttest.Float(t, a["hysteresis"])
			c.MaxMoves = scripttest.Int(t, a["max-moves"])
			if v := a["cooldown"]; v != "" {
				d, err := time.ParseDuration(v)
				if err != nil {
					t.Fatal(err)
				}
				c.Cooldown = d
			}
		case "load":
			i := vmIdx(f[1])
			vms[i].CPUUsed = scripttest.Float(t, a["cpu"])
			if a["rss"] != "" {
				vms[i].RSSMiB = float64(scripttest.Size(t, a["rss"]) >> 20)
			}
			out = append(out, "load "+strings.Join(f[1:], " "))
		case "round":
			d, err := time.ParseDuration(a["at"])
			if err != nil {
				t.Fatal(err)
			}
			st.Now = epoch.Add(d)
			in.Hosts, in.VMs, in.State = withUse(hosts, vms), vms, st
			res, err := Propose(in)
			if err != nil {
				out = append(out, "error: "+err.Error())
				continue
			}
			out = append(out, fmt.Sprintf("round at=%s: imbalance %.3f -> %.3f, %d proposals, active=%v", a["at"], res.Before, res.After, len(res.Proposals), res.Active))
			for _, p := range res.Proposals {
				out = append(out, fmt.Sprintf("  %s %s -> %s %s gain=%.4f cost=%.3f", p.VM, p.From, p.To, p.Strategy, p.Gain, p.Cost))
				if last, ok := st.LastMoved[p.VM]; ok && st.Now.Sub(last) < in.Config.withDefaults().Cooldown {
					out = append(out, "  VIOLATION: "+p.VM+" moved again within its cooldown")
				}
				vms[vmIdx(p.VM)].Host = p.To
				st.LastMoved[p.VM] = st.Now
			}
			if len(res.Cooling) > 0 {
				out = append(out, "  cooling: "+strings.Join(res.Cooling, ","))
			}
			out = append(out, "  why: "+res.Why)
			st.Active = res.Active
		default:
			b.Fatalf(t, "unknown line %q", l)
		}
	}
	return out
}

// withUse fills hosts' use and allocations from the VMs on them.
func withUse(hosts []Host, vms []VM) []Host {
	out := append([]Host(nil), hosts...)
	idx := map[string]int{}
	for i := range out {
		idx[out[i].Name] = i
		out[i].Groups = nil
	}
	for _, vm := range vms {
		h := &out[idx[vm.Host]]
		h.CPUUsed += vm.CPUUsed
		h.MemUsedMiB += vm.RSSMiB
		h.Place(placement.Request{VCPUs: vm.VCPUs, MemoryMiB: vm.MemoryMiB, AntiAffinity: vm.AntiAffinity})
	}
	return out
}
