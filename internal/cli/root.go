// Package cli is the `ferry` command line: the server and agent daemons and
// the client verbs that talk to the control plane.
package cli

import (
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"connectrpc.com/connect"
	ferryv1 "github.com/ferryvm/ferry/gen/ferry/v1"
	"github.com/ferryvm/ferry/gen/ferry/v1/ferryv1connect"
	"github.com/ferryvm/ferry/internal/failover"
	"github.com/spf13/cobra"
)

// DefaultServer is the control plane address when neither --server nor
// FERRY_SERVER is set.
const DefaultServer = "127.0.0.1:7100"

// globals are the flags every client command shares.
type globals struct {
	server string
	output string
	stdout io.Writer
	stderr io.Writer
}

func (g *globals) hosts() ferryv1connect.HostServiceClient {
	hc, base := failover.Client(g.server)
	return ferryv1connect.NewHostServiceClient(hc, base)
}

func (g *globals) vms() ferryv1connect.VMServiceClient {
	hc, base := failover.Client(g.server)
	return ferryv1connect.NewVMServiceClient(hc, base)
}

// checkOutput validates -o.
func (g *globals) checkOutput() error {
	switch g.output {
	case "table", "json":
		return nil
	}
	return fmt.Errorf("-o: must be table or json, got %q", g.output)
}

// NewRoot builds the ferry command tree.
func NewRoot() *cobra.Command {
	g := &globals{stdout: os.Stdout, stderr: os.Stderr}
	root := &cobra.Command{
		Use:           "ferry",
		Short:         "Ferry moves running QEMU/KVM virtual machines between hosts",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	def := os.Getenv("FERRY_SERVER")
	if def == "" {
		def = DefaultServer
	}
	root.PersistentFlags().StringVar(&g.server, "server", def, "control plane addresses, comma-separated, tried in order (host:port or unix:///path; env FERRY_SERVER)")
	root.PersistentFlags().StringVarP(&g.output, "output", "o", "table", "output format: table or json")
	root.PersistentPreRunE = func(cmd *cobra.Command, _ []string) error {
		g.stdout, g.stderr = cmd.OutOrStdout(), cmd.ErrOrStderr()
		return g.checkOutput()
	}
	root.AddCommand(newServerCmd(g), newAgentCmd(g), newHostCmd(g), newVMCmd(g), newDevCmd(g))
	root.AddCommand(newMigrateCmd(g), newMigrationCmd(g), newEventsCmd(g), newPolicyCmd(g), newBalanceCmd(g))
	root.AddCommand(newTokenCmd(g), newLoginCmd(g), newWhoAmICmd(g), newVersionCmd(g), newDocsCmd(), newStreamRelayCmd())
	return root
}

// Execute runs the CLI and returns the process exit code.
func Execute() int {
	root := NewRoot()
	if err := root.Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "Error: "+describe(err))
		return 1
	}
	return 0
}

// describe renders an error for people: a Connect error's message without
// the code prefix, and every field violation on its own line.
func describe(err error) string {
	var ce *connect.Error
	if !errors.As(err, &ce) {
		return err.Error()
	}
	msg := ce.Message()
	if ce.Code() == connect.CodeUnavailable && strings.Contains(msg, "connect:") {
		msg += "\n(is `ferry server` running? set --server or FERRY_SERVER)"
	}
	switch ce.Code() {
	case connect.CodeUnauthenticated, connect.CodePermissionDenied:
		msg = ce.Code().String() + ": " + msg
	}
	for _, d := range ce.Details() {
		v, derr := d.Value()
		if derr != nil {
			continue
		}
		if br, ok := v.(*ferryv1.BadRequest); ok && !strings.Contains(msg, "\n") {
			for _, fv := range br.Violations {
				msg += "\n  " + fv.Field + ": " + fv.Description
			}
		}
	}
	return msg
}
