package cli

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/ferryvm/ferry/internal/demo"
	"github.com/ferryvm/ferry/internal/devcluster"
	"github.com/ferryvm/ferry/internal/revert"
	"github.com/spf13/cobra"
)

func newDevCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "dev", Short: "Developer tools: a multi-host cluster on one machine, the demo"}
	cluster := &cobra.Command{Use: "cluster", Short: "Create or remove a namespaced multi-host cluster on this machine"}
	cluster.AddCommand(newDevClusterUpCmd(g), newDevClusterDownCmd(), newDevClusterLinkCmd(g), newDevClusterLinkForwarderCmd())
	cmd.AddCommand(cluster, newDevDemoCmd(g))
	return cmd
}

func newDevClusterUpCmd(g *globals) *cobra.Command {
	var cfg devcluster.Config
	var accel string
	var fopt devcluster.FerryOptions
	cmd := &cobra.Command{
		Use:   "up",
		Short: "Create N host namespaces and a client namespace on one L2 segment, start a server and one agent per host",
		Long: "Creates network namespaces PREFIX-h1..hN (host i is 198.18.0.i/15 on bridge br0),\n" +
			"PREFIX-client (198.18.0.250) and the segment joining them, starts `ferry server`\n" +
			"(embedded etcd, unix socket DIR/server.sock; with --servers N, N replicas s1..sN on\n" +
			"DIR/server.sock, DIR/server2.sock, ... whose embedded etcd members form one cluster)\n" +
			"and one `ferry agent` per host (given every server address), waits\n" +
			"until every host is ready and writes DIR/env (FERRY_SERVER=...).\n" +
			"Guests take addresses from 198.19.0.0/16 with prefix /15 (ferry.ip=198.19.0.X/15).",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, cancel := signalContextFrom(cmd.Context())
			defer cancel()
			fopt.Accel = accel
			c, err := devClusterUp(ctx, cfg, fopt)
			if err != nil {
				return err
			}
			servers := strings.Join(c.ServerURLs(), ",")
			fmt.Fprintf(g.stdout, "dev cluster %q is up (%d hosts, %d servers)\n%s\nserver: %s\nenv:    %s (source it, or: export FERRY_SERVER=%s)\n",
				c.Config.Prefix, len(c.Hosts), len(c.ServerURLs()), c.String(), servers, c.EnvPath(), servers)
			return nil
		},
	}
	cmd.Flags().IntVar(&cfg.Hosts, "hosts", devcluster.DefaultHosts, "number of hosts")
	cmd.Flags().StringVar(&cfg.Dir, "dir", "", "state directory (default /run/ferry-dev/PREFIX)")
	cmd.Flags().StringVar(&cfg.Prefix, "prefix", devcluster.DefaultPrefix, "namespace name prefix")
	cmd.Flags().StringVar(&accel, "accel", "auto", "accelerator policy for every agent: auto, kvm or tcg")
	cmd.Flags().IntVar(&fopt.Servers, "servers", 1, "number of server replicas (more than 1: each runs a member of one embedded etcd cluster)")
	cmd.Flags().StringVar(&fopt.EtcdEndpoints, "etcd-endpoints", "", "run every server on this etcd cluster (comma-separated client URLs) instead of embedded etcd")
	cmd.Flags().DurationVar(&fopt.LeaderTTL, "leader-ttl", 0, "lease TTL of the servers' leader election (default: the server's)")
	cmd.Flags().StringArrayVar(&fopt.AllowPaths, "allow-path", nil, "directory every agent lets VM specs name kernels, initrds and disks in (repeatable; DIR, $FERRY_GUEST_DIR and ./build/guest are always allowed)")
	return cmd
}

// devClusterUp brings up the namespaces and Ferry's daemons; if anything
// fails, everything made so far is removed.
func devClusterUp(ctx context.Context, cfg devcluster.Config, fopt devcluster.FerryOptions) (*devcluster.Cluster, error) {
	r := revert.New()
	defer r.Fail()
	c, err := devcluster.Up(ctx, cfg)
	if err != nil {
		return nil, err
	}
	r.Add(func() {
		dctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		_ = c.Down(dctx)
	})
	if err := c.StartFerry(ctx, fopt); err != nil {
		return nil, err
	}
	r.Success()
	return c, nil
}

func newDevClusterDownCmd() *cobra.Command {
	var cfg devcluster.Config
	cmd := &cobra.Command{
		Use:   "down",
		Short: "Stop every process and remove every namespace, link and tap of a dev cluster (idempotent)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			return devcluster.Down(ctx, cfg)
		},
	}
	cmd.Flags().StringVar(&cfg.Dir, "dir", "", "state directory given to up")
	cmd.Flags().StringVar(&cfg.Prefix, "prefix", "", "namespace name prefix (default: the one recorded in DIR)")
	return cmd
}

func newDevDemoCmd(g *globals) *cobra.Command {
	opt := demo.Options{}
	cmd := &cobra.Command{
		Use:   "demo",
		Short: "Run the demo: a namespaced cluster, the test guest booted through the control plane, its /status",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, cancel := signalContextFrom(cmd.Context())
			defer cancel()
			return demo.Run(ctx, opt, g.stdout)
		},
	}
	cmd.Flags().StringVar(&opt.GuestDir, "guest-dir", "build/guest", "directory with the test guest's vmlinuz and initrd.img (make guest)")
	cmd.Flags().StringVar(&opt.Dir, "dir", "", "cluster state directory (default /run/ferry-dev/PREFIX)")
	cmd.Flags().StringVar(&opt.Prefix, "prefix", "ferry-demo", "namespace name prefix")
	cmd.Flags().StringVar(&opt.Accel, "accel", "auto", "accelerator policy: auto, kvm or tcg")
	cmd.Flags().BoolVar(&opt.Keep, "keep", false, "leave the cluster and VM running at the end")
	return cmd
}
