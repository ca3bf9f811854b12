// Package svgplot draws line charts as standalone SVG: lines over a time
// axis on a left and, optionally, a right value axis, a legend, a note and
// labelled vertical markers. Used by the bench report and `ferry migration
// plot`.
package svgplot

import (
	"fmt"
	"html"
	"io"
	"math"
	"strings"
)

// Point is one (x, y) value of a series.
type Point struct{ X, Y float64 }

// Series is one line.
type Series struct {
	Points []Point
	Color  string // any SVG colour
	Dashed bool
	// Tooltip is shown on hover (escaped).
	Tooltip string
	// Right plots the series against the right axis (Chart.Y2Label).
	Right bool
}

// LegendEntry is a colour swatch and its label.
type LegendEntry struct{ Color, Label string }

// Marker is a labelled vertical line at X.
type Marker struct {
	X     float64
	Label string
	Color string // "" is dark grey
}

// Chart is what Write draws.
type Chart struct {
	Title, XLabel, YLabel string
	// Y2Label names the right axis; "" draws none (Right series then use
	// the left one's scale).
	Y2Label string
	Series  []Series
	Legend  []LegendEntry
	// Note is a small line under the legend.
	Note    string
	Markers []Marker
}

const (
	width, height         = 900, 520
	left, right, top, bot = 80, 170, 50, 60
	plotW, plotH          = width - left - right, height - top - bot
)

