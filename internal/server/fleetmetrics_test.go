package server

import (
	"context"
	"strconv"
	"strings"
	"testing"
	"time"

	ferryv1 "github.com/ferryvm/ferry/gen/ferry/v1"
	"github.com/ferryvm/ferry/internal/store"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// TestFleetMetrics: /metrics scraped with a host in maintenance (its
// evacuation running: one VM moved, one migrating, one unplaced) and a
// degraded host shows each host's health verdict and maintenance, the
// evacuation's VMs by status with its ETA and time so far, and the
// balancer's last plan (its recommendations and imbalance).
func TestFleetMetrics(t *testing.T) {
	s, st := newTestServer(t)
	ctx := context.Background()
	if err := st.PutHost(ctx, &ferryv1.Host{Name: "h3", Address: "unix:///nonexistent/h3", Health: "degraded", HealthDetail: "disk full",
		Capacity: &ferryv1.HostCapacity{Cpus: 2, MemoryMib: 4096}}, time.Minute); err != nil {
		t.Fatal(err)
	}
	if err := st.PutHost(ctx, &ferryv1.Host{Name: "h4", Address: "unix:///nonexistent/h4", MigrationIp: "198.18.0.10",
		Capacity: &ferryv1.HostCapacity{Cpus: 2, MemoryMib: 4096}}, time.Minute); err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{"big1", "big2"} {
		if err := st.CreateVM(ctx, &ferryv1.VM{Spec: &ferryv1.VMSpec{Name: n, Vcpus: 1, MemoryMib: 1536}, Host: "h1", State: "running", Generation: 1}); err != nil {
			t.Fatal(err)
		}
	}
	if err := st.(*store.Etcd).PutEvacuation(ctx, &ferryv1.Evacuation{Host: "h2", Reason: "manual", State: "running", PredictedEtaMs: 12500,
		StartedAt: timestamppb.New(time.Now().Add(-4 * time.Second)), Items: []*ferryv1.EvacuationItem{
			{Vm: "a", Status: "completed"}, {Vm: "b", Status: "migrating", Progress: 0.5}, {Vm: "c", Status: "unplaced"}}}); err != nil {
		t.Fatal(err)
	}
	plan, _, err := s.balancer.Plan(ctx, false, false)
	if err != nil {
		t.Fatal(err)
	}
	if plan.GetImbalanceBefore() < 0.3 {
		t.Errorf("imbalance %v with 3 GiB of VMs on h1 and none on h4: want about 0.4", plan.GetImbalanceBefore())
	}
	text := scrapeMetrics(t, s)
	for _, want := range []string{
		`ferry_host_health{health="healthy",host="h1"} 1`,
		`ferry_host_health{health="degraded",host="h1"} 0`,
		`ferry_host_health{health="degraded",host="h3"} 1`,
		`ferry_host_health{health="healthy",host="h3"} 0`,
		`ferry_host_maintenance{host="h1"} 0`,
		`ferry_host_maintenance{host="h2"} 1`,
		`ferry_evacuation_vms{host="h2",status="completed"} 1`,
		`ferry_evacuation_vms{host="h2",status="migrating"} 1`,
		`ferry_evacuation_vms{host="h2",status="unplaced"} 1`,
		`ferry_evacuation_vms{host="h2",status="failed"} 0`,
		`ferry_evacuation_running{host="h2",reason="manual"} 1`,
		`ferry_evacuation_predicted_eta_seconds{host="h2"} 12.5`,
		`ferry_balancer_recommendations ` + strconv.Itoa(len(plan.GetProposals())),
		`ferry_balancer_imbalance{when="before"} ` + strconv.FormatFloat(plan.GetImbalanceBefore(), 'g', -1, 64),
		`ferry_balancer_imbalance{when="after"} `,
	} {
		if !strings.Contains(text, want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
	if !strings.Contains(text, `ferry_evacuation_elapsed_seconds{host="h2"} 4.`) {
		t.Errorf("/metrics lacks the evacuation's 4 s so far")
	}
	t.Logf("balancer plan: %d proposals, imbalance %.3f → %.3f (%s)", len(plan.GetProposals()), plan.GetImbalanceBefore(), plan.GetImbalanceAfter(), plan.GetWhy())
}
