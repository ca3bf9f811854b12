package server

import (
	"context"
	"errors"
	"fmt"
	"net/http/httptest"
	"testing"
	"time"

	"connectrpc.com/connect"
	statev1 "github.com/ferryvm/ferry/gen/ferry/state/v1"
	ferryv1 "github.com/ferryvm/ferry/gen/ferry/v1"
	"github.com/ferryvm/ferry/gen/ferry/v1/ferryv1connect"
	"github.com/ferryvm/ferry/internal/retention"
	"github.com/ferryvm/ferry/internal/store"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// startEventRecorder runs the leader's event recorder from the store's
// current revision (so every change the test makes next is recorded).
func startEventRecorder(t *testing.T, s *Server, st store.Store) {
	t.Helper()
	rev, err := st.Revision(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	s.eventsFrom.Store(rev + 1)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); s.runEvents(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
}

// migrateRecords walks web's VM record and a migration record through a
// migration's states as the engine writes them, with progress-only writes
// (no state change) in between.
func migrateRecords(t *testing.T, st store.Store, states []string) {
	t.Helper()
	ctx := context.Background()
	setVM := func(state, host string) {
		if _, err := st.UpdateVM(ctx, "web", false, func(v *ferryv1.VM) error { v.State, v.Host = state, host; return nil }); err != nil {
			t.Fatal(err)
		}
	}
	setVM("migrating", "h1")
	for i, state := range states {
		rec := &statev1.MigrationRecord{Id: "mig-1", Vm: "web", From: "h1", To: "h2", Strategy: "precopy", State: state}
		if err := st.PutMigration(ctx, rec); err != nil {
			t.Fatal(err)
		}
		rec.DestUri = fmt.Sprintf("tcp:h2:%d", i) // progress, same state: no event
		if err := st.PutMigration(ctx, rec); err != nil {
			t.Fatal(err)
		}
	}
	setVM("running", "h2")
}

// waitEvents polls ListEvents for vm until it has n events.
func waitEvents(t *testing.T, h *eventService, vm string, n int) []*ferryv1.Event {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	var got []*ferryv1.Event
	for time.Now().Before(deadline) {
		resp, err := h.ListEvents(context.Background(), connect.NewRequest(&ferryv1.ListEventsRequest{Vm: vm}))
		if err != nil {
			t.Fatal(err)
		}
		if got = resp.Msg.Events; len(got) >= n {
			return got
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("%d events of %q within 10s, want %d: %v", len(got), vm, n, got)
	return nil
}

// TestEventsOfAMigrationListedInOrder: the leader's recorder turns every
// state change of a VM and its migration into one event, in the order they
// happened, skips writes that change no state, and ListEvents filters by
// VM and keeps the newest with limit.
func TestEventsOfAMigrationListedInOrder(t *testing.T) {
	s, st := newTestServer(t)
	ctx := context.Background()
	if err := st.CreateVM(ctx, &ferryv1.VM{Spec: &ferryv1.VMSpec{Name: "db", Vcpus: 1, MemoryMib: 256}, Host: "h2", State: "running", Generation: 1}); err != nil {
		t.Fatal(err)
	}
	startEventRecorder(t, s, st)
	migrateRecords(t, st, []string{"pending", "preparing", "transferring", "switchover", "resuming", "completed"})
	h := &eventService{s}
	got := waitEvents(t, h, "web", 8)
	var seq []string
	for _, e := range got {
		seq = append(seq, fmt.Sprintf("%s %s->%s", e.Kind, e.FromState, e.ToState))
	}
	want := []string{
		"vm running->migrating",
		"migration ->pending", "migration pending->preparing", "migration preparing->transferring",
		"migration transferring->switchover", "migration switchover->resuming", "migration resuming->completed",
		"vm migrating->running",
	}
	if fmt.Sprint(seq) != fmt.Sprint(want) {
		t.Fatalf("events of web:\n got %q\nwant %q", seq, want)
	}
	if last := got[len(got)-1]; last.Message != "moved from h1 to h2" || last.Vm != "web" {
		t.Errorf("last event %v, want web moved from h1 to h2", last)
	}
	for i := 1; i < len(got); i++ {
		if got[i].Id <= got[i-1].Id || got[i].Revision < got[i-1].Revision {
			t.Errorf("events out of order: %s after %s", got[i].Id, got[i-1].Id)
		}
	}
	// A change of another VM is not among web's.
	if _, err := st.UpdateVM(ctx, "db", false, func(v *ferryv1.VM) error { v.State = "stopped"; return nil }); err != nil {
		t.Fatal(err)
	}
	if db := waitEvents(t, h, "db", 1); db[0].ToState != "stopped" {
		t.Errorf("db's event: %v", db[0])
	}
	if again := waitEvents(t, h, "web", 8); len(again) != 8 {
		t.Errorf("web has %d events after db changed, want 8", len(again))
	}
	resp, err := h.ListEvents(ctx, connect.NewRequest(&ferryv1.ListEventsRequest{Vm: "web", Limit: 2}))
	if err != nil || len(resp.Msg.Events) != 2 || resp.Msg.Events[1].ToState != "running" {
		t.Errorf("limit 2: %v (err %v), want the newest two", resp.Msg.GetEvents(), err)
	}
	if _, err := h.ListEvents(ctx, connect.NewRequest(&ferryv1.ListEventsRequest{Limit: -1})); connect.CodeOf(err) != connect.CodeInvalidArgument {
		t.Errorf("limit -1: err %v, want InvalidArgument", err)
	}
}

// TestWatchEventsShowsANewOne: a client watching web's events over the API
// (the CLI's --follow) receives a state change as it happens, and nothing
// of another VM.
func TestWatchEventsShowsANewOne(t *testing.T) {
	s, st := newTestServer(t)
	ctx := context.Background()
	if err := st.CreateVM(ctx, &ferryv1.VM{Spec: &ferryv1.VMSpec{Name: "db", Vcpus: 1, MemoryMib: 256}, Host: "h2", State: "running", Generation: 1}); err != nil {
		t.Fatal(err)
	}
	startEventRecorder(t, s, st)
	srv := httptest.NewServer(s.Handler())
	defer srv.Close()
	client := ferryv1connect.NewEventServiceClient(srv.Client(), srv.URL)
	wctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	stream, err := client.WatchEvents(wctx, connect.NewRequest(&ferryv1.WatchEventsRequest{Vm: "web"}))
	if err != nil {
		t.Fatal(err)
	}
	defer stream.Close()
	if !stream.Receive() || stream.Msg().Event != nil {
		t.Fatalf("first watch message %v (err %v), want the empty one saying the watch is in place", stream.Msg(), stream.Err())
	}
	// In place: a change of db is not shown, the next change of web is.
	for _, vm := range []string{"db", "web"} {
		if _, err := st.UpdateVM(ctx, vm, false, func(v *ferryv1.VM) error { v.State = "stopped"; return nil }); err != nil {
			t.Fatal(err)
		}
	}
	if !stream.Receive() {
		t.Fatalf("watch ended: %v", stream.Err())
	}
	if e := stream.Msg().Event; e.GetVm() != "web" || e.GetKind() != "vm" || e.GetFromState() != "running" || e.GetToState() != "stopped" {
		t.Fatalf("watched event %v, want web running->stopped", e)
	}
}

// TestEventRetentionKeepsTheNewest: the sweep keeps at most Count events
// and none older than Age, the newest first.
func TestEventRetentionKeepsTheNewest(t *testing.T) {
	s, st := newTestServer(t)
	ctx := context.Background()
	now := time.Now()
	for i := range 5 {
		e := &ferryv1.Event{Id: fmt.Sprintf("%020d-vm-web", i+1), Kind: "vm", Name: "web", Vm: "web", ToState: "running",
			Time: timestamppb.New(now.Add(time.Duration(i-4) * time.Hour))}
		if err := st.PutEvent(ctx, e); err != nil {
			t.Fatal(err)
		}
	}
	s.eventRetention = retention.Policy{Count: 3, Age: 90 * time.Minute}
	n, err := s.sweepEvents(ctx, now)
	if err != nil {
		t.Fatal(err)
	}
	evs, _ := st.ListEvents(ctx)
	if n != 3 || len(evs) != 2 || evs[0].Id != fmt.Sprintf("%020d-vm-web", 4) {
		t.Errorf("removed %d, kept %v; want 3 removed and the two of the last 90 minutes kept", n, evs)
	}
}

// TestEventWritesAreFenced: a replica that does not lead records nothing.
func TestEventWritesAreFenced(t *testing.T) {
	_, st := newTestServer(t)
	st.(*store.Etcd).CloseFence()
	err := st.PutEvent(context.Background(), &ferryv1.Event{Id: "1-vm-web"})
	if !errors.Is(err, store.ErrNotLeader) {
		t.Fatalf("put event with a closed fence: %v, want ErrNotLeader", err)
	}
}

// TestEventOfSkipsChangesWithoutAStateChange: heartbeats (the liveness key
// put again) and progress writes are not events; a host's lease expiring
// is.
func TestEventOfSkipsChangesWithoutAStateChange(t *testing.T) {
	now := time.Now()
	vm := []byte(`{"state":"running","host":"h1"}`)
	for _, tc := range []struct {
		c    store.StateChange
		want string // "" for no event
	}{
		{store.StateChange{Kind: store.KindHost, Name: "h1", Prev: []byte("1"), Cur: []byte("1"), Rev: 5}, ""},
		{store.StateChange{Kind: store.KindHost, Name: "h1", Cur: []byte("1"), Rev: 5}, "unreachable->ready"},
		{store.StateChange{Kind: store.KindHost, Name: "h1", Prev: []byte("1"), Rev: 5}, "ready->unreachable"},
		{store.StateChange{Kind: store.KindVM, Name: "web", Prev: vm, Cur: vm, Rev: 6}, ""},
		{store.StateChange{Kind: store.KindVM, Name: "web", Cur: vm, Rev: 6}, "->running"},
		{store.StateChange{Kind: store.KindVM, Name: "web", Prev: vm, Rev: 6}, "running->deleted"},
		// The cluster policy: only a change of insecureTransport is an event.
		{store.StateChange{Kind: store.KindPolicy, Name: "cluster", Cur: []byte(`{"cluster":{"insecureTransport":true}}`), Rev: 7}, "tls->plain"},
		{store.StateChange{Kind: store.KindPolicy, Name: "cluster", Prev: []byte(`{"cluster":{"insecureTransport":true}}`), Cur: []byte(`{"cluster":{"maxParallelCluster":2}}`), Rev: 8}, "plain->tls"},
		{store.StateChange{Kind: store.KindPolicy, Name: "cluster", Prev: []byte(`{"cluster":{}}`), Cur: []byte(`{"cluster":{"maxParallelCluster":2}}`), Rev: 9}, ""},
	} {
		e, ok, err := eventOf(tc.c, now)
		if err != nil {
			t.Fatal(err)
		}
		got := ""
		if ok {
			got = e.FromState + "->" + e.ToState
		}
		if got != tc.want {
			t.Errorf("%s %s prev %q cur %q: event %q, want %q", tc.c.Kind, tc.c.Name, tc.c.Prev, tc.c.Cur, got, tc.want)
		}
	}
	if _, _, err := eventOf(store.StateChange{Kind: store.KindVM, Name: "x", Cur: []byte("{bad")}, now); err == nil {
		t.Error("a garbled VM record: no error")
	}
}

// TestEventRecorderResumesAfterALeaderGap: changes made while no replica
// records (between two terms) are recorded when the next term resumes from
// the newest event, each once.
func TestEventRecorderResumesAfterALeaderGap(t *testing.T) {
	s, st := newTestServer(t)
	ctx := context.Background()
	rev, err := st.Revision(ctx)
	if err != nil {
		t.Fatal(err)
	}
	s.eventsFrom.Store(rev + 1)
	h := &eventService{s}
	setVM := func(state string) {
		if _, err := st.UpdateVM(ctx, "web", false, func(v *ferryv1.VM) error { v.State = state; return nil }); err != nil {
			t.Fatal(err)
		}
	}
	term := func() context.CancelFunc {
		c, cancel := context.WithCancel(ctx)
		done := make(chan struct{})
		go func() { defer close(done); s.runEvents(c) }()
		return func() { cancel(); <-done }
	}
	stop := term()
	setVM("stopped")
	waitEvents(t, h, "web", 1)
	stop()
	setVM("running") // no one records
	setVM("paused")
	s.eventsFrom.Store(0) // the next leader knows only the stored events
	stop = term()
	defer stop()
	got := waitEvents(t, h, "web", 3)
	time.Sleep(100 * time.Millisecond)
	got = waitEvents(t, h, "web", 3)
	var seq []string
	for _, e := range got {
		seq = append(seq, e.FromState+"->"+e.ToState)
	}
	if fmt.Sprint(seq) != "[running->stopped stopped->running running->paused]" {
		t.Errorf("events across the gap: %v, want each change once, in order", seq)
	}
}

// TestWatchStateChangesReportsCompaction: resuming from a revision etcd
// compacted is ErrEventHistoryCompacted (the recorder then starts from
// now and logs the gap).
func TestWatchStateChangesReportsCompaction(t *testing.T) {
	_, st := newTestServer(t)
	ctx := context.Background()
	rev, err := st.Revision(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := st.(*store.Etcd).Client().Compact(ctx, rev); err != nil {
		t.Fatal(err)
	}
	wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	err = st.WatchStateChanges(wctx, 1, func(store.StateChange) error { return nil })
	if !errors.Is(err, store.ErrEventHistoryCompacted) {
		t.Fatalf("watch from a compacted revision: %v, want ErrEventHistoryCompacted", err)
	}
}
