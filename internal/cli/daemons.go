package cli

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/ferryvm/ferry/internal/agent"
	"github.com/ferryvm/ferry/internal/etcdembed"
	"github.com/ferryvm/ferry/internal/retention"
	"github.com/ferryvm/ferry/internal/server"
	"github.com/ferryvm/ferry/internal/store"
	"github.com/spf13/cobra"
)

func newLogger() *slog.Logger {
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
}

func signalContext() (context.Context, context.CancelFunc) {
	return signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
}

func newServerCmd() *cobra.Command {
	var listen []string
	var dataDir, endpoints string
	var keep retention.Policy
	cmd := &cobra.Command{
		Use:   "server",
		Short: "Run the control plane (API, placement, cluster state in etcd)",
		Long: "Run the control plane. With no --etcd-endpoints it runs an embedded etcd in --data-dir;\n" +
			"with endpoints it uses that etcd cluster.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, cancel := signalContext()
			defer cancel()
			log := newLogger().With("component", "server")
			var eps []string
			if endpoints == "" {
				if dataDir == "" {
					return fmt.Errorf("--data-dir: required for the embedded etcd (or pass --etcd-endpoints)")
				}
				e, err := etcdembed.Start(ctx, filepath.Join(dataDir, "etcd"))
				if err != nil {
					return err
				}
				defer e.Close()
				eps = []string{e.Endpoint}
				log.Info("embedded etcd ready", "endpoint", e.Endpoint, "dir", filepath.Join(dataDir, "etcd"))
			} else {
				for _, e := range strings.Split(endpoints, ",") {
					if e = strings.TrimSpace(e); e != "" {
						eps = append(eps, e)
					}
				}
			}
			st, err := store.NewEtcd(ctx, eps)
			if err != nil {
				return err
			}
			defer st.Close()
			if err := keep.Validate(); err != nil {
				return fmt.Errorf("--keep-migrations/--keep-migrations-for: %w", err)
			}
			srv := server.New(server.Config{Store: st, Log: log, Retention: keep})
			ectx, stopEngine := context.WithCancel(ctx)
			engineDone := make(chan error, 1)
			go func() { engineDone <- srv.RunEngine(ectx) }()
			err = srv.Serve(ctx, listen, nil)
			stopEngine()
			if eerr := <-engineDone; eerr != nil {
				log.Error("migration engine", "err", eerr)
			}
			return err
		},
	}
	cmd.Flags().StringSliceVar(&listen, "listen", []string{DefaultServer}, "API addresses (host:port or unix:///path), repeatable")
	cmd.Flags().StringVar(&dataDir, "data-dir", "/var/lib/ferry/server", "state directory (embedded etcd data)")
	cmd.Flags().StringVar(&endpoints, "etcd-endpoints", "", "comma-separated etcd client URLs; empty runs an embedded etcd")
	cmd.Flags().IntVar(&keep.Count, "keep-migrations", server.DefaultKeepMigrations, "finished migration records kept (0 = any number)")
	cmd.Flags().DurationVar(&keep.Age, "keep-migrations-for", server.DefaultKeepMigrationsFor, "how long finished migration records are kept (0 = forever)")
	return cmd
}

func newAgentCmd(g *globals) *cobra.Command {
	var cfg agent.Config
	cmd := &cobra.Command{
		Use:   "agent",
		Short: "Run the host agent (runs VMs as QEMU processes, reports to the server)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, cancel := signalContext()
			defer cancel()
			cfg.Server = g.server
			cfg.Log = newLogger().With("component", "agent")
			a, err := agent.New(cfg)
			if err != nil {
				return err
			}
			return a.Run(ctx)
		},
	}
	host, _ := os.Hostname()
	f := cmd.Flags()
	addTelemetryFlags(f, &cfg.Telemetry)
	f.StringVar(&cfg.Name, "name", host, "this host's name in the cluster")
	f.StringVar(&cfg.Listen, "listen", "127.0.0.1:7101", "agent API address (host:port or unix:///path)")
	f.StringVar(&cfg.Advertise, "advertise", "", "address the server dials (default: the bound --listen address)")
	f.StringVar(&cfg.DataDir, "data-dir", "/var/lib/ferry/agent", "directory for VM state (pidfiles, QMP sockets, logs, disks)")
	f.StringVar(&cfg.Bridge, "bridge", "", "default bridge for VM NICs")
	f.StringVar(&cfg.Accel, "accel", "auto", "auto (KVM if a probe boots a guest, else TCG), kvm, or tcg for every VM")
	f.StringVar(&cfg.MigrationIP, "migration-ip", "", "address for migration traffic (default: the bridge's IPv4)")
	f.StringVar(&cfg.QEMUBinary, "qemu", "qemu-system-x86_64", "QEMU system emulator")
	f.IntVar(&cfg.LogRetention.Count, "keep-logs", agent.DefaultKeepLogs, "archived log sets kept per VM (0 = any number)")
	f.DurationVar(&cfg.LogRetention.Age, "keep-logs-for", agent.DefaultKeepLogsFor, "how long archived VM logs are kept (0 = forever)")
	f.DurationVar(&cfg.OrphanGrace, "orphan-grace", agent.OrphanGraceDefault(), "how long a QEMU that no record names may run before the agent stops and removes it (default from "+agent.OrphanGraceEnv+" if set)")
	return cmd
}
