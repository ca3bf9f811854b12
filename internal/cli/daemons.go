package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/ferryvm/ferry/internal/agent"
	"github.com/ferryvm/ferry/internal/health"
	"github.com/ferryvm/ferry/internal/qemu"
	"github.com/ferryvm/ferry/internal/relay"
	"github.com/spf13/cobra"
)

func signalContext() (context.Context, context.CancelFunc) {
	return signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
}

// streamRelayCmdName is the hidden command an agent runs each relay
// process with.
const streamRelayCmdName = "stream-relay"

// newStreamRelayCmd runs one stream relay process: the agent hands it a
// relay.ProcessSpec on standard input and reads its ready line from
// standard output (internal/relay/process.go).
func newStreamRelayCmd() *cobra.Command {
	return &cobra.Command{
		Use:    streamRelayCmdName,
		Short:  "Run one migration stream relay (started by the agent)",
		Hidden: true,
		Args:   cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var spec relay.ProcessSpec
			if err := json.NewDecoder(io.LimitReader(os.Stdin, 1<<20)).Decode(&spec); err != nil {
				return fmt.Errorf("stream-relay: read the spec on standard input: %w", err)
			}
			ctx, cancel := signalContextFrom(cmd.Context())
			defer cancel()
			log := slog.New(slog.NewTextHandler(os.Stderr, nil)).With("component", "stream-relay", "mode", spec.Mode, "pid", os.Getpid())
			err := relay.RunProcess(ctx, spec, os.Stdout, log)
			if err != nil {
				log.Error("stream relay ended", "err", err)
			}
			return err
		},
	}
}

func newAgentCmd(g *globals) *cobra.Command {
	var cfg agent.Config
	var dc daemonConfig
	var healthChecks []string
	var healthPeriod time.Duration
	var healthThreshold int
	cmd := &cobra.Command{
		Use:   "agent",
		Short: "Run the host agent (runs VMs as QEMU processes, reports to the server)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if printed, err := dc.load(cmd); printed || err != nil {
				return err
			}
			log, err := dc.logger()
			if err != nil {
				return err
			}
			ctx, cancel := signalContext()
			defer cancel()
			cfg.Server = g.server
			cfg.Log = log.With("component", "agent")
			for _, hc := range healthChecks {
				c, err := health.Parse(hc, healthPeriod, healthThreshold)
				if err != nil {
					return fmt.Errorf("--health-check: %w", err)
				}
				cfg.HealthChecks = append(cfg.HealthChecks, c)
			}
			if cfg.StreamRelay {
				exe, err := os.Executable()
				if err != nil {
					return fmt.Errorf("--stream-relay: find the ferry binary for the relay processes: %w", err)
				}
				cfg.RelayCommand = []string{exe, streamRelayCmdName}
			}
			a, err := agent.New(cfg)
			if err != nil {
				return err
			}
			return a.Run(ctx)
		},
	}
	host, _ := os.Hostname()
	f := cmd.Flags()
	dc.addFlags(f, DefaultAgentConfig, "server")
	addTelemetryFlags(f, &cfg.Telemetry)
	f.StringVar(&cfg.Name, "name", host, "this host's name in the cluster")
	f.StringVar(&cfg.JoinToken, "join", "", "one-time agent token (ferry token create --role agent), or @FILE holding it: used when DATA/pki holds no certificate yet")
	f.StringVar(&cfg.Listen, "listen", "127.0.0.1:7101", "agent API address (host:port or unix:///path)")
	f.StringVar(&cfg.Advertise, "advertise", "", "address the server dials (default: the bound --listen address)")
	f.StringVar(&cfg.DataDir, "data-dir", "/var/lib/ferry/agent", "directory for VM state (pidfiles, QMP sockets, logs, disks)")
	f.StringArrayVar(&cfg.AllowPaths, "allow-path", nil, "directory whose regular files VM specs may name as kernel, initrd or disk image, besides --data-dir (repeatable; symlinks are resolved before the check)")
	f.StringVar(&cfg.Bridge, "bridge", "", "default bridge for VM NICs")
	f.StringVar(&cfg.Accel, "accel", "auto", "auto (KVM if a probe boots a guest, else TCG), kvm, or tcg for every VM")
	f.StringVar(&cfg.MigrationIP, "migration-ip", "", "address for migration traffic (default: the bridge's IPv4)")
	f.BoolVar(&cfg.StreamRelay, "stream-relay", agent.StreamRelayDefault(), "carry encrypted migration streams on Ferry's own TLS, QEMU sending in plaintext to a relay process of its VM (in its QEMU's cgroup; it survives an agent restart), instead of QEMU's TLS, which writes a record and a send() per 4 KiB page: an idle 1 GiB guest migrates in about the time plaintext takes, and post-copy's page requests wait on no Nagle delay. false: QEMU's own TLS. See docs/migration.md. Default on; "+agent.StreamRelayEnv+"=0 turns it off")
	f.StringSliceVar(&cfg.ImageDirs, "image-dir", agent.ImageDirsDefault(), "directory a VM disk's source: may copy an image from (repeatable; none: no source images; default from "+agent.ImageDirsEnv+", ':'-separated)")
	f.StringVar(&cfg.QEMUBinary, "qemu", "qemu-system-x86_64", "QEMU system emulator")
	f.StringVar(&cfg.QEMUUser, "qemu-user", agent.QEMUUserDefault(), "unprivileged user every QEMU runs as (-run-with user=, under -sandbox on); QEMU opens its disks, taps and sockets before it switches. The agent refuses to start when the user does not exist; "+agent.QEMURoot+" keeps QEMU privileged (warned). Default "+agent.DefaultQEMUUser+" (or "+agent.QEMUUserEnv+")")
	f.StringVar(&cfg.QEMUScope, "qemu-scope", qemu.ScopeAuto, "run each QEMU in its own systemd scope (systemd-run --scope, machine.slice) so restarting the agent's unit leaves it running: auto (when systemd is the init system), systemd, cgroup (a cgroup v2 of its own under --qemu-cgroup, no systemd needed), or none")
	f.StringVar(&cfg.QEMUCgroup, "qemu-cgroup", "", "with --qemu-scope cgroup: the cgroup v2 directory under which each QEMU gets its own cgroup ferry-vm-NAME-N (default: ferry-vms at the root of the cgroup v2 mount)")
	f.IntVar(&cfg.LogRetention.Count, "keep-logs", agent.DefaultKeepLogs, "archived log sets kept per VM (0 = any number)")
	f.DurationVar(&cfg.LogRetention.Age, "keep-logs-for", agent.DefaultKeepLogsFor, "how long archived VM logs are kept (0 = forever)")
	f.StringArrayVar(&healthChecks, "health-check", nil, "a health check, KIND:TARGET with KIND file (fails while the file exists), command (fails on a non-zero exit of sh -c TARGET) or http (fails unless GET TARGET answers 2xx); prefix failed: to report the host failed rather than degraded (repeatable)")
	f.DurationVar(&healthPeriod, "health-period", health.DefaultPeriod, "how often each health check runs")
	f.IntVar(&healthThreshold, "health-threshold", health.DefaultThreshold, "consecutive failures before a health check counts as failing")
	f.DurationVar(&cfg.OrphanGrace, "orphan-grace", agent.OrphanGraceDefault(), "how long a QEMU that no record names may run before the agent stops and removes it (default from "+agent.OrphanGraceEnv+" if set)")
	return cmd
}
