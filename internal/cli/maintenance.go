package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"time"

	"connectrpc.com/connect"
	ferryv1 "github.com/ferryvm/ferry/gen/ferry/v1"
	"github.com/ferryvm/ferry/gen/ferry/v1/ferryv1connect"
	"github.com/ferryvm/ferry/internal/failover"
	"github.com/ferryvm/ferry/internal/policy"
	"github.com/spf13/cobra"
)

func (g *globals) fleet() ferryv1connect.FleetServiceClient {
	hc, base := failover.Client(g.server)
	return ferryv1connect.NewFleetServiceClient(hc, base)
}

// evacuationEnded says an evacuation state is final.
func evacuationEnded(state string) bool {
	return state == "completed" || state == "incomplete" || state == "cancelled" || state == "planned"
}

func newMaintenanceCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "maintenance", Short: "Maintenance mode: make a host unschedulable and evacuate its VMs"}
	var dryRun, detach bool
	var timeout time.Duration
	enter := &cobra.Command{
		Use:   "enter HOST",
		Short: "Make HOST unschedulable at once and live-migrate every VM off it (--dry-run: print the plan only)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			resp, err := g.fleet().EnterMaintenance(cmd.Context(), connect.NewRequest(&ferryv1.EnterMaintenanceRequest{Host: args[0], DryRun: dryRun}))
			if err != nil {
				return err
			}
			e := resp.Msg.Evacuation
			if dryRun || detach {
				return g.show(e, func() string { return renderEvacuation(e) })
			}
			if g.output != "json" {
				fmt.Fprintln(g.stdout, strings.Join(e.Plan, "\n"))
			}
			e, err = followEvacuation(cmd.Context(), g, args[0], timeout, g.output != "json")
			if err != nil {
				return err
			}
			if g.output == "json" {
				return printJSON(g.stdout, e)
			}
			fmt.Fprint(g.stdout, renderEvacuation(e))
			if e.State != "completed" {
				return fmt.Errorf("evacuation of %s is %s: %s", e.Host, e.State, e.Message)
			}
			return nil
		},
	}
	enter.Flags().BoolVar(&dryRun, "dry-run", false, "print the evacuation plan (destinations, strategies, order, ETA) and change nothing")
	enter.Flags().BoolVar(&detach, "detach", false, "return once the evacuation started (follow it with ferry host maintenance status)")
	enter.Flags().DurationVar(&timeout, "timeout", time.Hour, "how long to follow the evacuation before giving up waiting (it goes on)")
	cmd.AddCommand(enter)
	cmd.AddCommand(&cobra.Command{
		Use:   "exit HOST",
		Short: "Make HOST schedulable again (refused while its evacuation runs)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if _, err := g.fleet().ExitMaintenance(cmd.Context(), connect.NewRequest(&ferryv1.ExitMaintenanceRequest{Host: args[0]})); err != nil {
				return err
			}
			fmt.Fprintf(g.stdout, "host %s is schedulable again\n", args[0])
			return nil
		},
	})
	cmd.AddCommand(&cobra.Command{
		Use:   "status HOST",
		Short: "Show HOST's evacuation: every VM's state, progress and measured vs predicted time",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			resp, err := g.fleet().GetEvacuation(cmd.Context(), connect.NewRequest(&ferryv1.GetEvacuationRequest{Host: args[0]}))
			if err != nil {
				return err
			}
			return g.show(resp.Msg.Evacuation, func() string { return renderEvacuation(resp.Msg.Evacuation) })
		},
	})
	cmd.AddCommand(&cobra.Command{
		Use:   "cancel HOST",
		Short: "Stop HOST's evacuation: no more migrations start, those in flight roll back; the host stays in maintenance",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			resp, err := g.fleet().CancelEvacuation(cmd.Context(), connect.NewRequest(&ferryv1.CancelEvacuationRequest{Host: args[0]}))
			if err != nil {
				return err
			}
			fmt.Fprint(g.stdout, renderEvacuation(resp.Msg.Evacuation))
			return nil
		},
	})
	return cmd
}

