package evacuate

import (
	"fmt"
	"strings"
	"time"
)

// Lines renders the plan for people (`--dry-run`) and for the script
// tests: one header line, one line per move in start order, one per
// unplaced VM with what would help.
func (p Plan) Lines() []string {
	out := []string{fmt.Sprintf("drain %s: %d moves, %d unplaced, parallel %d (per destination %d), eta %s",
		p.Source, len(p.Moves), len(p.Unplaced), p.Parallel, p.PerDest, dur(p.ETA))}
	for _, m := range p.Moves {
		out = append(out, fmt.Sprintf("%d. %s -> %s %s start=%s end=%s downtime=%s bytes=%s bw=%s/s",
			m.Order, m.VM, m.To, m.Strategy, dur(m.Start), dur(m.End), dur(m.Prediction.Downtime),
			size(float64(m.Prediction.Bytes)), size(m.BandwidthBytesPerSec)))
	}
	for _, u := range p.Unplaced {
		out = append(out, fmt.Sprintf("unplaced %s: %s: %s", u.VM, u.Reason, u.Detail), "  help: "+u.Help)
	}
	return out
}

func dur(d time.Duration) string { return d.Round(time.Millisecond).String() }

func size(b float64) string {
	units := []string{"B", "KiB", "MiB", "GiB", "TiB"}
	i := 0
	for b >= 1024 && i < len(units)-1 {
		b /= 1024
		i++
	}
	s := strings.TrimRight(strings.TrimRight(fmt.Sprintf("%.2f", b), "0"), ".")
	return s + units[i]
}
