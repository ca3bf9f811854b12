package server

import (
	"context"
	"strings"
	"testing"
	"time"

	ferryv1 "github.com/ferryvm/ferry/gen/ferry/v1"
	"github.com/ferryvm/ferry/internal/store"
)

// TestFleetEventsRecorded: the leader's recorder turns a host's health
// change (not its heartbeats) and every state change of an evacuation
// (entering maintenance, its end, the exit) into events, in order, with
// the counts and reasons.
func TestFleetEventsRecorded(t *testing.T) {
	s, st := newTestServer(t)
	startEventRecorder(t, s, st)
	ctx := context.Background()
	es := st.(*store.Etcd)
	put := func(h *ferryv1.Host) {
		t.Helper()
		if err := st.PutHost(ctx, h, time.Minute); err != nil {
			t.Fatal(err)
		}
	}
	h2 := &ferryv1.Host{Name: "h2", Address: "unix:///nonexistent/h2", MigrationIp: "198.18.0.9", Capacity: &ferryv1.HostCapacity{Cpus: 2, MemoryMib: 4096}}
	put(h2) // a heartbeat: no change of health
	h2.Health, h2.HealthDetail = "degraded", "disk /var: 97% full"
	put(h2)
	put(h2) // the next heartbeat, still degraded: no event
	ev := &ferryv1.Evacuation{Host: "h2", Reason: "degraded", State: "running", Items: []*ferryv1.EvacuationItem{{Vm: "web", Status: "migrating"}}}
	if err := es.PutEvacuation(ctx, ev); err != nil {
		t.Fatal(err)
	}
	ev.Items[0].Progress = 0.5 // progress, same state: no event
	if err := es.PutEvacuation(ctx, ev); err != nil {
		t.Fatal(err)
	}
	ev.State, ev.Message, ev.Items[0].Status = "completed", "host h2 is empty", "completed"
	if err := es.PutEvacuation(ctx, ev); err != nil {
		t.Fatal(err)
	}
	if err := es.DeleteEvacuation(ctx, "h2"); err != nil {
		t.Fatal(err)
	}
	h := &eventService{s}
	var got []string
	deadline := time.Now().Add(10 * time.Second)
	want := []string{
		"host h2 healthy→degraded health: disk /var: 97% full",
		"evacuation h2 →running degraded: 0 of 1 VMs moved, 0 failed, 1 in flight",
		"evacuation h2 running→completed degraded: 1 of 1 VMs moved, 0 failed, 0 in flight; host h2 is empty",
		"evacuation h2 completed→deleted maintenance exited: the host is schedulable again",
	}
	for time.Now().Before(deadline) {
		got = got[:0]
		evs := waitEvents(t, h, "", 1)
		for _, e := range evs {
			if e.Kind == "host" && e.FromState == "unreachable" {
				continue // the hosts' liveness keys, written by newTestServer
			}
			got = append(got, e.Kind+" "+e.Name+" "+e.FromState+"→"+e.ToState+" "+e.Message)
		}
		if len(got) >= len(want) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("events:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}