// Write writes c as an SVG document to w.
func Write(w io.Writer, c Chart) error {
	var maxX, maxY, maxY2 float64
	for _, m := range c.Markers {
		maxX = math.Max(maxX, m.X)
	}
	for _, s := range c.Series {
		for _, p := range s.Points {
			maxX = math.Max(maxX, p.X)
			if s.Right && c.Y2Label != "" {
				maxY2 = math.Max(maxY2, p.Y)
			} else {
				maxY = math.Max(maxY, p.Y)
			}
		}
	}
	maxX, stepX := axis(maxX)
	maxY, stepY := axis(maxY)
	maxY2, stepY2 := axis(maxY2)
	x := func(v float64) float64 { return left + v/maxX*plotW }
	y := func(v float64) float64 { return top + plotH - v/maxY*plotH }
	y2 := func(v float64) float64 { return top + plotH - v/maxY2*plotH }

	var b strings.Builder
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d" font-family="sans-serif" font-size="12">`+"\n", width, height, width, height)
	fmt.Fprintf(&b, `<rect width="100%%" height="100%%" fill="white"/>`+"\n")
	fmt.Fprintf(&b, `<text x="%d" y="28" font-size="16" font-weight="bold">%s</text>`+"\n", left, html.EscapeString(c.Title))
	for i := 0; tick(i, stepX) <= maxX+1e-9; i++ {
		t := tick(i, stepX)
		fmt.Fprintf(&b, `<line x1="%.1f" y1="%d" x2="%.1f" y2="%d" stroke="#ddd"/>`+"\n", x(t), top, x(t), top+plotH)
		fmt.Fprintf(&b, `<text x="%.1f" y="%d" text-anchor="middle">%g</text>`+"\n", x(t), top+plotH+18, t)
	}
	for i := 0; tick(i, stepY) <= maxY+1e-9; i++ {
		v := tick(i, stepY)
		fmt.Fprintf(&b, `<line x1="%d" y1="%.1f" x2="%d" y2="%.1f" stroke="#ddd"/>`+"\n", left, y(v), left+plotW, y(v))
		fmt.Fprintf(&b, `<text x="%d" y="%.1f" text-anchor="end">%g</text>`+"\n", left-6, y(v)+4, v)
	}
	if c.Y2Label != "" {
		for i := 0; tick(i, stepY2) <= maxY2+1e-9; i++ {
			v := tick(i, stepY2)
			fmt.Fprintf(&b, `<text x="%d" y="%.1f">%g</text>`+"\n", left+plotW+6, y2(v)+4, v)
		}
		fmt.Fprintf(&b, `<text transform="translate(%d %d) rotate(90)" text-anchor="middle">%s</text>`+"\n", left+plotW+50, top+plotH/2, html.EscapeString(c.Y2Label))
	}
	fmt.Fprintf(&b, `<rect x="%d" y="%d" width="%d" height="%d" fill="none" stroke="#333"/>`+"\n", left, top, plotW, plotH)
	fmt.Fprintf(&b, `<text x="%d" y="%d" text-anchor="middle">%s</text>`+"\n", left+plotW/2, height-18, html.EscapeString(c.XLabel))
	fmt.Fprintf(&b, `<text transform="translate(20 %d) rotate(-90)" text-anchor="middle">%s</text>`+"\n", top+plotH/2, html.EscapeString(c.YLabel))
	for _, s := range c.Series {
		if len(s.Points) == 0 {
			continue
		}
		ys := y
		if s.Right && c.Y2Label != "" {
			ys = y2
		}
		pts := make([]string, 0, len(s.Points))
		for _, p := range s.Points {
			pts = append(pts, fmt.Sprintf("%.1f,%.1f", x(p.X), ys(p.Y)))
		}
		dash := ""
		if s.Dashed {
			dash = ` stroke-dasharray="5,3"`
		}
		fmt.Fprintf(&b, `<polyline fill="none" stroke="%s" stroke-width="1.5" stroke-opacity="0.8"%s points="%s"><title>%s</title></polyline>`+"\n",
			s.Color, dash, strings.Join(pts, " "), html.EscapeString(s.Tooltip))
	}
	for _, m := range c.Markers {
		col := m.Color
		if col == "" {
			col = "#444"
		}
		fmt.Fprintf(&b, `<line x1="%.1f" y1="%d" x2="%.1f" y2="%d" stroke="%s" stroke-width="1.5" stroke-dasharray="2,2"/>`+"\n", x(m.X), top, x(m.X), top+plotH, col)
		fmt.Fprintf(&b, `<text x="%.1f" y="%d" fill="%s" font-size="11">%s</text>`+"\n", x(m.X)+3, top+12, col, html.EscapeString(m.Label))
	}
	legendX := left + plotW + 15
	if c.Y2Label != "" {
		legendX += 50 // past the right axis
	}
	legendY := top + 10
	if c.Y2Label != "" {
		legendY = top - 10 // above the plot, in a row: the right side holds the axis
		legendX = left + 320
	}
	for _, l := range c.Legend {
		fmt.Fprintf(&b, `<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="%s" stroke-width="3"/>`+"\n", legendX, legendY, legendX+25, legendY, l.Color)
		fmt.Fprintf(&b, `<text x="%d" y="%d">%s</text>`+"\n", legendX+31, legendY+4, html.EscapeString(l.Label))
		if c.Y2Label != "" {
			legendX += 170
		} else {
			legendY += 20
		}
	}
	switch {
	case c.Note != "" && c.Y2Label != "": // the legend row is full: on the title's line, at the right
		fmt.Fprintf(&b, `<text x="%d" y="28" font-size="11" text-anchor="end">%s</text>`+"\n", left+plotW, html.EscapeString(c.Note))
	case c.Note != "":
		fmt.Fprintf(&b, `<text x="%d" y="%d" font-size="11">%s</text>`+"\n", legendX, legendY+4, html.EscapeString(c.Note))
	}
	b.WriteString("</svg>\n")
	_, err := io.WriteString(w, b.String())
	return err
}

// axis rounds max up to a whole number of nice steps (1 when max is not
// positive) and returns it with the step.
func axis(max float64) (top, step float64) {
	if max <= 0 {
		max = 1
	}
	step = NiceStep(max)
	return math.Ceil(max/step) * step, step
}

// NiceStep returns a 1/2/5×10^k step giving about 5-10 ticks up to max.
func NiceStep(max float64) float64 {
	raw := max / 6
	p := math.Pow(10, math.Floor(math.Log10(raw)))
	for _, m := range []float64{1, 2, 5, 10} {
		if raw <= m*p {
			return m * p
		}
	}
	return 10 * p
}

// tick is the i-th tick of an axis with this step, rounded so that its
// label reads 0.6, not 0.6000000000000001.
func tick(i int, step float64) float64 {
	return math.Round(float64(i)*step*1e9) / 1e9
}
