package svgplot

import (
	"strings"
	"testing"
)

// TestWriteDrawsSeriesAxesAndMarkers: every series is a line, titles and
// labels are escaped, a right axis appears only when named, and a marker
// is a labelled vertical line at its x.
func TestWriteDrawsSeriesAxesAndMarkers(t *testing.T) {
	var b strings.Builder
	c := Chart{Title: "a <b>", XLabel: "s", YLabel: "MiB", Y2Label: "MiB/s",
		Series: []Series{
			{Points: []Point{{0, 10}, {5, 0}}, Color: "red", Tooltip: "left"},
			{Points: []Point{{0, 100}, {5, 50}}, Color: "blue", Right: true, Dashed: true},
			{Color: "green"}, // empty: not drawn
		},
		Legend:  []LegendEntry{{Color: "red", Label: "remaining"}},
		Markers: []Marker{{X: 5, Label: "switchover"}},
	}
	if err := Write(&b, c); err != nil {
		t.Fatal(err)
	}
	s := b.String()
	if n := strings.Count(s, "<polyline"); n != 2 {
		t.Errorf("%d lines, want 2", n)
	}
	for _, want := range []string{"a &lt;b&gt;", ">MiB/s<", ">switchover<", `stroke-dasharray="5,3"`, ">remaining<"} {
		if !strings.Contains(s, want) {
			t.Errorf("SVG lacks %q:\n%s", want, s)
		}
	}
	// The right series' top (100) is drawn at the plot's top, like the
	// left series' top (10) on its own scale.
	if !strings.Contains(s, `points="80.0,50.0 `) || strings.Count(s, ",50.0 ") < 2 {
		t.Errorf("series not scaled to their own axes:\n%s", s)
	}
	b.Reset()
	c.Y2Label = ""
	if err := Write(&b, c); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(b.String(), "rotate(90)") {
		t.Error("a right axis drawn without Y2Label")
	}
}

func TestNiceStep(t *testing.T) {
	for _, tc := range []struct{ max, want float64 }{{6, 1}, {10, 2}, {30, 5}, {60, 10}, {0.6, 0.1}} {
		if got := NiceStep(tc.max); got != tc.want {
			t.Errorf("NiceStep(%g) = %g, want %g", tc.max, got, tc.want)
		}
	}
}

// TestTickLabelsRounded: ticks of a fractional step read as decimals
// (0.6, not 0.6000000000000001).
func TestTickLabelsRounded(t *testing.T) {
	var b strings.Builder
	if err := Write(&b, Chart{Series: []Series{{Points: []Point{{0, 0.9}, {1, 0.1}}, Color: "red"}}}); err != nil {
		t.Fatal(err)
	}
	if s := b.String(); strings.Contains(s, "00000") || !strings.Contains(s, ">0.6<") {
		t.Errorf("tick labels not rounded:\n%s", s)
	}
}
