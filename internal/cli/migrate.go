package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"connectrpc.com/connect"
	ferryv1 "github.com/ferryvm/ferry/gen/ferry/v1"
	"github.com/ferryvm/ferry/gen/ferry/v1/ferryv1connect"
	"github.com/ferryvm/ferry/internal/failover"
	"github.com/spf13/cobra"
	"golang.org/x/term"
)

// pollInterval is how often `ferry migrate --wait` asks for the migration.
// A variable so tests can shorten it.
var pollInterval = 200 * time.Millisecond

// maxPollFailures is how many consecutive "unavailable" polls --wait
// tolerates (the server restarting) before giving up.
const maxPollFailures = 50

func (g *globals) migrations() ferryv1connect.MigrationServiceClient {
	hc, base := failover.Client(g.server)
	return ferryv1connect.NewMigrationServiceClient(hc, base)
}

// migrateFlags are the flags of `ferry migrate`.
type migrateFlags struct {
	to           string
	strategy     string
	maxDowntime  time.Duration
	bandwidth    int64
	multifd      int32
	stallTimeout time.Duration
	timeout      time.Duration
	maxAttempts  int32
	retryBackoff time.Duration
	wait         bool
	dryRun       bool
	noPostcopy   bool
	noThrottle   bool
	recovery     time.Duration
	aliveTimeout time.Duration
	insecure     bool
	// waitLimits retries a start the policy's parallelism limits refuse
	// for up to this long; ignoreLimits starts it past them.
	waitLimits   time.Duration
	ignoreLimits bool
}

// strategies are the values of --strategy.
var strategies = map[string]bool{"auto": true, "precopy": true, "converge": true, "postcopy": true, "hybrid": true, "cold": true}

// options validates the flags and turns them into the API's options.
// changed reports whether a flag was given on the command line.
func (f *migrateFlags) options(changed func(string) bool) (*ferryv1.MigrationOptions, error) {
	if f.to == "" {
		return nil, errors.New("--to: required (the destination host, see ferry host list)")
	}
	if !strategies[f.strategy] {
		return nil, fmt.Errorf("--strategy: must be auto, precopy, converge, postcopy, hybrid or cold, got %q", f.strategy)
	}
	if f.noPostcopy && (f.strategy == "postcopy" || f.strategy == "hybrid") {
		return nil, fmt.Errorf("--no-postcopy: conflicts with --strategy %s", f.strategy)
	}
	if f.noThrottle && f.strategy == "converge" {
		return nil, errors.New("--no-throttle: conflicts with --strategy converge (it throttles the guest)")
	}
	if f.aliveTimeout < 0 || f.aliveTimeout > 10*time.Minute {
		return nil, fmt.Errorf("--guest-alive-timeout: must be between 0 (server default, 5s) and 10m, got %s", f.aliveTimeout)
	}
	if f.recovery < 0 {
		return nil, fmt.Errorf("--recovery-window: must not be negative, got %s", f.recovery)
	}
	switch {
	case f.maxDowntime < 0:
		return nil, fmt.Errorf("--max-downtime: must not be negative, got %s", f.maxDowntime)
	case f.maxDowntime > 0 && f.maxDowntime < time.Millisecond:
		return nil, fmt.Errorf("--max-downtime: must be at least 1ms (0 uses the VM's maxDowntimeMs), got %s", f.maxDowntime)
	case f.maxDowntime > 60*time.Second:
		return nil, fmt.Errorf("--max-downtime: must be at most 60s, got %s", f.maxDowntime)
	}
	if f.bandwidth < 0 {
		return nil, fmt.Errorf("--bandwidth: must be >= 0 MiB/s (0 = unlimited), got %d", f.bandwidth)
	}
	if f.multifd < 0 || f.multifd > 16 {
		return nil, fmt.Errorf("--multifd: must be between 0 and 16 channels (0 or 1 = one stream), got %d", f.multifd)
	}
	if f.strategy == "cold" {
		for _, name := range []string{"max-downtime", "multifd"} {
			if changed(name) {
				return nil, fmt.Errorf("--%s: only applies to live strategies (a cold migration stops the VM for the whole copy)", name)
			}
		}
	}
	for _, d := range []struct {
		name string
		v    time.Duration
	}{{"stall-timeout", f.stallTimeout}, {"timeout", f.timeout}} {
		if d.v < 0 || (d.v > 0 && d.v < time.Second) {
			return nil, fmt.Errorf("--%s: must be at least 1s (0 uses the server's default), got %s", d.name, d.v)
		}
	}
	if f.maxAttempts < 0 || f.maxAttempts > 10 {
		return nil, fmt.Errorf("--max-attempts: must be between 1 and 10 (0 = the server's default, 3; 1 = never retry), got %d", f.maxAttempts)
	}
	if f.retryBackoff < 0 || f.retryBackoff > 30*time.Second || (f.retryBackoff > 0 && f.retryBackoff < time.Millisecond) {
		return nil, fmt.Errorf("--retry-backoff: must be between 1ms and 30s (0 = the server's default, 2s), got %s", f.retryBackoff)
	}
	if f.strategy == "cold" && f.maxAttempts > 1 {
		return nil, errors.New("--max-attempts: only applies to live strategies (a cold migration has no transfer to retry)")
	}
	if f.waitLimits < 0 || f.waitLimits > time.Hour {
		return nil, fmt.Errorf("--wait-limits: must be between 0 (refused at once) and 1h, got %s", f.waitLimits)
	}
	if f.waitLimits > 0 && f.ignoreLimits {
		return nil, errors.New("--wait-limits: conflicts with --ignore-limits (which starts at once, past the limits)")
	}
	if f.stallTimeout > 0 && f.timeout > 0 && f.stallTimeout > f.timeout {
		return nil, fmt.Errorf("--stall-timeout: must not exceed --timeout (%s), got %s", f.timeout, f.stallTimeout)
	}
	return &ferryv1.MigrationOptions{
		Strategy:         f.strategy,
		MaxDowntimeMs:    f.maxDowntime.Milliseconds(),
		BandwidthMibps:   f.bandwidth,
		MultifdChannels:  f.multifd,
		StallTimeoutMs:   f.stallTimeout.Milliseconds(),
		TimeoutMs:        f.timeout.Milliseconds(),
		MaxAttempts:      f.maxAttempts,
		RetryBackoffMs:   f.retryBackoff.Milliseconds(),
		NoPostcopy:       f.noPostcopy,
		NoThrottle:       f.noThrottle,
		RecoveryWindowMs: f.recovery.Milliseconds(),

		GuestAliveTimeoutMs: f.aliveTimeout.Milliseconds(),
		InsecureTransport:   f.insecure,
		IgnoreLimits:        f.ignoreLimits,
	}, nil
}

