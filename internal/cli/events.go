package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"connectrpc.com/connect"
	ferryv1 "github.com/ferryvm/ferry/gen/ferry/v1"
	"github.com/ferryvm/ferry/gen/ferry/v1/ferryv1connect"
	"github.com/ferryvm/ferry/internal/failover"
	"github.com/spf13/cobra"
	"google.golang.org/protobuf/encoding/protojson"
)

func (g *globals) events() ferryv1connect.EventServiceClient {
	hc, base := failover.Client(g.server)
	return ferryv1connect.NewEventServiceClient(hc, base)
}

func newEventsCmd(g *globals) *cobra.Command {
	var vm string
	var follow bool
	var limit int32
	cmd := &cobra.Command{
		Use:   "events [--vm NAME] [--follow]",
		Short: "Show the state changes of hosts, VMs and migrations, oldest first (-o json: JSON)",
		Long: "Show the recorded state changes of hosts, VMs and migrations, oldest first.\n" +
			"--follow keeps printing new ones as they happen (until interrupted); with -o json\n" +
			"it prints one JSON event per line.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if limit < 0 {
				return fmt.Errorf("--limit: must be 0 (all) or positive, got %d", limit)
			}
			if follow {
				return followEvents(cmd.Context(), g, vm, limit)
			}
			resp, err := g.events().ListEvents(cmd.Context(), connect.NewRequest(&ferryv1.ListEventsRequest{Vm: vm, Limit: limit}))
			if err != nil {
				return err
			}
			if g.output == "json" {
				return printJSON(g.stdout, resp.Msg)
			}
			for _, e := range resp.Msg.Events {
				if err := printEvent(g.stdout, e, false); err != nil {
					return err
				}
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&vm, "vm", "", "only the events of this VM and its migrations")
	cmd.Flags().BoolVarP(&follow, "follow", "f", false, "keep printing new events as they happen")
	cmd.Flags().Int32Var(&limit, "limit", 0, "only the newest N kept events (0: all)")
	return cmd
}

// followEvents prints the kept events, then each new one as it happens,
// until ctx ends. The watch is in place before the list is read, so no
// event falls between them; one in both is printed once.
func followEvents(ctx context.Context, g *globals, vm string, limit int32) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := g.events().WatchEvents(ctx, connect.NewRequest(&ferryv1.WatchEventsRequest{Vm: vm}))
	if err != nil {
		return fmt.Errorf("watch events: %w", err)
	}
	defer stream.Close()
	if !stream.Receive() { // the empty message: the watch is in place
		return fmt.Errorf("watch events: %w", errOr(stream.Err(), "the server ended the watch"))
	}
	asJSON := g.output == "json"
	resp, err := g.events().ListEvents(ctx, connect.NewRequest(&ferryv1.ListEventsRequest{Vm: vm, Limit: limit}))
	if err != nil {
		return err
	}
	last := ""
	for _, e := range resp.Msg.Events {
		if err := printEvent(g.stdout, e, asJSON); err != nil {
			return err
		}
		last = e.Id
	}
	for stream.Receive() {
		e := stream.Msg().GetEvent()
		if e == nil || e.Id <= last {
			continue
		}
		if err := printEvent(g.stdout, e, asJSON); err != nil {
			return err
		}
		last = e.Id
	}
	if ctx.Err() != nil {
		return nil // interrupted
	}
	return fmt.Errorf("watch events: %w", errOr(stream.Err(), "the server ended the watch"))
}

func errOr(err error, msg string) error {
	if err != nil {
		return err
	}
	return errors.New(msg)
}

// printEvent writes one event as a line: compact JSON, or
// "TIME KIND NAME FROM -> TO  MESSAGE".
func printEvent(w io.Writer, e *ferryv1.Event, asJSON bool) error {
	if asJSON {
		b, err := protojson.Marshal(e)
		if err != nil {
			return fmt.Errorf("encode event: %w", err)
		}
		_, err = fmt.Fprintln(w, string(b))
		return err
	}
	from, to := orDash(e.FromState), orDash(e.ToState)
	line := fmt.Sprintf("%s  %-9s %-14s %s -> %s", e.GetTime().AsTime().UTC().Format(time.RFC3339), e.Kind, e.Name, from, to)
	if e.Message != "" {
		line += "  " + e.Message
	}
	_, err := fmt.Fprintln(w, line)
	return err
}
