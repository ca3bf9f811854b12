package dashboard

import (
	"fmt"
	"testing"
	"time"

	ferryv1 "github.com/ferryvm/ferry/gen/ferry/v1"
	"google.golang.org/protobuf/types/known/timestamppb"
)

var t0 = time.Date(2026, 12, 1, 3, 0, 0, 0, time.UTC)

func ts(d time.Duration) *timestamppb.Timestamp { return timestamppb.New(t0.Add(d)) }

// TestBuild: hosts and VMs sorted by name with their capacity bars, uptime
// and heartbeat age; in-flight migrations apart from finished ones (newest
// first) with progress, elapsed time and predicted vs actual; events newest
// first and bounded.
func TestBuild(t *testing.T) {
	now := t0.Add(time.Minute)
	in := Input{
		Hosts: []*ferryv1.Host{
			{Name: "h2", State: "unreachable", Capacity: &ferryv1.HostCapacity{Cpus: 4, MemoryMib: 8192}},
			{Name: "h1", State: "ready", LastSeen: ts(58 * time.Second), Qemu: &ferryv1.HostQEMU{Version: "10.0.2"},
				Capacity: &ferryv1.HostCapacity{Cpus: 4, MemoryMib: 8192, Vms: 2, AllocatedVcpus: 6, AllocatedMemoryMib: 2048}},
		},
		VMs: []*ferryv1.VM{
			{Spec: &ferryv1.VMSpec{Name: "web", Vcpus: 2, MemoryMib: 1024}, Host: "h1", State: "migrating", StartedAt: ts(0), MigrationId: "mig-2"},
			{Spec: &ferryv1.VMSpec{Name: "db", Vcpus: 4, MemoryMib: 1024}, Host: "h1", State: "stopped", StartedAt: ts(0)},
		},
		Migrations: []*ferryv1.Migration{
			{Id: "mig-0", Vm: "db", Status: "completed", StartedAt: ts(0), FinishedAt: ts(2 * time.Second), TotalMs: 2000,
				TransferredBytes: 100, DowntimePhases: &ferryv1.DowntimePhases{TotalMs: 40, SwitchoverMs: 7}, Predicted: &ferryv1.StrategyPrediction{TotalMs: 1800, DowntimeMs: 30, Converges: true}},
			{Id: "mig-1", Vm: "db", Status: "failed", Predicted: &ferryv1.StrategyPrediction{Strategy: "precopy", Reason: "never converges"},
				Plan: &ferryv1.Plan{Inputs: &ferryv1.PlanInputs{DirtyRateMibps: 9, BandwidthMibps: 8}}, StartedAt: ts(10 * time.Second), FinishedAt: ts(11 * time.Second), Error: "link down", RemainingBytes: 50, TransferredBytes: 50},
			{Id: "mig-2", Vm: "web", Status: "running", State: "transferring", StartedAt: ts(50 * time.Second), TransferredBytes: 300, RemainingBytes: 100, DirtyRateMibps: 12.5},
		},
	}
	for i := range MaxEvents + 5 {
		in.Events = append(in.Events, &ferryv1.Event{Id: fmt.Sprintf("%03d", i), Time: ts(time.Duration(i) * time.Second), Kind: "vm", Name: "web", ToState: "running"})
	}
	s := Build(in, now)
	if len(s.Hosts) != 2 || s.Hosts[0].Name != "h1" || s.Hosts[0].CPUUse != 1.5 || s.Hosts[0].MemoryUse != 0.25 || s.Hosts[0].HeartbeatAgeSeconds != 2 || s.Hosts[0].QEMU != "10.0.2" {
		t.Errorf("hosts %+v", s.Hosts)
	}
	if s.Hosts[1].HeartbeatAgeSeconds != -1 {
		t.Errorf("a host never heard from: heartbeat age %v, want -1", s.Hosts[1].HeartbeatAgeSeconds)
	}
	if len(s.VMs) != 2 || s.VMs[0].Name != "db" || s.VMs[0].UptimeSeconds != 0 || s.VMs[1].UptimeSeconds != 60 || s.VMs[1].MigrationID != "mig-2" {
		t.Errorf("VMs %+v", s.VMs)
	}
	if len(s.Live) != 1 || s.Live[0].ID != "mig-2" || s.Live[0].Progress != 0.75 || s.Live[0].ElapsedMs != 10000 || s.Live[0].DirtyRateMiBps != 12.5 {
		t.Errorf("live %+v", s.Live)
	}
	if len(s.Finished) != 2 || s.Finished[0].ID != "mig-1" || s.Finished[0].Progress != 0.5 || s.Finished[1].Progress != 1 ||
		s.Finished[1].DowntimeMs != 40 || s.Finished[1].Phases.SwitchoverMs != 7 || s.Finished[1].PredictedDowntimeMs != 30 || s.Finished[1].ElapsedMs != 2000 || s.Finished[1].PredictedTotalMs != 1800 {
		t.Errorf("finished %+v", s.Finished)
	}
	if f := s.Finished[0]; !f.Predicted || f.PredictedConverges || f.PredictionReason != "never converges" || f.PlannedDirtyRateMiBps != 9 || f.PlannedBandwidthMiBps != 8 {
		t.Errorf("a non-converging prediction: %+v, want it marked as such with its reason and the plan's inputs", f)
	}
	if f := s.Finished[1]; !f.Predicted || !f.PredictedConverges {
		t.Errorf("a converging prediction: %+v", f)
	}
	if len(s.Events) != MaxEvents || s.Events[0].ID != fmt.Sprintf("%03d", MaxEvents+4) {
		t.Errorf("%d events, first %q; want the newest %d, newest first", len(s.Events), s.Events[0].ID, MaxEvents)
	}
	empty := Build(Input{}, now)
	if empty.Hosts == nil || empty.Live == nil || empty.Events == nil {
		t.Errorf("an empty cluster's lists must be empty, not null in JSON: %+v", empty)
	}
}

// TestBuildFinishedBounded: at most MaxFinished finished migrations, the
// newest.
func TestBuildFinishedBounded(t *testing.T) {
	var in Input
	for i := range MaxFinished + 3 {
		in.Migrations = append(in.Migrations, &ferryv1.Migration{Id: fmt.Sprintf("mig-%d", i), Status: "completed", FinishedAt: ts(time.Duration(i) * time.Second)})
	}
	s := Build(in, t0)
	if len(s.Finished) != MaxFinished || s.Finished[0].ID != fmt.Sprintf("mig-%d", MaxFinished+2) {
		t.Errorf("%d finished, first %s", len(s.Finished), s.Finished[0].ID)
	}
}
