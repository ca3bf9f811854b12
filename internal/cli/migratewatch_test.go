package cli

import (
	"context"
	"net/http"
	"testing"
	"time"

	"connectrpc.com/connect"
	ferryv1 "github.com/ferryvm/ferry/gen/ferry/v1"
	"github.com/ferryvm/ferry/gen/ferry/v1/ferryv1connect"
)

// stepEvents is an in-process EventService whose watch sends one event
// per step: an event of another migration and of another kind first
// (neither may wake the CLI), then n events of migration id.
type stepEvents struct {
	ferryv1connect.UnimplementedEventServiceHandler
	id    string
	n     int
	asked chan string // the VM each watch asked for
}

func (s *stepEvents) WatchEvents(ctx context.Context, r *connect.Request[ferryv1.WatchEventsRequest], st *connect.ServerStream[ferryv1.WatchEventsResponse]) error {
	s.asked <- r.Msg.Vm
	if err := st.Send(&ferryv1.WatchEventsResponse{}); err != nil {
		return err
	}
	events := []*ferryv1.Event{
		{Kind: "migration", Name: "mig-other", Vm: "web"},
		{Kind: "vm", Name: "web", Vm: "web"},
	}
	for range s.n {
		events = append(events, &ferryv1.Event{Kind: "migration", Name: s.id, Vm: "web"})
	}
	for _, e := range events {
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(20 * time.Millisecond):
		}
		if err := st.Send(&ferryv1.WatchEventsResponse{Event: e}); err != nil {
			return err
		}
	}
	<-ctx.Done()
	return nil
}

// TestMigrateWaitWakesOnEvents: with polls an hour apart, --wait still
// follows the migration to its end, one poll per event of that migration,
// and none for the events of others.
func TestMigrateWaitWakesOnEvents(t *testing.T) {
	script := []*ferryv1.Migration{running("transferring", 10*mib), running("switchover", 300*mib),
		{Id: "mig-1a2b3c4d", Status: "completed", State: "completed"}}
	f := &fakeMigrations{script: script, final: completedMig()}
	ev := &stepEvents{id: "mig-1a2b3c4d", n: len(script), asked: make(chan string, 1)}
	url := serveFake(t, f, func(mux *http.ServeMux) { mux.Handle(ferryv1connect.NewEventServiceHandler(ev)) })
	old := pollInterval
	pollInterval = time.Hour
	t.Cleanup(func() { pollInterval = old })

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, _, err := runCLI(t, ctx, "--server", url, "migrate", "web", "--to", "h2", "--wait")
	if err != nil {
		t.Fatalf("--wait with polls an hour apart: %v (the events did not wake it)", err)
	}
	if vm := <-ev.asked; vm != "web" {
		t.Errorf("the watch asked for VM %q, want web", vm)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.polls != len(script) || f.full != 1 {
		t.Errorf("%d polls and %d full requests, want %d polls (one per event of the migration) and one full", f.polls, f.full, len(script))
	}
}
