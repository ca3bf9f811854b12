package cli

import (
	"fmt"
	"io"
	"os"
	"strings"

	"connectrpc.com/connect"
	ferryv1 "github.com/ferryvm/ferry/gen/ferry/v1"
	"github.com/ferryvm/ferry/internal/migplot"
	"github.com/ferryvm/ferry/internal/svgplot"
	"github.com/spf13/cobra"
)

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
			chart, err := migplot.Chart(resp.Msg.GetMigration())
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