func newMigrateCmd(g *globals) *cobra.Command {
	var f migrateFlags
	cmd := &cobra.Command{
		Use:   "migrate VM --to HOST",
		Short: "Move a VM to another host (live: auto, precopy, converge, postcopy, hybrid; or cold)",
		Long: "Move a VM to another host. auto (the default) measures the guest's dirty rate and the link,\n" +
			"predicts every strategy and picks the best one the policy allows (see --dry-run).\n" +
			"precopy copies the RAM while the guest runs and pauses it only for the last round\n" +
			"(--max-downtime is QEMU's target for that pause); converge is pre-copy that throttles\n" +
			"the guest's vCPUs when it would not converge; postcopy switches to the destination after\n" +
			"the first full round and pulls the rest on demand; hybrid is pre-copy that switches to\n" +
			"post-copy when the controller sees it will not converge; cold stops the guest and boots\n" +
			"it on the destination. Any failure before the switchover rolls back: the VM keeps\n" +
			"running on its source. A post-copy whose link breaks pauses the guest and recovers\n" +
			"when the link returns (within --recovery-window).\n\n" +
			"Without --wait the command returns once the migration has started; follow it with\n" +
			"`ferry migration get ID`. With --wait it shows progress and the final report, and exits\n" +
			"non-zero unless the migration completed. Ctrl-C stops waiting (it does not cancel;\n" +
			"use `ferry migration cancel ID`).",
		Example: "  ferry migrate web --to h2 --wait\n" +
			"  ferry migrate web --to h2 --dry-run\n" +
			"  ferry migrate web --to h2 --max-downtime 50ms --bandwidth 500 --multifd 4\n" +
			"  ferry migrate db --to h3 --strategy cold --wait -o json",
		Args: func(_ *cobra.Command, args []string) error {
			switch len(args) {
			case 0:
				return errors.New("VM: required (the VM's name, see ferry vm list)")
			case 1:
				return nil
			}
			return fmt.Errorf("expected one VM, got %d arguments", len(args))
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			opts, err := f.options(cmd.Flags().Changed)
			if err != nil {
				return err
			}
			c := g.migrations()
			resp, err := g.migrateWithinLimits(cmd.Context(), c, &ferryv1.MigrateRequest{Vm: args[0], To: f.to, Options: opts, DryRun: f.dryRun}, f.waitLimits)
			if err != nil {
				return err
			}
			if f.dryRun {
				if g.output == "json" {
					return printJSON(g.stdout, resp.Msg.GetPlan())
				}
				_, err := fmt.Fprint(g.stdout, renderPlan(args[0], f.to, resp.Msg.GetPlan()))
				return err
			}
			m := resp.Msg.GetMigration()
			if m == nil {
				return errors.New("server returned no migration")
			}
			if !f.wait {
				if g.output == "json" {
					return printJSON(g.stdout, m)
				}
				_, err := fmt.Fprintf(g.stdout, "migration %s started: %s %s → %s (%s)\nfollow with: ferry migration get %s\n",
					m.GetId(), m.GetVm(), orDash(m.GetFrom()), orDash(m.GetTo()), orDash(m.GetStrategy()), m.GetId())
				return err
			}
			if g.output != "json" {
				if _, err := fmt.Fprintf(g.stdout, "migration %s started: %s %s → %s (%s)\n",
					m.GetId(), m.GetVm(), orDash(m.GetFrom()), orDash(m.GetTo()), orDash(m.GetStrategy())); err != nil {
					return err
				}
			}
			ctx, cancel := signalContextFrom(cmd.Context())
			defer cancel()
			return g.waitMigration(ctx, c, m)
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&f.to, "to", "", "destination host (required; see ferry host list)")
	fl.StringVar(&f.strategy, "strategy", "auto", "auto, precopy, converge, postcopy, hybrid, or cold")
	fl.BoolVar(&f.dryRun, "dry-run", false, "measure and predict every strategy, print the choice, change nothing")
	fl.BoolVar(&f.noPostcopy, "no-postcopy", false, "policy: never switch to post-copy")
	fl.BoolVar(&f.noThrottle, "no-throttle", false, "policy: never slow the guest down (auto-converge)")
	fl.DurationVar(&f.aliveTimeout, "guest-alive-timeout", 0, "how long the guest may take to show a sign of life after the switchover before the migration warns \"guest unresponsive\" (0 = server default, 5s)")
	fl.DurationVar(&f.recovery, "recovery-window", 0, "how long a post-copy broken by the link waits to recover (0 = server default, 5m)")
	fl.DurationVar(&f.maxDowntime, "max-downtime", 0, "QEMU's downtime target, 1ms..60s (0 = the VM's maxDowntimeMs)")
	fl.Int64Var(&f.bandwidth, "bandwidth", 0, "cap the migration stream, MiB/s (0 = unlimited)")
	fl.Int32Var(&f.multifd, "multifd", 0, "parallel migration streams (0 or 1 = one stream)")
	fl.Int32Var(&f.maxAttempts, "max-attempts", 0, "attempts of a live migration whose link fails before the switchover (0 = server default, 3; 1 = never retry)")
	fl.DurationVar(&f.retryBackoff, "retry-backoff", 0, "wait before the second attempt, doubled for each further one (0 = server default, 2s)")
	fl.DurationVar(&f.stallTimeout, "stall-timeout", 0, "fail and roll back after this long without progress (0 = the policy's progressTimeout, else the server default, 15s)")
	fl.DurationVar(&f.timeout, "timeout", 0, "fail and roll back if not done within this long (0 = the policy's completionTimeoutPerGiB x the VM's GiB, else the server default, 10m)")
	fl.DurationVar(&f.waitLimits, "wait-limits", 0, "when the policy's parallelism limits (ferry policy get) are reached, retry the start every 2s for up to this long instead of failing at once")
	fl.BoolVar(&f.ignoreLimits, "ignore-limits", false, "start even when the policy's parallelism limits are reached (it still counts against them, and still gets only its share of bandwidthPerHost)")
	fl.BoolVar(&f.wait, "wait", false, "wait for the end, showing progress, and print the report")
	fl.BoolVar(&f.insecure, "insecure-transport", false, "send the guest's memory and disks in plaintext (default: TLS with the cluster's certificates, each host verified); the report names the transport")
	return cmd
}

// isTerminal reports whether w is a terminal.
// limitRetry is how often --wait-limits retries a start a limit refused
// (a variable so tests can shorten it).
var limitRetry = 2 * time.Second

// migrateWithinLimits starts the migration; a start refused because a
// policy limit is reached (the server's error says "migration limit
// reached") is retried every limitRetry for up to wait, saying so on
// stderr, then given up with the server's last refusal.
func (g *globals) migrateWithinLimits(ctx context.Context, c ferryv1connect.MigrationServiceClient, req *ferryv1.MigrateRequest, wait time.Duration) (*connect.Response[ferryv1.MigrateResponse], error) {
	deadline := time.Now().Add(wait)
	told := false
	for {
		resp, err := c.Migrate(ctx, connect.NewRequest(req))
		if err == nil || wait <= 0 || connect.CodeOf(err) != connect.CodeResourceExhausted || !strings.Contains(err.Error(), limitReached) {
			return resp, err
		}
		if time.Now().Add(limitRetry).After(deadline) {
			return nil, fmt.Errorf("still refused after --wait-limits %s: %w", wait, err)
		}
		if !told {
			fmt.Fprintf(g.stderr, "waiting up to %s for a migration slot: %v\n", wait, err)
			told = true
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("waiting for a migration slot: %w", ctx.Err())
		case <-time.After(limitRetry):
		}
	}
}

// limitReached is in the text of every refusal for a policy limit
// (internal/admit.ErrLimit).
const limitReached = "migration limit reached"

func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}

