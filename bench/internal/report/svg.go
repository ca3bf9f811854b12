package report

import (
	"fmt"
	"html"
	"io"
	"math"
	"strings"
)

// colors per system in plots.
var colors = map[string]string{"ferry": "#d62728", "qemu": "#1f77b4", "libvirt": "#2ca02c", "libvirt-tuned": "#9467bd"}

// PlotRemaining writes an SVG line plot of remaining bytes over time since
// the migration was issued, one line per run, one colour per system.
func PlotRemaining(w io.Writer, title string, runs []Run) error {
	const (
		width, height                 = 900, 520
		left, right, top, bot         = 80, 170, 50, 60
		plotW, plotH                  = width - left - right, height - top - bot
		mib                   float64 = 1 << 20
	)
	var maxT, maxY float64
	for _, r := range runs {
		for _, s := range r.Migration.Samples {
			maxT = math.Max(maxT, float64(s.TMs)/1000)
			maxY = math.Max(maxY, float64(s.RemainingBytes)/mib)
		}
	}
	if maxT <= 0 {
		maxT = 1
	}
	if maxY <= 0 {
		maxY = 1
	}
	stepT, stepY := niceStep(maxT), niceStep(maxY)
	maxT = math.Ceil(maxT/stepT) * stepT
	maxY = math.Ceil(maxY/stepY) * stepY
	x := func(t float64) float64 { return left + t/maxT*plotW }
	y := func(v float64) float64 { return top + plotH - v/maxY*plotH }

	var b strings.Builder
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d" font-family="sans-serif" font-size="12">`+"\n", width, height, width, height)
	fmt.Fprintf(&b, `<rect width="100%%" height="100%%" fill="white"/>`+"\n")
	fmt.Fprintf(&b, `<text x="%d" y="28" font-size="16" font-weight="bold">%s</text>`+"\n", left, html.EscapeString(title))
	for t := 0.0; t <= maxT+1e-9; t += stepT {
		fmt.Fprintf(&b, `<line x1="%.1f" y1="%d" x2="%.1f" y2="%d" stroke="#ddd"/>`+"\n", x(t), top, x(t), top+plotH)
		fmt.Fprintf(&b, `<text x="%.1f" y="%d" text-anchor="middle">%g</text>`+"\n", x(t), top+plotH+18, t)
	}
	for v := 0.0; v <= maxY+1e-9; v += stepY {
		fmt.Fprintf(&b, `<line x1="%d" y1="%.1f" x2="%d" y2="%.1f" stroke="#ddd"/>`+"\n", left, y(v), left+plotW, y(v))
		fmt.Fprintf(&b, `<text x="%d" y="%.1f" text-anchor="end">%g</text>`+"\n", left-6, y(v)+4, v)
	}
	fmt.Fprintf(&b, `<rect x="%d" y="%d" width="%d" height="%d" fill="none" stroke="#333"/>`+"\n", left, top, plotW, plotH)
	fmt.Fprintf(&b, `<text x="%d" y="%d" text-anchor="middle">seconds since the migration was issued</text>`+"\n", left+plotW/2, height-18)
	fmt.Fprintf(&b, `<text transform="translate(20 %d) rotate(-90)" text-anchor="middle">remaining MiB</text>`+"\n", top+plotH/2)
	legendY := top + 10
	for _, sys := range Systems {
		n := 0
		for _, r := range runs {
			if r.System != sys || len(r.Migration.Samples) == 0 {
				continue
			}
			n++
			var pts []string
			for _, s := range r.Migration.Samples {
				pts = append(pts, fmt.Sprintf("%.1f,%.1f", x(float64(s.TMs)/1000), y(float64(s.RemainingBytes)/mib)))
			}
			dash := ""
			if !r.Migration.Completed() {
				dash = ` stroke-dasharray="5,3"`
			}
			fmt.Fprintf(&b, `<polyline fill="none" stroke="%s" stroke-width="1.5" stroke-opacity="0.8"%s points="%s"><title>%s run %d: %s</title></polyline>`+"\n",
				colors[sys], dash, strings.Join(pts, " "), sys, r.Index, html.EscapeString(r.Migration.Status))
		}
		if n == 0 {
			continue
		}
		fmt.Fprintf(&b, `<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="%s" stroke-width="3"/>`+"\n", left+plotW+15, legendY, left+plotW+40, legendY, colors[sys])
		fmt.Fprintf(&b, `<text x="%d" y="%d">%s (%d runs)</text>`+"\n", left+plotW+46, legendY+4, sys, n)
		legendY += 20
	}
	fmt.Fprintf(&b, `<text x="%d" y="%d" font-size="11">dashed: not completed</text>`+"\n", left+plotW+15, legendY+4)
	b.WriteString("</svg>\n")
	_, err := io.WriteString(w, b.String())
	return err
}

// niceStep returns a 1/2/5×10^k step giving about 5-10 ticks up to max.
func niceStep(max float64) float64 {
	raw := max / 6
	p := math.Pow(10, math.Floor(math.Log10(raw)))
	for _, m := range []float64{1, 2, 5, 10} {
		if raw <= m*p {
			return m * p
		}
	}
	return 10 * p
}
