package server

import (
	"context"
	"encoding/json"
	"io"
	"net/http/httptest"
	"testing"
	"time"

	ferryv1 "github.com/ferryvm/ferry/gen/ferry/v1"
	"github.com/ferryvm/ferry/internal/dashboard"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// TestDashboardSnapshot: the server's /ui/api/snapshot shows the store's
// hosts and VMs, and the event history re-read when a new event arrived
// (not before: the cached list serves until the newest event changes).
func TestDashboardSnapshot(t *testing.T) {
	s, st := newTestServer(t)
	ctx := context.Background()
	srv := httptest.NewServer(s.Handler())
	defer srv.Close()
	snap := func() dashboard.Snapshot {
		t.Helper()
		resp, err := srv.Client().Get(srv.URL + "/ui/api/snapshot")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		var sn dashboard.Snapshot
		if err := json.Unmarshal(b, &sn); err != nil || resp.StatusCode != 200 {
			t.Fatalf("snapshot: %d %v %s", resp.StatusCode, err, b)
		}
		return sn
	}
	put := func(id, to string) {
		t.Helper()
		if err := st.PutEvent(ctx, &ferryv1.Event{Id: id, Time: timestamppb.New(time.Now()), Kind: "vm", Name: "web", Vm: "web", ToState: to}); err != nil {
			t.Fatal(err)
		}
	}
	put("00000000000000000010-vm-web", "pending")
	a := snap()
	if len(a.Hosts) != 2 || a.Hosts[0].Name != "h1" || len(a.VMs) != 1 || a.VMs[0].Name != "web" || a.VMs[0].Host != "h1" {
		t.Errorf("hosts %+v, VMs %+v", a.Hosts, a.VMs)
	}
	if len(a.Events) != 1 || a.Events[0].To != "pending" {
		t.Errorf("events %+v, want the one recorded", a.Events)
	}
	put("00000000000000000011-vm-web", "running")
	b := snap()
	if len(b.Events) != 2 || b.Events[0].To != "running" {
		t.Errorf("events after a new one %+v, want it first", b.Events)
	}
	resp, err := srv.Client().Get(srv.URL + "/ui/api/plot?id=mig-nope")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 404 {
		t.Errorf("plot of an unknown migration: %d, want 404", resp.StatusCode)
	}
}
