package cli

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"
	ferryv1 "github.com/ferryvm/ferry/gen/ferry/v1"
	"github.com/ferryvm/ferry/gen/ferry/v1/ferryv1connect"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// fakeEvents is an in-process EventService: two kept events; its watch
// says it is in place, waits for the list, then streams the second kept
// event again (the CLI must not print it twice) and a new one, and ends.
type fakeEvents struct {
	ferryv1connect.UnimplementedEventServiceHandler
	mu     sync.Mutex
	listVM string
	listed chan struct{}
}

func fakeEvent(id, kind, name, from, to, msg string) *ferryv1.Event {
	return &ferryv1.Event{Id: id, Kind: kind, Name: name, Vm: "web", FromState: from, ToState: to, Message: msg,
		Time: timestamppb.New(time.Date(2026, 12, 1, 3, 0, 0, 0, time.UTC))}
}

var keptEvents = []*ferryv1.Event{
	fakeEvent("01-vm-web", "vm", "web", "running", "migrating", "on h1"),
	fakeEvent("02-migration-mig-1", "migration", "mig-1", "", "pending", "precopy h1 -> h2"),
}

func (f *fakeEvents) ListEvents(_ context.Context, req *connect.Request[ferryv1.ListEventsRequest]) (*connect.Response[ferryv1.ListEventsResponse], error) {
	f.mu.Lock()
	f.listVM = req.Msg.Vm
	f.mu.Unlock()
	defer func() {
		select {
		case f.listed <- struct{}{}:
		default:
		}
	}()
	return connect.NewResponse(&ferryv1.ListEventsResponse{Events: keptEvents}), nil
}

func (f *fakeEvents) WatchEvents(ctx context.Context, _ *connect.Request[ferryv1.WatchEventsRequest], s *connect.ServerStream[ferryv1.WatchEventsResponse]) error {
	if err := s.Send(&ferryv1.WatchEventsResponse{}); err != nil {
		return err
	}
	select {
	case <-f.listed:
	case <-ctx.Done():
		return nil
	case <-time.After(10 * time.Second):
		return connect.NewError(connect.CodeDeadlineExceeded, context.DeadlineExceeded)
	}
	for _, e := range []*ferryv1.Event{keptEvents[1], fakeEvent("03-migration-mig-1", "migration", "mig-1", "pending", "preparing", "precopy h1 -> h2")} {
		if err := s.Send(&ferryv1.WatchEventsResponse{Event: e}); err != nil {
			return err
		}
	}
	return nil
}

func serveFakeEvents(t *testing.T) (*fakeEvents, string) {
	t.Helper()
	f := &fakeEvents{listed: make(chan struct{}, 1)}
	mux := http.NewServeMux()
	mux.Handle(ferryv1connect.NewEventServiceHandler(f))
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	return f, srv.URL
}

// TestEventsCommand: `ferry events --vm web` lists the kept events in
// order, -o json is the API's response, and --follow prints the kept ones
// then each new one once, failing clearly when the server ends the watch.
func TestEventsCommand(t *testing.T) {
	f, url := serveFakeEvents(t)
	out, _, err := runCLI(t, nil, "--server", url, "events", "--vm", "web")
	if err != nil {
		t.Fatal(err)
	}
	want := "2026-12-01T03:00:00Z  vm        web            running -> migrating  on h1\n" +
		"2026-12-01T03:00:00Z  migration mig-1          - -> pending  precopy h1 -> h2\n"
	if out != want || f.listVM != "web" {
		t.Errorf("events --vm web (filter %q):\n%s\nwant:\n%s", f.listVM, out, want)
	}

	out, _, err = runCLI(t, nil, "--server", url, "events", "-o", "json")
	if err != nil {
		t.Fatal(err)
	}
	var resp ferryv1.ListEventsResponse
	if err := protojson.Unmarshal([]byte(out), &resp); err != nil || len(resp.Events) != 2 {
		t.Errorf("events -o json: %v, %d events\n%s", err, len(resp.Events), out)
	}

	out, _, err = runCLI(t, nil, "--server", url, "events", "--vm", "web", "--follow")
	if err == nil || !strings.Contains(err.Error(), "the server ended the watch") {
		t.Errorf("follow: err %v, want the watch's end named", err)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 3 || !strings.Contains(lines[2], "pending -> preparing") {
		t.Errorf("follow printed:\n%s\nwant the two kept events and the new one, each once", out)
	}

	if _, _, err := runCLI(t, nil, "--server", url, "events", "--limit", "-1"); err == nil || !strings.Contains(err.Error(), "--limit") {
		t.Errorf("--limit -1: err %v, want one naming --limit", err)
	}
}
