package server

import (
	"context"
	"io"
	"net/http/httptest"
	"testing"
	"time"

	"connectrpc.com/connect"
	ferryv1 "github.com/ferryvm/ferry/gen/ferry/v1"
	"github.com/ferryvm/ferry/internal/migration/core"
	"github.com/ferryvm/ferry/internal/policy"
	"github.com/ferryvm/ferry/internal/store"
)

// TestMigrateWithoutTheEngineChangesNothing: a replica whose engine does
// not run (not the leader, or stopping) refuses a migration as
// Unavailable and leaves the VM record unlocked and unrecorded.
func TestMigrateWithoutTheEngineChangesNothing(t *testing.T) {
	s, st := newTestServer(t)
	ctx := context.Background()
	_, err := (&migrationService{s}).Migrate(ctx, connect.NewRequest(&ferryv1.MigrateRequest{Vm: "web", To: "h2",
		Options: &ferryv1.MigrationOptions{Strategy: "cold"}}))
	if connect.CodeOf(err) != connect.CodeUnavailable {
		t.Fatalf("err = %v, want Unavailable (the engine is not running)", err)
	}
	vm, _ := st.GetVM(ctx, "web")
	if vm.State != "running" || vm.MigrationId != "" || vm.Host != "h1" {
		t.Errorf("VM record after the refusal: %v", vm)
	}
	if ms, _ := st.ListMigrations(ctx); len(ms) != 0 {
		t.Errorf("refused migration recorded: %v", ms)
	}
}

// TestRunEngineRecordsAndRendersAMigration: with the engine running, a
// cold migration (its agents unreachable here) is recorded in the new
// record type and its report is rendered from the live engine and from the
// stored record.
func TestRunEngineRecordsAndRendersAMigration(t *testing.T) {
	s, st := newTestServer(t)
	h := runTestEngine(t, s)
	resp := migrateColdWebToH2(t, h)
	m := resp.Msg.Migration
	if m.Id == "" || m.Status != "running" || m.Strategy != "cold" {
		t.Fatalf("started migration: %v", m)
	}
	pr, err := st.GetMigration(context.Background(), m.Id)
	if err != nil || pr.GetVersion() != core.BaseVersion || pr.GetReport().GetId() != m.Id {
		t.Fatalf("stored record: %v (err %v), want a version %d record with its report", pr, err, core.BaseVersion)
	}
	got, err := h.GetMigration(context.Background(), connect.NewRequest(&ferryv1.GetMigrationRequest{Id: m.Id}))
	if err != nil || got.Msg.Migration.Vm != "web" || got.Msg.Migration.From != "h1" {
		t.Fatalf("get migration: %v %v", got, err)
	}
	list, err := h.ListMigrations(context.Background(), connect.NewRequest(&ferryv1.ListMigrationsRequest{}))
	if err != nil || len(list.Msg.Migrations) != 1 {
		t.Fatalf("list migrations: %v %v", list, err)
	}
	if m.Transport != "tls" || m.GetOptions().GetInsecureTransport() {
		t.Errorf("transport %q (insecure option %v), want tls by default", m.Transport, m.GetOptions().GetInsecureTransport())
	}
}

// The cluster policy insecureTransport: true makes every migration
// plaintext, and its report says so.
func TestClusterPolicyInsecureTransport(t *testing.T) {
	s, st := newTestServer(t)
	if err := st.(*store.Etcd).PutPolicies(context.Background(), policy.Set{Cluster: policy.Policy{InsecureTransport: true}}); err != nil {
		t.Fatal(err)
	}
	h := runTestEngine(t, s)
	resp := migrateColdWebToH2(t, h)
	if m := resp.Msg.Migration; m.Transport != "plain" || !m.GetOptions().GetInsecureTransport() {
		t.Errorf("transport %q (insecure option %v), want plain by the cluster policy", m.Transport, m.GetOptions().GetInsecureTransport())
	}
}

// runTestEngine runs s's migration engine until the test ends and
// returns its migration service.
func runTestEngine(t *testing.T, s *Server) *migrationService {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.RunEngine(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	return &migrationService{s}
}

// migrateColdWebToH2 starts a cold migration of VM web to h2, retried
// for up to a second while the engine is not yet running.
func migrateColdWebToH2(t *testing.T, h *migrationService) *connect.Response[ferryv1.MigrateResponse] {
	t.Helper()
	var resp *connect.Response[ferryv1.MigrateResponse]
	var err error
	for i := 0; i < 100; i++ { // RunEngine starts asynchronously
		resp, err = h.Migrate(context.Background(), connect.NewRequest(&ferryv1.MigrateRequest{Vm: "web", To: "h2",
			Options: &ferryv1.MigrationOptions{Strategy: "cold"}}))
		if connect.CodeOf(err) != connect.CodeUnavailable {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err != nil {
		t.Fatal(err)
	}
	return resp
}

// scrapeMetrics returns the text s's /metrics serves.
func scrapeMetrics(t *testing.T, s *Server) string {
	t.Helper()
	srv := httptest.NewServer(s.Handler())
	defer srv.Close()
	resp, err := srv.Client().Get(srv.URL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	return string(body)
}
