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
	"github.com/ferryvm/ferry/internal/migration/core"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// TestDashboardSource: the dashboard reads hosts and VMs each time, the
// migrations and events again only when a new event arrived (a record
// without one waits for the next full read), a live migration's progress
// by its id in between; one read serves all dashboards for shareFor.
func TestDashboardSource(t *testing.T) {
	s, st := newTestServer(t)
	ctx := context.Background()
	d := &dashSource{s: s, fullEvery: time.Hour}
	input := func() dashboard.Input {
		t.Helper()
		in, err := d.Input(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return in
	}
	event := func(id, to string) {
		t.Helper()
		if err := st.PutEvent(ctx, &ferryv1.Event{Id: id, Time: timestamppb.Now(), Kind: "migration", Name: "mig-1", Vm: "web", ToState: to}); err != nil {
			t.Fatal(err)
		}
	}
	migration := func(sent int64) {
		t.Helper()
		r, err := core.New("mig-1", "web", "h1", "h2", core.Precopy, core.VMRunning, 1,
			core.Options{StallTimeout: time.Minute, Timeout: time.Minute, RecoveryWindow: time.Minute}, time.Now())
		if err != nil {
			t.Fatal(err)
		}
		r.State = core.Transferring
		rec := core.ToProto(r)
		rec.Report = &ferryv1.Migration{Id: "mig-1", TransferredBytes: sent, RemainingBytes: 100 - sent}
		if err := st.PutMigration(ctx, rec); err != nil {
			t.Fatal(err)
		}
	}
	event("00000000000000000010-vm-web", "running")
	if in := input(); len(in.Hosts) != 2 || len(in.VMs) != 1 || len(in.Events) != 1 || len(in.Migrations) != 0 {
		t.Fatalf("first input: %d hosts, %d VMs, %d events, %d migrations", len(in.Hosts), len(in.VMs), len(in.Events), len(in.Migrations))
	}
	migration(10)
	if in := input(); len(in.Migrations) != 0 {
		t.Errorf("a migration without its event read already: the full list was re-read")
	}
	event("00000000000000000011-migration-mig-1", "transferring")
	in := input()
	if len(in.Events) != 2 || len(in.Migrations) != 1 || in.Migrations[0].GetTransferredBytes() != 10 {
		t.Fatalf("after a new event: %d events, migrations %v", len(in.Events), in.Migrations)
	}
	migration(60) // progress: no event
	if in := input(); len(in.Migrations) != 1 || in.Migrations[0].GetTransferredBytes() != 60 || in.Migrations[0].GetStatus() != "running" {
		t.Errorf("the live migration's progress not re-read: %v", in.Migrations)
	}
	d.shareFor = time.Hour
	migration(90)
	if in := input(); in.Migrations[0].GetTransferredBytes() != 60 {
		t.Errorf("read again within shareFor: %v", in.Migrations)
	}
}

// TestDashboardSnapshotServed: the server serves /ui/api/snapshot from the
// store, and a plot of an unknown migration is 404.
func TestDashboardSnapshotServed(t *testing.T) {
	s, _ := newTestServer(t)
	srv := httptest.NewServer(s.Handler())
	defer srv.Close()
	resp, err := srv.Client().Get(srv.URL + "/ui/api/snapshot")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	var sn dashboard.Snapshot
	if err := json.Unmarshal(b, &sn); err != nil || resp.StatusCode != 200 || len(sn.Hosts) != 2 || sn.Hosts[0].Name != "h1" || len(sn.VMs) != 1 || sn.VMs[0].Host != "h1" {
		t.Errorf("snapshot: %d %v %s", resp.StatusCode, err, b)
	}
	resp, err = srv.Client().Get(srv.URL + "/ui/api/plot?id=mig-nope")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 404 {
		t.Errorf("plot of an unknown migration: %d, want 404", resp.StatusCode)
	}
}
