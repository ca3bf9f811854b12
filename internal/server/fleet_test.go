package server

import (
	"context"
	"strings"
	"testing"

	"connectrpc.com/connect"
	ferryv1 "github.com/ferryvm/ferry/gen/ferry/v1"
	"github.com/ferryvm/ferry/internal/store"
)

// TestMaintenanceMakesAHostUnschedulable: a host with an evacuation
// record is marked on read, skipped by placement and refused as a
// migration destination; the exit clears it.
func TestMaintenanceMakesAHostUnschedulable(t *testing.T) {
	s, st := newTestServer(t)
	ctx := context.Background()
	es := st.(*store.Etcd)
	if err := es.PutEvacuation(ctx, &ferryv1.Evacuation{Host: "h2", State: "completed"}); err != nil {
		t.Fatal(err)
	}
	h, err := st.GetHost(ctx, "h2")
	if err != nil || !h.Maintenance {
		t.Fatalf("h2 maintenance = %v, %v", h.GetMaintenance(), err)
	}
	if _, err := s.pickHost(ctx, &ferryv1.VMSpec{Name: "x", Vcpus: 1, MemoryMib: 64}, "h2", nil); err == nil || !strings.Contains(err.Error(), "maintenance") {
		t.Errorf("pinned create on h2: %v", err)
	}
	got, err := s.pickHost(ctx, &ferryv1.VMSpec{Name: "x", Vcpus: 1, MemoryMib: 64}, "", nil)
	if err != nil || got.Name != "h1" {
		t.Errorf("placement chose %v, %v; want h1", got.GetName(), err)
	}
	_, err = (&migrationService{s}).Migrate(ctx, connect.NewRequest(&ferryv1.MigrateRequest{Vm: "web", To: "h2"}))
	if connect.CodeOf(err) != connect.CodeFailedPrecondition || !strings.Contains(err.Error(), "maintenance") {
		t.Errorf("migrate to h2 in maintenance: %v", err)
	}
	f := &fleetService{s}
	if _, err := f.ExitMaintenance(ctx, connect.NewRequest(&ferryv1.ExitMaintenanceRequest{Host: "h2"})); err != nil {
		t.Fatal(err)
	}
	if h, _ := st.GetHost(ctx, "h2"); h.Maintenance {
		t.Error("still in maintenance after exit")
	}
	if _, err := f.ExitMaintenance(ctx, connect.NewRequest(&ferryv1.ExitMaintenanceRequest{Host: "h2"})); connect.CodeOf(err) != connect.CodeNotFound {
		t.Errorf("second exit: %v, want not found", err)
	}
	if _, err := f.EnterMaintenance(ctx, connect.NewRequest(&ferryv1.EnterMaintenanceRequest{Host: "h9"})); connect.CodeOf(err) != connect.CodeNotFound {
		t.Errorf("enter on an unknown host: %v", err)
	}
}

// TestAntiAffinityPlacement: a VM is not placed beside one of its group.
func TestAntiAffinityPlacement(t *testing.T) {
	s, st := newTestServer(t)
	ctx := context.Background()
	if _, err := st.UpdateVM(ctx, "web", false, func(v *ferryv1.VM) error {
		v.Spec.AntiAffinity = []string{"db"}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	// h1 runs web (group db) and has more room left than h2 would after
	// a big allocation; the db VM must still go to h2.
	got, err := s.pickHost(ctx, &ferryv1.VMSpec{Name: "db2", Vcpus: 1, MemoryMib: 64, AntiAffinity: []string{"db"}}, "", nil)
	if err != nil || got.Name != "h2" {
		t.Fatalf("placed on %v, %v; want h2", got.GetName(), err)
	}
}

// TestPoliciesRoundTripAndRefuseBadInput: ferry policy set validates
// and names the bad field.
func TestPoliciesRoundTripAndRefuseBadInput(t *testing.T) {
	s, _ := newTestServer(t)
	ctx := context.Background()
	f := &fleetService{s}
	if _, err := f.SetPolicies(ctx, connect.NewRequest(&ferryv1.SetPoliciesRequest{Json: `{"cluster":{"balancer":{"mode":"sometimes"}}}`})); connect.CodeOf(err) != connect.CodeInvalidArgument || !strings.Contains(err.Error(), "balancer.mode") {
		t.Errorf("bad mode: %v", err)
	}
	if _, err := f.SetPolicies(ctx, connect.NewRequest(&ferryv1.SetPoliciesRequest{Json: `{"cluster":{"maxParallelPerSource":3,"onDegraded":"none"}}`})); err != nil {
		t.Fatal(err)
	}
	resp, err := f.GetPolicies(ctx, connect.NewRequest(&ferryv1.GetPoliciesRequest{}))
	if err != nil || !strings.Contains(resp.Msg.Json, `"maxParallelPerSource": 3`) || !strings.Contains(resp.Msg.Json, `"onDegraded": "none"`) {
		t.Fatalf("get: %v %v", resp, err)
	}
}
