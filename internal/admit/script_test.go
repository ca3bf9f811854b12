package admit

import (
	"errors"
	"fmt"
	"sort"
	"strings"
	"testing"

	"github.com/ferryvm/ferry/internal/scripttest"
)

// A script block:
//
//	admit TITLE
//	limits [cluster=N] [source=N] [dest=N] [host-bw=RATE]
//	start ID FROM TO [cap=RATE]   Check, then (if admitted) in flight
//	force ID FROM TO [cap=RATE]   in flight without Check (--ignore-limits)
//	finish ID                     no longer in flight
//	shares                        every flight's cap and every host's sum
//	----
//
// After every line that changes the flights the shares are checked: a
// host whose flights' caps sum above host-bw, or a flight above its own
// cap, prints a VIOLATION line.
func TestScripts(t *testing.T) {
	scripttest.Dir(t, func(t *testing.T, f string) { scripttest.Run(t, f, runAdmit) })
}

func mib(v float64) string { return fmt.Sprintf("%.1fMiB/s", v/(1<<20)) }

func runAdmit(t *testing.T, b scripttest.Block) []string {
	var l Limits
	var flights []Flight
	var out []string
	check := func() {
		sh := Shares(l, flights)
		sum := map[string]float64{}
		for _, f := range flights {
			if f.Cap > 0 && sh[f.ID] > f.Cap {
				out = append(out, fmt.Sprintf("VIOLATION %s: %s above its cap %s", f.ID, mib(sh[f.ID]), mib(f.Cap)))
			}
			if l.BandwidthPerHost > 0 && sh[f.ID] <= 0 {
				out = append(out, fmt.Sprintf("VIOLATION %s: uncapped under a per-host cap", f.ID))
			}
			for _, h := range hostsOf(f) {
				sum[h] += sh[f.ID]
			}
		}
		for h, s := range sum {
			if l.BandwidthPerHost > 0 && s > l.BandwidthPerHost {
				out = append(out, fmt.Sprintf("VIOLATION host %s: %s above %s", h, mib(s), mib(l.BandwidthPerHost)))
			}
		}
	}
	for _, line := range b.Header[1:] {
		f := strings.Fields(line)
		a := scripttest.KV(f[1:])
		switch f[0] {
		case "limits":
			l = Limits{MaxParallelCluster: scripttest.Int(t, a["cluster"]), MaxParallelPerSource: scripttest.Int(t, a["source"]),
				MaxParallelPerDest: scripttest.Int(t, a["dest"]), BandwidthPerHost: float64(scripttest.Size(t, a["host-bw"]))}
		case "start", "force":
			fl := Flight{ID: f[1], From: f[2], To: f[3], Cap: float64(scripttest.Size(t, a["cap"]))}
			if f[0] == "start" {
				if err := Check(l, flights, fl); err != nil {
					if !errors.Is(err, ErrLimit) {
						t.Fatalf("%s: error %v does not wrap ErrLimit", line, err)
					}
					out = append(out, fmt.Sprintf("%s refused: %v", fl.ID, err))
					continue
				}
			}
			flights = append(flights, fl)
			out = append(out, fmt.Sprintf("%s started %s->%s", fl.ID, fl.From, fl.To))
			check()
		case "finish":
			n := len(flights)
			for i := range flights {
				if flights[i].ID == f[1] {
					flights = append(flights[:i], flights[i+1:]...)
					break
				}
			}
			if len(flights) == n {
				t.Fatalf("%s: no such flight", line)
			}
			out = append(out, f[1]+" finished")
			check()
		case "shares":
			sh := Shares(l, flights)
			sum := map[string]float64{}
			for _, fl := range flights {
				c := "none"
				if sh[fl.ID] > 0 {
					c = mib(sh[fl.ID])
				}
				out = append(out, fmt.Sprintf("  %s %s->%s cap %s", fl.ID, fl.From, fl.To, c))
				for _, h := range hostsOf(fl) {
					sum[h] += sh[fl.ID]
				}
			}
			var hs []string
			for h := range sum {
				hs = append(hs, h)
			}
			sort.Strings(hs)
			for _, h := range hs {
				out = append(out, fmt.Sprintf("  host %s %s", h, mib(sum[h])))
			}
		default:
			b.Fatalf(t, "unknown line %q", line)
		}
	}
	return out
}
