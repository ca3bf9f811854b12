package cli

import "github.com/spf13/cobra"

func newDevCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "dev", Short: "Developer tools (a multi-host cluster on one machine)"}
	return cmd
}
