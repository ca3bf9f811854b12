package server

import (
	"context"
	"strings"
	"testing"

	ferryv1 "github.com/ferryvm/ferry/gen/ferry/v1"
	"github.com/ferryvm/ferry/internal/planner"
)

// A cold migration's plan predicts the fixed parts plus the disks' data at
// the pair's learned rate (capped by --bandwidth); a stopped VM has no
// downtime; without local disks no link figure is needed.
func TestColdPlan(t *testing.T) {
	s := &Server{}
	src, dst := &ferryv1.Host{Name: "h1"}, &ferryv1.Host{Name: "h2"}
	s.bw.observe("h1", "h2", 100) // a past migration h1 → h2 reached 100 MiB/s
	disks := []*ferryv1.MigrationDisk{{Name: "data", AllocatedBytes: 100 << 20}, {Name: "logs", AllocatedBytes: 100 << 20}}
	ctx := context.Background()

	plan := s.coldPlan(ctx, &ferryv1.VM{State: "running"}, src, dst, disks, &ferryv1.MigrationOptions{})
	p := predictionFor(plan, "cold")
	down := int64((planner.ColdOffSeconds + planner.ColdDiskOffSeconds + 2) * 1000)
	want := down + int64((planner.ColdPowerOffSeconds+planner.ColdDiskPowerOffSeconds)*1000)
	if p == nil || p.TotalMs != want || p.DowntimeMs != down || p.Bytes != 200<<20 || plan.Choice != "cold" || plan.Inputs.DiskBytes != 200<<20 {
		t.Fatalf("running, 200 MiB at 100 MiB/s: plan %v", plan)
	}

	plan = s.coldPlan(ctx, &ferryv1.VM{State: "stopped"}, src, dst, disks, &ferryv1.MigrationOptions{BandwidthMibps: 50})
	p = predictionFor(plan, "cold")
	want = int64((planner.ColdOffSeconds + planner.ColdDiskOffSeconds + 4 + planner.ColdPowerOffSeconds + planner.ColdDiskPowerOffSeconds) * 1000)
	if p == nil || p.TotalMs != want || p.DowntimeMs != 0 || !strings.Contains(plan.Inputs.BandwidthSource, "capped by --bandwidth 50") {
		t.Fatalf("stopped, capped at 50 MiB/s: plan %v", plan)
	}

	plan = s.coldPlan(ctx, &ferryv1.VM{State: "running"}, &ferryv1.Host{Name: "h3"}, dst, nil, &ferryv1.MigrationOptions{})
	if p := predictionFor(plan, "cold"); p == nil || p.TotalMs != int64((planner.ColdOffSeconds+planner.ColdPowerOffSeconds)*1000) || plan.Inputs.BandwidthMibps != 0 {
		t.Fatalf("no disks, unknown pair: plan %v", plan)
	}
}
