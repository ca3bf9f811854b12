package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"github.com/ferryvm/ferry/internal/devcluster"
	"github.com/ferryvm/ferry/internal/linkemu"
)

func newDevClusterLinkCmd(g *globals) *cobra.Command {
	var (
		dir, delay, jitter, loss, rate string
		down, up, clear, asJSON        bool
	)
	cmd := &cobra.Command{
		Use:   "link HOST",
		Short: "Shape a host's link to the segment: delay, jitter, loss, rate, down/up (a packet forwarder; this kernel has no netem)",
		Long: "Inserts a link emulator between HOST's veth and the segment (on first use) and sets its\n" +
			"parameters, the same in both directions. Flags not given keep their current value, so\n" +
			"`--down` then `--up` restores the shaping set before. Without flags it prints the current\n" +
			"parameters and counters. `--clear` removes the emulator and plugs the host in directly.\n" +
			"Rates are bytes per second (48MiB) or bits (100Mbit); loss is a percentage (0.1%).",
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if dir == "" {
				return errors.New("--dir is required: the state directory given to `ferry dev cluster up`")
			}
			if down && up {
				return errors.New("--down and --up contradict each other: give one")
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), time.Minute)
			defer cancel()
			c, err := devcluster.Load(dir)
			if err != nil {
				return err
			}
			host := args[0]
			if clear {
				if err := c.ClearLink(ctx, host); err != nil {
					return err
				}
				fmt.Fprintf(g.stdout, "link of %s: emulator removed\n", host)
				return nil
			}
			var update []func(*linkemu.Params)
			f := cmd.Flags()
			if f.Changed("delay") {
				d, err := time.ParseDuration(delay)
				if err != nil {
					return fmt.Errorf("--delay %q: %w (e.g. 20ms)", delay, err)
				}
				update = append(update, func(p *linkemu.Params) { p.Delay = d })
			}
			if f.Changed("jitter") {
				d, err := time.ParseDuration(jitter)
				if err != nil {
					return fmt.Errorf("--jitter %q: %w (e.g. 2ms)", jitter, err)
				}
				update = append(update, func(p *linkemu.Params) { p.Jitter = d })
			}
			if f.Changed("loss") {
				v, err := linkemu.ParseLoss(loss)
				if err != nil {
					return fmt.Errorf("--loss: %w", err)
				}
				update = append(update, func(p *linkemu.Params) { p.Loss = v })
			}
			if f.Changed("rate") {
				v, err := linkemu.ParseRate(rate)
				if err != nil {
					return fmt.Errorf("--rate: %w", err)
				}
				update = append(update, func(p *linkemu.Params) { p.Rate = v })
			}
			if down || up {
				update = append(update, func(p *linkemu.Params) { p.Down = down })
			}
			var st linkemu.Status
			if len(update) == 0 {
				var ok bool
				st, ok, err = c.LinkStatus(ctx, host)
				if err != nil {
					return err
				}
				if !ok {
					fmt.Fprintf(g.stdout, "link of %s: not emulated (direct)\n", host)
					return nil
				}
			} else {
				st, err = c.Link(ctx, host, "", func(p *linkemu.Params) {
					for _, u := range update {
						u(p)
					}
				})
				if err != nil {
					return err
				}
			}
			if asJSON {
				enc := json.NewEncoder(g.stdout)
				enc.SetIndent("", "  ")
				return enc.Encode(st)
			}
			fmt.Fprintf(g.stdout, "link of %s: %s\n", host, st.Params)
			for _, d := range []linkemu.Direction{linkemu.AToB, linkemu.BToA} {
				s := st.Stats[d]
				fmt.Fprintf(g.stdout, "  %-6s frames %d delivered %d dropped: loss %d full %d down %d\n",
					map[linkemu.Direction]string{linkemu.AToB: "out", linkemu.BToA: "in"}[d],
					s.Frames, s.Delivered, s.DroppedLoss, s.DroppedFull, s.DroppedDown)
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&dir, "dir", "", "state directory given to `ferry dev cluster up` (required)")
	f.StringVar(&delay, "delay", "0s", "one-way delay added in each direction")
	f.StringVar(&jitter, "jitter", "0s", "delay spread: uniform in delay±jitter (no reordering)")
	f.StringVar(&loss, "loss", "0%", "random loss per frame in each direction")
	f.StringVar(&rate, "rate", "0", "rate limit in each direction (0 = unlimited)")
	f.BoolVar(&down, "down", false, "drop every frame (the link is cut)")
	f.BoolVar(&up, "up", false, "stop dropping every frame (undo --down)")
	f.BoolVar(&clear, "clear", false, "remove the emulator")
	f.BoolVar(&asJSON, "json", false, "print the status as JSON")
	return cmd
}

// newDevClusterLinkForwarderCmd runs one link emulator's forwarder; Link
// starts it inside the segment namespace.
func newDevClusterLinkForwarderCmd() *cobra.Command {
	var a, b, control, params string
	cmd := &cobra.Command{
		Use:    "link-forwarder",
		Short:  "Run a link emulator's packet forwarder (started by `ferry dev cluster link`)",
		Hidden: true,
		Args:   cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var p linkemu.Params
			if err := json.Unmarshal([]byte(params), &p); err != nil {
				return fmt.Errorf("--params: %w", err)
			}
			ctx, cancel := signalContextFrom(cmd.Context())
			defer cancel()
			return linkemu.RunForwarder(ctx, a, b, control, p)
		},
	}
	cmd.Flags().StringVar(&a, "a", "", "first interface (the host's side)")
	cmd.Flags().StringVar(&b, "b", "", "second interface (the segment's side)")
	cmd.Flags().StringVar(&control, "control", "", "control socket path")
	cmd.Flags().StringVar(&params, "params", "{}", "initial parameters as JSON")
	return cmd
}