// liveProgress draws the progress line on a terminal, redrawn in place.
type liveProgress struct {
	w      *os.File
	t0     time.Time     // local time of the first poll
	offset time.Duration // the migration's age at the first poll (server clock)
	obs    []*ferryv1.MigrationSample
	drawn  bool
}

func (p *liveProgress) draw(m *ferryv1.Migration) {
	if p.t0.IsZero() {
		p.t0, p.offset = time.Now(), migrationElapsed(m)
	}
	// The rate comes from the last two distinct observations, timed by the
	// server's updatedAt (polls are without samples).
	if u := m.GetUpdatedAt(); u != nil && u.IsValid() && m.GetStartedAt() != nil {
		t := u.AsTime().Sub(m.GetStartedAt().AsTime()).Milliseconds()
		if n := len(p.obs); n == 0 || p.obs[n-1].GetTMs() < t {
			p.obs = append(p.obs, &ferryv1.MigrationSample{TMs: t, TransferredBytes: m.GetTransferredBytes()})
			if len(p.obs) > 2 {
				p.obs = p.obs[len(p.obs)-2:]
			}
		}
	}
	if len(m.GetSamples()) == 0 {
		m.Samples = p.obs
	}
	width, _, err := term.GetSize(int(p.w.Fd()))
	if err != nil || width <= 0 {
		width = 80
	}
	fmt.Fprint(p.w, "\r"+progressLine(m, width, p.offset+time.Since(p.t0))+"\x1b[K")
	p.drawn = true
}

