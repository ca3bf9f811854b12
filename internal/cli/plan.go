package cli

import (
	"fmt"
	"strings"

	ferryv1 "github.com/ferryvm/ferry/gen/ferry/v1"
)

// renderPlan prints a dry run: the measured inputs, every strategy's
// prediction, and the choice.
func renderPlan(vm, to string, p *ferryv1.Plan) string {
	var b strings.Builder
	in := p.GetInputs()
	fmt.Fprintf(&b, "dry run: %s → %s (nothing was changed)\n", vm, to)
	if in != nil {
		fmt.Fprintf(&b, "  measured   memory %s, non-zero ≈ %s, dirty rate %.1f MiB/s, link %.0f MiB/s (%s), target downtime %d ms\n",
			mibStr(in.MemoryBytes), mibStr(in.NonZeroBytes), in.DirtyRateMibps, in.BandwidthMibps, in.BandwidthSource, in.MaxDowntimeMs)
		if in.DirtyRateSource != "" {
			fmt.Fprintf(&b, "  from       dirty rate: %s; non-zero RAM: %s\n", in.DirtyRateSource, in.NonZeroSource)
		}
		if in.StreamSource != "" {
			fmt.Fprintf(&b, "  stream     %.0f MiB/s when the link is not the limit (%s)\n", in.StreamMibps, in.StreamSource)
		}
		if in.DiskBytes > 0 && in.MirrorSource != "" {
			fmt.Fprintf(&b, "  mirror     %.0f MiB/s for %s of local disks when the link is not the limit (%s)\n", in.MirrorMibps, mibStr(in.DiskBytes), in.MirrorSource)
		}
	}
	if len(p.GetPredictions()) > 0 {
		rows := [][]string{}
		for _, pr := range p.Predictions {
			conv := "no"
			if pr.Converges {
				conv = "yes"
			}
			allowed := ""
			if !pr.Allowed {
				allowed = " (not allowed)"
			}
			thr := "-"
			if pr.ThrottlePercent > 0 {
				thr = fmt.Sprintf("%d%%", pr.ThrottlePercent)
			}
			rows = append(rows, []string{pr.Strategy + allowed, conv, fmt.Sprintf("%.2f s", float64(pr.TotalMs)/1000), fmt.Sprintf("%d ms", pr.DowntimeMs), mibStr(pr.Bytes), thr, pr.Reason})
		}
		var t strings.Builder
		_ = table(&t, []string{"STRATEGY", "CONVERGES", "TOTAL", "DOWNTIME", "BYTES", "THROTTLE", "WHY"}, rows)
		for _, line := range strings.Split(strings.TrimRight(t.String(), "\n"), "\n") {
			b.WriteString("  " + line + "\n")
		}
	}
	if p.GetChoice() != "" {
		fmt.Fprintf(&b, "  choice     %s: %s\n", p.Choice, p.Reason)
	} else {
		fmt.Fprintf(&b, "  no strategy fits: %s\n", p.GetReason())
	}
	for _, l := range tuningLines(p.GetTuning()) {
		fmt.Fprintf(&b, "  tuning     %s\n", l)
	}
	return b.String()
}

func mibStr(b int64) string { return fmt.Sprintf("%.1f MiB", float64(b)/(1<<20)) }
