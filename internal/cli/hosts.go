package cli

import (
	"fmt"
	"time"

	"connectrpc.com/connect"
	ferryv1 "github.com/ferryvm/ferry/gen/ferry/v1"
	"github.com/spf13/cobra"
)

func newHostCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "host", Short: "Inspect hosts; maintenance mode"}
	cmd.AddCommand(&cobra.Command{
		Use:   "list",
		Short: "List hosts with state, capacity and VMs",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			resp, err := g.hosts().ListHosts(cmd.Context(), connect.NewRequest(&ferryv1.ListHostsRequest{}))
			if err != nil {
				return err
			}
			if g.output == "json" {
				return printJSON(g.stdout, resp.Msg)
			}
			now := time.Now()
			var rows [][]string
			for _, h := range resp.Msg.Hosts {
				c := h.GetCapacity()
				rows = append(rows, []string{
					h.Name, hostStateCell(h), orDash(h.Accel), orDash(h.FerryVersion), orDash(h.GetQemu().GetVersion()),
					fmt.Sprintf("%d/%d", c.GetAllocatedVcpus(), c.GetCpus()),
					fmt.Sprintf("%d/%d MiB", c.GetAllocatedMemoryMib(), c.GetMemoryMib()),
					fmt.Sprint(c.GetVms()), orDash(h.MigrationIp), age(h.LastSeen, now) + " ago",
				})
			}
			return table(g.stdout, []string{"NAME", "STATE", "ACCEL", "FERRY", "QEMU", "VCPUS", "MEMORY", "VMS", "MIGRATION-IP", "LAST-SEEN"}, rows)
		},
	})
	cmd.AddCommand(&cobra.Command{
		Use:   "get NAME",
		Short: "Show one host as JSON (capacity, VMs, its QEMU's version and capabilities)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			resp, err := g.hosts().GetHost(cmd.Context(), connect.NewRequest(&ferryv1.GetHostRequest{Name: args[0]}))
			if err != nil {
				return err
			}
			return printJSON(g.stdout, resp.Msg.Host)
		},
	})
	cmd.AddCommand(newMaintenanceCmd(g))
	return cmd
}

// hostStateCell is the host's state with its maintenance and health when
// they matter ("ready,maintenance", "ready,degraded").
func hostStateCell(h *ferryv1.Host) string {
	s := h.State
	if h.Maintenance {
		s += ",maintenance"
	}
	if h.Health != "" && h.Health != "healthy" {
		s += "," + h.Health
	}
	return s
}