func (p *liveProgress) clear() {
	if p.drawn {
		fmt.Fprint(p.w, "\r\x1b[K")
		p.drawn = false
	}
}

// waitMigration polls m until it is no longer running, showing progress,
// then prints the full migration and returns an error unless it completed.
// It polls every pollInterval and at once when the server records an event
// of the migration (migrationWakeups).
func (g *globals) waitMigration(ctx context.Context, c ferryv1connect.MigrationServiceClient, m *ferryv1.Migration) error {
	id := m.GetId()
	var live *liveProgress
	if g.output != "json" && isTerminal(g.stdout) && isTerminal(g.stderr) {
		live = &liveProgress{w: g.stderr.(*os.File)}
	}
	lastState := ""
	progress := func(m *ferryv1.Migration) {
		switch {
		case g.output == "json":
		case live != nil:
			live.draw(m)
		case m.GetState() != lastState && m.GetStatus() == "running":
			fmt.Fprintf(g.stdout, "  %s\n", m.GetState())
		}
		lastState = m.GetState()
	}
	stillRunning := fmt.Errorf("still running: ferry migration get %s / ferry migration cancel %s", id, id)

	watchCtx, stopWatch := context.WithCancel(ctx)
	defer stopWatch()
	wake := g.migrationWakeups(watchCtx, m.GetVm(), id)
	tick := time.NewTicker(pollInterval)
	defer tick.Stop()
	failures := 0
	for m.GetStatus() == "running" {
		progress(m)
		select {
		case <-ctx.Done():
			if live != nil {
				live.clear()
			}
			return stillRunning
		case <-tick.C:
		case <-wake:
		}
		resp, err := c.GetMigration(ctx, connect.NewRequest(&ferryv1.GetMigrationRequest{Id: id, WithoutSamples: true}))
		if err != nil {
			if ctx.Err() != nil {
				if live != nil {
					live.clear()
				}
				return stillRunning
			}
			if failures++; connect.CodeOf(err) == connect.CodeUnavailable && failures < maxPollFailures {
				continue
			}
			if live != nil {
				live.clear()
			}
			return err
		}
		failures = 0
		if next := resp.Msg.GetMigration(); next != nil {
			m = next
		}
	}
	if live != nil {
		live.clear()
	}

	resp, err := c.GetMigration(ctx, connect.NewRequest(&ferryv1.GetMigrationRequest{Id: id}))
	if err == nil && resp.Msg.GetMigration() != nil {
		m = resp.Msg.GetMigration()
	}
	if g.output == "json" {
		if err := printJSON(g.stdout, m); err != nil {
			return err
		}
	} else if _, err := fmt.Fprint(g.stdout, renderReport(m)); err != nil {
		return err
	}
	return migrationResult(m)
}

