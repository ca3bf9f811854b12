package cli

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"connectrpc.com/connect"
	ferryv1 "github.com/ferryvm/ferry/gen/ferry/v1"
	"github.com/ferryvm/ferry/internal/spec"
	"github.com/spf13/cobra"
)

func newVMCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "vm", Short: "Create and manage VMs"}
	cmd.AddCommand(newVMCreateCmd(g), newVMListCmd(g), newVMGetCmd(g),
		newVMActionCmd(g, "start"), newVMActionCmd(g, "stop"), newVMActionCmd(g, "delete"),
		newVMConsoleCmd(g))
	return cmd
}

func newVMCreateCmd(g *globals) *cobra.Command {
	var file, host string
	var noStart bool
	cmd := &cobra.Command{
		Use:   "create -f SPEC.yaml",
		Short: "Create a VM from a YAML spec and start it",
		Long: "Create a VM from a YAML (or JSON) spec and start it. Relative paths in the spec\n" +
			"are resolved against the spec file's directory. Without --host, placement picks a\n" +
			"ready host with free capacity.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if file == "" {
				return errors.New("-f: required (path to a VM spec, e.g. examples/test-guest.yaml)")
			}
			data, err := os.ReadFile(file)
			if err != nil {
				return fmt.Errorf("-f: %w", err)
			}
			base, err := filepath.Abs(filepath.Dir(file))
			if err != nil {
				return err
			}
			sp, err := spec.Parse(data, base)
			if err != nil {
				return fmt.Errorf("%s: %w", file, err)
			}
			spec.Default(sp)
			if err := spec.Validate(sp); err != nil {
				return fmt.Errorf("%s: %w", file, err)
			}
			resp, err := g.vms().CreateVM(cmd.Context(), connect.NewRequest(&ferryv1.CreateVMRequest{Spec: sp, Host: host, NoStart: noStart}))
			if err != nil {
				return err
			}
			return printVM(g, resp.Msg.Vm)
		},
	}
	cmd.Flags().StringVarP(&file, "file", "f", "", "VM spec (YAML or JSON)")
	cmd.Flags().StringVar(&host, "host", "", "pin the VM to this host")
	cmd.Flags().BoolVar(&noStart, "no-start", false, "record the VM without starting it")
	return cmd
}

func printVM(g *globals, vm *ferryv1.VM) error {
	if g.output == "json" {
		return printJSON(g.stdout, vm)
	}
	return vmTable(g, []*ferryv1.VM{vm})
}

func vmTable(g *globals, vms []*ferryv1.VM) error {
	now := time.Now()
	var rows [][]string
	for _, vm := range vms {
		uptime := "-"
		if vm.State == "running" || vm.State == "migrating" {
			uptime = age(vm.StartedAt, now)
		}
		rows = append(rows, []string{
			vm.Spec.GetName(), vm.State, orDash(vm.Host), fmt.Sprint(vm.Spec.GetVcpus()),
			fmt.Sprintf("%d MiB", vm.Spec.GetMemoryMib()), orDash(vm.Accel), uptime, orDash(vm.Message),
		})
	}
	return table(g.stdout, []string{"NAME", "STATE", "HOST", "VCPUS", "MEMORY", "ACCEL", "UPTIME", "MESSAGE"}, rows)
}

func newVMListCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "list",
		Short: "List VMs with state, host and uptime",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			resp, err := g.vms().ListVMs(cmd.Context(), connect.NewRequest(&ferryv1.ListVMsRequest{}))
			if err != nil {
				return err
			}
			if g.output == "json" {
				return printJSON(g.stdout, resp.Msg)
			}
			return vmTable(g, resp.Msg.Vms)
		},
	}
}

func newVMGetCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "get NAME",
		Short: "Show one VM",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			resp, err := g.vms().GetVM(cmd.Context(), connect.NewRequest(&ferryv1.GetVMRequest{Name: args[0]}))
			if err != nil {
				return err
			}
			return printVM(g, resp.Msg.Vm)
		},
	}
}

func newVMActionCmd(g *globals, verb string) *cobra.Command {
	var force bool
	cmd := &cobra.Command{
		Use:   verb + " NAME",
		Short: map[string]string{"start": "Start a stopped VM on its host", "stop": "Stop a VM (guest power-off, then quit)", "delete": "Stop a VM and remove it and its files"}[verb],
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			c := g.vms()
			var vm *ferryv1.VM
			switch verb {
			case "start":
				resp, err := c.StartVM(ctx, connect.NewRequest(&ferryv1.StartVMRequest{Name: args[0]}))
				if err != nil {
					return err
				}
				vm = resp.Msg.Vm
			case "stop":
				resp, err := c.StopVM(ctx, connect.NewRequest(&ferryv1.StopVMRequest{Name: args[0], Force: force}))
				if err != nil {
					return err
				}
				vm = resp.Msg.Vm
			case "delete":
				if _, err := c.DeleteVM(ctx, connect.NewRequest(&ferryv1.DeleteVMRequest{Name: args[0]})); err != nil {
					return err
				}
				if g.output == "json" {
					return printJSON(g.stdout, &ferryv1.DeleteVMResponse{})
				}
				_, err := fmt.Fprintf(g.stdout, "VM %s deleted\n", args[0])
				return err
			}
			return printVM(g, vm)
		},
	}
	if verb == "stop" {
		cmd.Flags().BoolVar(&force, "force", false, "quit QEMU at once instead of asking the guest to power off")
	}
	return cmd
}

func newVMConsoleCmd(g *globals) *cobra.Command {
	var follow bool
	cmd := &cobra.Command{
		Use:   "console NAME",
		Short: "Print the VM's serial output (--follow to keep streaming)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx, cancel := signalContextFrom(cmd.Context())
			defer cancel()
			stream, err := g.vms().Console(ctx, connect.NewRequest(&ferryv1.ConsoleRequest{Name: args[0], Follow: follow}))
			if err != nil {
				return err
			}
			defer stream.Close()
			for stream.Receive() {
				if _, err := g.stdout.Write(stream.Msg().Data); err != nil {
					return err
				}
			}
			if err := stream.Err(); err != nil && ctx.Err() == nil {
				return err
			}
			return nil
		},
	}
	cmd.Flags().BoolVarP(&follow, "follow", "F", false, "keep streaming new output until interrupted")
	return cmd
}

func signalContextFrom(parent context.Context) (context.Context, context.CancelFunc) {
	if parent == nil {
		parent = context.Background()
	}
	ctx, cancel := signalContext()
	go func() {
		select {
		case <-parent.Done():
			cancel()
		case <-ctx.Done():
		}
	}()
	return ctx, cancel
}
