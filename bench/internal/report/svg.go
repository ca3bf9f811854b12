package report

import (
	"fmt"
	"io"

	"github.com/ferryvm/ferry/internal/svgplot"
)

// colors per system in plots.
var colors = map[string]string{"ferry": "#d62728", "qemu": "#1f77b4", "libvirt": "#2ca02c", "libvirt-tuned": "#9467bd", "libvirt-plain": "#8c564b"}

// PlotRemaining writes an SVG line plot of remaining bytes over time since
// the migration was issued, one line per run, one colour per system.
func PlotRemaining(w io.Writer, title string, runs []Run) error {
	const mib float64 = 1 << 20
	c := svgplot.Chart{Title: title, XLabel: "seconds since the migration was issued", YLabel: "remaining MiB", Note: "dashed: not completed"}
	for _, sys := range Systems {
		n := 0
		for _, r := range runs {
			if r.System != sys || len(r.Migration.Samples) == 0 {
				continue
			}
			n++
			s := svgplot.Series{Color: colors[sys], Dashed: !r.Migration.Completed(),
				Tooltip: fmt.Sprintf("%s run %d: %s", sys, r.Index, r.Migration.Status)}
			for _, p := range r.Migration.Samples {
				s.Points = append(s.Points, svgplot.Point{X: float64(p.TMs) / 1000, Y: float64(p.RemainingBytes) / mib})
			}
			c.Series = append(c.Series, s)
		}
		if n > 0 {
			c.Legend = append(c.Legend, svgplot.LegendEntry{Color: colors[sys], Label: fmt.Sprintf("%s (%d runs)", sys, n)})
		}
	}
	return svgplot.Write(w, c)
}
