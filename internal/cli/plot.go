package cli

import (
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"connectrpc.com/connect"
	ferryv1 "github.com/ferryvm/ferry/gen/ferry/v1"
	"github.com/ferryvm/ferry/internal/svgplot"
	"github.com/spf13/cobra"
)

// errNoSamples means a migration has no progress samples to plot.
var errNoSamples = errors.New("no progress samples to plot (a cold migration, or one that has not started sending RAM yet)")

func newMigrationPlotCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "plot ID -o FILE.svg",
		Short: "Plot a migration's remaining bytes and dirty rate over time as SVG, the switchover marked (-o -: stdout)",
		Args:  cobra.ExactArgs(1),
		// -o names the file here, not an output format.
		PersistentPreRunE: func(cmd *cobra.Command, _ []string) error {
			g.stdout, g.stderr = cmd.OutOrStdout(), cmd.ErrOrStderr()
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			dest := g.output
			if !cmd.Flags().Changed("output") {
				dest = "-"
			}
			if dest != "-" && !strings.HasSuffix(dest, ".svg") {
				return fmt.Errorf("-o: the plot's file must end in .svg (or be - for stdout), got %q", dest)
			}
			resp, err := g.migrations().GetMigration(cmd.Context(), connect.NewRequest(&ferryv1.GetMigrationRequest{Id: args[0]}))
			if err != nil {
				return err
			}
			chart, err := migrationChart(resp.Msg.GetMigration())
			if err != nil {
				return fmt.Errorf("migration %s: %w", args[0], err)
			}
			if dest == "-" {
				return svgplot.Write(g.stdout, chart)
			}
			return writeFile(dest, func(w io.Writer) error { return svgplot.Write(w, chart) })
		},
	}
}

// writeFile writes dest through fn, removing a partly written file.
func writeFile(dest string, fn func(io.Writer) error) error {
	f, err := os.Create(dest)
	if err != nil {
		return fmt.Errorf("plot: %w", err)
	}
	err = fn(f)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(dest)
		return fmt.Errorf("plot: write %s: %w", dest, err)
	}
	return nil
}

// migrationChart is the plot of m: remaining MiB (left axis) and the dirty
// rate in MiB/s (right axis) per sample, and a marker where the switchover
// (or the switch to post-copy) began, from the report's state history.
func migrationChart(m *ferryv1.Migration) (svgplot.Chart, error) {
	if len(m.GetSamples()) == 0 {
		return svgplot.Chart{}, errNoSamples
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
	if d := downtimeMs(m); d > 0 {
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

// downtimeMs is the measured pause: the sum of its parts when known, else
// QEMU's figure (0: unknown).
func downtimeMs(m *ferryv1.Migration) int64 {
	if t := m.GetDowntimePhases().GetTotalMs(); t > 0 {
		return t
	}
	return m.GetDowntimeMs()
}
