package cli

import (
	"fmt"
	"os"
	"path/filepath"

	"github.com/spf13/cobra"
	"github.com/spf13/cobra/doc"
)

// newDocsCmd is the hidden command packaging runs to generate man pages and
// shell completions from the command tree.
func newDocsCmd() *cobra.Command {
	var man, comp string
	cmd := &cobra.Command{
		Use:    "gen-docs",
		Short:  "Write man pages (--man DIR) and bash/zsh/fish completions (--completions DIR) generated from the CLI",
		Hidden: true,
		Args:   cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			root := cmd.Root()
			if man != "" {
				if err := os.MkdirAll(man, 0o755); err != nil {
					return fmt.Errorf("--man: %w", err)
				}
				hdr := &doc.GenManHeader{Title: "FERRY", Section: "1", Source: "Ferry", Manual: "Ferry manual"}
				if err := doc.GenManTree(root, hdr, man); err != nil {
					return fmt.Errorf("--man %s: %w", man, err)
				}
			}
			if comp != "" {
				if err := os.MkdirAll(comp, 0o755); err != nil {
					return fmt.Errorf("--completions: %w", err)
				}
				gens := map[string]func(string) error{
					"ferry.bash": func(p string) error { return root.GenBashCompletionFileV2(p, true) },
					"_ferry":     root.GenZshCompletionFile,
					"ferry.fish": func(p string) error { return root.GenFishCompletionFile(p, true) },
				}
				for name, gen := range gens {
					if err := gen(filepath.Join(comp, name)); err != nil {
						return fmt.Errorf("--completions %s: %w", name, err)
					}
				}
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&man, "man", "", "directory for the man pages (section 1)")
	cmd.Flags().StringVar(&comp, "completions", "", "directory for ferry.bash, _ferry (zsh) and ferry.fish")
	return cmd
}