// followEvacuation polls the record until it ends, drawing per-VM
// progress (redrawn in place in a terminal, a line per change otherwise).
func followEvacuation(ctx context.Context, g *globals, host string, timeout time.Duration, draw bool) (*ferryv1.Evacuation, error) {
	deadline := time.Now().Add(timeout)
	tty := isTerminal(g.stdout)
	last, drawn := "", 0
	for {
		resp, err := g.fleet().GetEvacuation(ctx, connect.NewRequest(&ferryv1.GetEvacuationRequest{Host: host}))
		if err != nil {
			return nil, err
		}
		e := resp.Msg.Evacuation
		if draw {
			lines := progressLines(e)
			if s := strings.Join(lines, "\n"); s != last {
				if tty && drawn > 0 {
					fmt.Fprintf(g.stdout, "\x1b[%dA\x1b[J", drawn)
				}
				fmt.Fprintln(g.stdout, s)
				last, drawn = s, len(lines)
			}
		}
		if evacuationEnded(e.State) {
			return e, nil
		}
		if time.Now().After(deadline) {
			return e, fmt.Errorf("evacuation of %s still %s after %s (it goes on: ferry host maintenance status %s)", host, e.State, timeout, host)
		}
		select {
		case <-ctx.Done():
			return e, ctx.Err()
		case <-time.After(500 * time.Millisecond):
		}
	}
}

// progressLines is one line per VM with a bar, then the overall line.
func progressLines(e *ferryv1.Evacuation) []string {
	var out []string
	done := 0
	for _, it := range e.Items {
		frac := it.Progress
		if it.Status == "completed" {
			frac, done = 1, done+1
		}
		n := int(frac * 20)
		bar := strings.Repeat("#", n) + strings.Repeat(".", 20-n)
		out = append(out, fmt.Sprintf("  %-16s [%s] %3.0f%%  -> %-8s %s", it.Vm, bar, frac*100, orDash(it.To), it.Status))
	}
	out = append(out, fmt.Sprintf("  %d/%d moved, %s elapsed, predicted %s: %s", done, len(e.Items), fmtMs(e.MeasuredMs), fmtMs(e.PredictedEtaMs), e.State))
	return out
}

// renderEvacuation is the report: the state, one line per VM (where it
// went, measured vs predicted, or why it did not move), the message.
func renderEvacuation(e *ferryv1.Evacuation) string {
	var b strings.Builder
	fmt.Fprintf(&b, "host %s: evacuation %s (%s), %d VMs, parallel %d, predicted %s, measured %s\n",
		e.Host, e.State, e.Reason, len(e.Items), e.Parallel, fmtMs(e.PredictedEtaMs), fmtMs(e.MeasuredMs))
	if e.State == "planned" {
		for _, l := range e.Plan {
			fmt.Fprintln(&b, "  "+l)
		}
		return b.String()
	}
	var rows [][]string
	for _, it := range e.Items {
		why := it.Error
		if why == "" && len(it.Failures) > 0 {
			why = "retried after: " + strings.Join(it.Failures, "; ")
		}
		rows = append(rows, []string{it.Vm, it.Status, orDash(it.To), orDash(it.Strategy), fmt.Sprint(it.Attempts),
			fmtMs(it.MeasuredMs), fmtMs(it.PredictedMs), orDash(it.MigrationId), orDash(why)})
	}
	_ = table(&b, []string{"VM", "STATUS", "TO", "STRATEGY", "ATTEMPTS", "MEASURED", "PREDICTED", "MIGRATION", "WHY"}, rows)
	if e.Message != "" {
		fmt.Fprintln(&b, e.Message)
	}
	return b.String()
}

func newPolicyCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "policy", Short: "The cluster's migration policies (parallelism, bandwidth, strategies, downtime, timeouts, health-driven evacuation)"}
	cmd.AddCommand(&cobra.Command{
		Use:   "get",
		Short: "Print the migration policies as JSON (durations in nanoseconds; empty fields take the defaults)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			resp, err := g.fleet().GetPolicies(cmd.Context(), connect.NewRequest(&ferryv1.GetPoliciesRequest{}))
			if err != nil {
				return err
			}
			fmt.Fprintln(g.stdout, resp.Msg.Json)
			return nil
		},
	})
	var file, insecure string
	set := &cobra.Command{
		Use:   "set (-f FILE | --insecure-transport=true|false)",
		Short: "Validate and store the migration policies from a JSON file (- for stdin), or change only the cluster's insecureTransport (admin)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var b []byte
			var err error
			switch {
			case (file == "") == (insecure == ""):
				return errors.New("give one of -f FILE (the whole policy set) or --insecure-transport=true|false")
			case insecure != "":
				if b, err = withInsecureTransport(cmd.Context(), g, insecure); err != nil {
					return err
				}
			case file == "-":
				b, err = io.ReadAll(os.Stdin)
			default:
				b, err = os.ReadFile(file)
			}
			if err != nil {
				return fmt.Errorf("read the policies: %w", err)
			}
			resp, err := g.fleet().SetPolicies(cmd.Context(), connect.NewRequest(&ferryv1.SetPoliciesRequest{Json: string(b)}))
			if err != nil {
				return err
			}
			fmt.Fprintln(g.stdout, resp.Msg.Json)
			return nil
		},
	}
	set.Flags().StringVarP(&file, "file", "f", "", "JSON policy set (see ferry policy get)")
	set.Flags().StringVar(&insecure, "insecure-transport", "", "true: every migration's streams in plaintext (cluster policy insecureTransport); false: TLS (the default). Changes only this key of the stored policies; recorded as an event")
	cmd.AddCommand(set)
	return cmd
}

func newBalanceCmd(g *globals) *cobra.Command {
	var dryRun bool
	cmd := &cobra.Command{
		Use:   "balance",
		Short: "Plan the migrations that even out hosts' CPU and memory use and start them (--dry-run: plan only)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			resp, err := g.fleet().Balance(cmd.Context(), connect.NewRequest(&ferryv1.BalanceRequest{DryRun: dryRun}))
			if err != nil {
				return err
			}
			return g.show(resp.Msg, func() string { return renderBalance(resp.Msg) })
		},
	}
	cmd.Flags().BoolVar(&dryRun, "dry-run", false, "print the proposals and change nothing")
	cmd.AddCommand(&cobra.Command{
		Use:   "recommendations",
		Short: "List the background balancer's last proposals with their reasons",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			resp, err := g.fleet().ListRecommendations(cmd.Context(), connect.NewRequest(&ferryv1.ListRecommendationsRequest{}))
			if err != nil {
				return err
			}
			return g.show(resp.Msg, func() string { return renderBalance(resp.Msg) })
		},
	})
	return cmd
}

// renderBalance is a balancer plan for people.
func renderBalance(r *ferryv1.BalanceResponse) string {
	var b strings.Builder
	fmt.Fprintf(&b, "balancer %s: imbalance %.3f, %.3f after %d proposals; %s\n", r.Mode, r.ImbalanceBefore, r.ImbalanceAfter, len(r.Proposals), r.Why)
	var rows [][]string
	for _, p := range r.Proposals {
		rows = append(rows, []string{p.Vm, p.From, p.To, p.Strategy, fmt.Sprintf("%.4f", p.Gain), fmt.Sprintf("%.3f", p.Cost), fmtMs(p.PredictedMs), fmtMs(p.PredictedDowntimeMs), p.Reason})
	}
	if len(rows) > 0 {
		_ = table(&b, []string{"VM", "FROM", "TO", "STRATEGY", "GAIN", "COST", "PREDICTED", "DOWNTIME", "REASON"}, rows)
	}
	if len(r.Cooling) > 0 {
		fmt.Fprintf(&b, "cooling down (moved recently): %s\n", strings.Join(r.Cooling, ", "))
	}
	if len(r.Started) > 0 {
		fmt.Fprintf(&b, "started: %s\n", strings.Join(r.Started, ", "))
	}
	return b.String()
}

// withInsecureTransport reads the stored policies and returns them as JSON
// with the cluster's insecureTransport set to value ("true" or "false").
func withInsecureTransport(ctx context.Context, g *globals, value string) ([]byte, error) {
	on, err := strconv.ParseBool(value)
	if err != nil {
		return nil, fmt.Errorf("--insecure-transport: want true or false, got %q", value)
	}
	resp, err := g.fleet().GetPolicies(ctx, connect.NewRequest(&ferryv1.GetPoliciesRequest{}))
	if err != nil {
		return nil, fmt.Errorf("read the stored policies: %w", err)
	}
	var set policy.Set
	if err := json.Unmarshal([]byte(resp.Msg.Json), &set); err != nil {
		return nil, fmt.Errorf("the stored policies: %w", err)
	}
	set.Cluster.InsecureTransport = on
	return json.Marshal(set)
}