// migrationResult is nil for a completed migration and otherwise the error
// the command exits with.
func migrationResult(m *ferryv1.Migration) error {
	if m.GetStatus() == "completed" {
		return nil
	}
	msg := fmt.Sprintf("migration %s %s", m.GetId(), orDash(m.GetStatus()))
	if e := m.GetError(); e != "" {
		msg += ": " + e
	}
	if from := m.GetFrom(); from != "" {
		msg += " (the VM is still on " + from + ")"
	}
	return errors.New(msg)
}

func newMigrationCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "migration", Short: "List, inspect and cancel migrations"}
	cmd.AddCommand(newMigrationListCmd(g), newMigrationGetCmd(g), newMigrationCancelCmd(g), newMigrationPlotCmd(g))
	return cmd
}

func newMigrationListCmd(g *globals) *cobra.Command {
	var vm string
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List migrations with status, duration and downtime",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			resp, err := g.migrations().ListMigrations(cmd.Context(), connect.NewRequest(&ferryv1.ListMigrationsRequest{Vm: vm}))
			if err != nil {
				return err
			}
			if g.output == "json" {
				return printJSON(g.stdout, resp.Msg)
			}
			return migrationTable(g.stdout, resp.Msg.GetMigrations(), time.Now())
		},
	}
	cmd.Flags().StringVar(&vm, "vm", "", "only this VM's migrations")
	return cmd
}

// migrationTable writes the table of `ferry migration list`.
func migrationTable(w io.Writer, ms []*ferryv1.Migration, now time.Time) error {
	rows := make([][]string, 0, len(ms))
	for _, m := range ms {
		started := age(m.GetStartedAt(), now)
		if started != "-" {
			started += " ago"
		}
		rows = append(rows, []string{
			m.GetId(), orDash(m.GetVm()), orDash(m.GetFrom()), orDash(m.GetTo()), orDash(m.GetStrategy()),
			orDash(m.GetStatus()), orDash(m.GetState()), totalColumn(m), downtimeColumn(m), started,
		})
	}
	return table(w, []string{"ID", "VM", "FROM", "TO", "STRATEGY", "STATUS", "STATE", "TOTAL", "DOWNTIME", "STARTED"}, rows)
}

func newMigrationGetCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "get ID",
		Short: "Show a migration: report, event history and progress samples",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			resp, err := g.migrations().GetMigration(cmd.Context(), connect.NewRequest(&ferryv1.GetMigrationRequest{Id: args[0]}))
			if err != nil {
				return err
			}
			m := resp.Msg.GetMigration()
			if g.output == "json" {
				return printJSON(g.stdout, m)
			}
			_, err = fmt.Fprint(g.stdout, renderDetails(m))
			return err
		},
	}
}

func newMigrationCancelCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "cancel ID",
		Short: "Cancel a migration that has not switched over (the VM stays on its source)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			resp, err := g.migrations().CancelMigration(cmd.Context(), connect.NewRequest(&ferryv1.CancelMigrationRequest{Id: args[0]}))
			if err != nil {
				return err
			}
			m := resp.Msg.GetMigration()
			if g.output == "json" {
				return printJSON(g.stdout, m)
			}
			id := m.GetId()
			if id == "" {
				id = args[0]
			}
			_, err = fmt.Fprintf(g.stdout, "cancel requested for %s (state %s)\n", id, orDash(m.GetState()))
			return err
		},
	}
}
