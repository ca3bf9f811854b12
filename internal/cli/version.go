package cli

import (
	"encoding/json"
	"fmt"

	"github.com/ferryvm/ferry/internal/version"
	"github.com/spf13/cobra"
)

func newVersionCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print ferry's version, the commit it was built from and the Go version",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			v := version.Get()
			if g.output == "json" {
				enc := json.NewEncoder(g.stdout)
				enc.SetIndent("", "  ")
				return enc.Encode(v)
			}
			rev := v.Revision
			if rev == "" {
				rev = "unknown"
			}
			if v.Modified {
				rev += " (modified)"
			}
			_, err := fmt.Fprintf(g.stdout, "ferry %s\ncommit %s %s\n%s\n", v.Version, rev, v.Time, v.Go)
			return err
		},
	}
}
