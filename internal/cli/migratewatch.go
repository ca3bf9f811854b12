package cli

import (
	"context"

	"connectrpc.com/connect"
	ferryv1 "github.com/ferryvm/ferry/gen/ferry/v1"
)

// migrationWakeups returns a channel that receives whenever the server
// records an event of migration id (a migration of vm), until ctx ends, so
// `ferry migrate --wait` asks for the migration when it changed state
// instead of at its next poll: its end is seen when it happens, not up to
// a poll interval later.
//
// The watch only hastens the polls. When it cannot be opened or breaks (a
// server without the event stream, a leader change), the error is not the
// command's: the polls go on every pollInterval as they would without it.
func (g *globals) migrationWakeups(ctx context.Context, vm, id string) <-chan struct{} {
	wake := make(chan struct{}, 1)
	go func() {
		stream, err := g.events().WatchEvents(ctx, connect.NewRequest(&ferryv1.WatchEventsRequest{Vm: vm}))
		if err != nil {
			return
		}
		defer func() { _ = stream.Close() }() // the polls carry on without it
		for stream.Receive() {
			ev := stream.Msg().GetEvent()
			if ev.GetKind() != "migration" || ev.GetName() != id {
				continue
			}
			select {
			case wake <- struct{}{}:
			default: // a poll is already due
			}
		}
	}()
	return wake
}
