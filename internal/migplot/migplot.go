// Package migplot turns a migration's report into a chart: remaining
// bytes and dirty rate over time with the switchover marked. Used by
// `ferry migration plot` and the dashboard (internal/dashboard).
package migplot

import (
	"errors"
	"fmt"

	ferryv1 "github.com/ferryvm/ferry/gen/ferry/v1"
	"github.com/ferryvm/ferry/internal/svgplot"
)

// ErrNoSamples means a migration has no progress samples to plot.
var ErrNoSamples = errors.New("no progress samples to plot (a cold migration, or one that has not started sending RAM yet)")

// Chart is the plot of m: remaining MiB (left axis) and the dirty
// rate in MiB/s (right axis) per sample, and a marker where the switchover
// (or the switch to post-copy) began, from the report's state history.
func Chart(m *ferryv1.Migration) (svgplot.Chart, error) {
	if len(m.GetSamples()) == 0 {
		return svgplot.Chart{}, ErrNoSamples
	}
	const mib float64 = 1 << 20
	remaining := svgplot.Series{Color: "#d62728", Tooltip: "remaining MiB"}
	dirty := svgplot.Series{Color: "#1f77b4", Tooltip: "dirty rate MiB/s", Right: true, Dashed: true}
	for _, s := range m.GetSamples() {
		t := float64(s.GetTMs()) / 1000
		remaining.Points = append(remaining.Points, svgplot.Point{X: t, Y: float64(s.GetRemainingBytes()) / mib})
		dirty.Points = append(dirty.Points, svgplot.Point{X: t, Y: s.GetDirtyRateMibps()})
	}
	c := svgplot.Chart{
		Title:   fmt.Sprintf("%s: %s %s → %s (%s, %s)", m.GetId(), m.GetVm(), m.GetFrom(), m.GetTo(), m.GetStrategy(), m.GetStatus()),
		XLabel:  "seconds since the migration started",
		YLabel:  "remaining MiB",
		Y2Label: "dirty rate MiB/s",
		Series:  []svgplot.Series{remaining, dirty},
		Legend: []svgplot.LegendEntry{
			{Color: remaining.Color, Label: "remaining MiB"},
			{Color: dirty.Color, Label: "dirty rate MiB/s (dashed)"},
		},
	}
	if d := DowntimeMs(m); d > 0 {
		c.Note = fmt.Sprintf("downtime %d ms", d)
	}
	start := m.GetStartedAt()
	marked := map[string]bool{}
	for _, e := range m.GetEvents() {
		label := ""
		switch e.GetState() {
		case "switchover":
			label = "switchover"
		case "postcopy-active":
			label = "post-copy"
		default:
			continue
		}
		if marked[label] || start == nil || e.GetAt() == nil {
			continue
		}
		marked[label] = true
		c.Markers = append(c.Markers, svgplot.Marker{X: e.GetAt().AsTime().Sub(start.AsTime()).Seconds(), Label: label})
	}
	return c, nil
}

// DowntimeMs is the measured pause: the sum of its parts when known, else
// QEMU's figure (0: unknown).
func DowntimeMs(m *ferryv1.Migration) int64 {
	if t := m.GetDowntimePhases().GetTotalMs(); t > 0 {
		return t
	}
	return m.GetDowntimeMs()
}
