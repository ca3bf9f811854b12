package server

import (
	"context"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	statev1 "github.com/ferryvm/ferry/gen/ferry/state/v1"
	ferryv1 "github.com/ferryvm/ferry/gen/ferry/v1"
	"github.com/ferryvm/ferry/internal/policy"
	"github.com/ferryvm/ferry/internal/store"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// putInFlight records a migration in flight from..to (no engine drives it:
// it only occupies a slot).
func putInFlight(t *testing.T, st store.Store, id, from, to string, state string, mibps int64) {
	t.Helper()
	pr := &statev1.MigrationRecord{Version: 1, Id: id, Vm: "other-" + id, From: from, To: to, Strategy: "precopy", State: state,
		Report: &ferryv1.Migration{Id: id, Options: &ferryv1.MigrationOptions{BandwidthMibps: mibps}}}
	if err := st.PutMigration(context.Background(), pr); err != nil {
		t.Fatal(err)
	}
}

func putPolicies(t *testing.T, st store.Store, set policy.Set) {
	t.Helper()
	if err := st.(policyStore).PutPolicies(context.Background(), set); err != nil {
		t.Fatal(err)
	}
}

// TestManualMigrateCountsAgainstLimits: ferry migrate is refused when the
// policy's per-source limit is taken by migrations in flight, with an
// error naming the limit, what holds it and how to wait or override;
// --ignore-limits passes the check; a finished migration frees its slot.
func TestManualMigrateCountsAgainstLimits(t *testing.T) {
	s, st := newTestServer(t)
	ctx := context.Background()
	putPolicies(t, st, policy.Set{Cluster: policy.Policy{MaxParallelPerSource: 1}})
	putInFlight(t, st, "mig-busy", "h1", "h9", "transferring", 0)
	h := &migrationService{s}
	req := &ferryv1.MigrateRequest{Vm: "web", To: "h2", Options: &ferryv1.MigrationOptions{Strategy: "precopy"}}
	_, err := h.Migrate(ctx, connect.NewRequest(req))
	if connect.CodeOf(err) != connect.CodeResourceExhausted || !isLimit(err) {
		t.Fatalf("err = %v (code %v), want ResourceExhausted wrapping admit.ErrLimit", err, connect.CodeOf(err))
	}
	for _, want := range []string{"maxParallelPerSource = 1", "out of host h1", "mig-busy", "--wait-limits", "--ignore-limits"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("refusal %q does not say %q", err, want)
		}
	}
	if vm, _ := st.GetVM(ctx, "web"); vm.State != "running" || vm.MigrationId != "" {
		t.Errorf("a refused migration changed the VM: %v", vm)
	}
	// Past the limit with --ignore-limits: refused later, for something else
	// (no engine runs in this test).
	req.Options.IgnoreLimits = true
	if _, err := h.Migrate(ctx, connect.NewRequest(req)); err == nil || isLimit(err) {
		t.Errorf("with ignore_limits: err = %v, want past the limit check", err)
	}
	// The slot frees when the other migration ends.
	req.Options.IgnoreLimits = false
	putInFlight(t, st, "mig-busy", "h1", "h9", "completed", 0)
	if _, err := h.Migrate(ctx, connect.NewRequest(req)); err == nil || isLimit(err) {
		t.Errorf("after the other ended: err = %v, want past the limit check", err)
	}
	// A dry run only plans: never refused for a limit.
	putInFlight(t, st, "mig-busy2", "h1", "h9", "transferring", 0)
	req.DryRun = true
	if _, err := h.Migrate(ctx, connect.NewRequest(req)); isLimit(err) {
		t.Errorf("dry run: err = %v, want no limit refusal", err)
	}
}

// TestBandwidthShares: with bandwidthPerHost the migrations touching a
// host share it (each one's share is what the engine gives QEMU as
// max-bandwidth), re-shared when one ends; a migration's own cap is kept.
func TestBandwidthShares(t *testing.T) {
	s, st := newTestServer(t)
	ctx := context.Background()
	putPolicies(t, st, policy.Set{Cluster: policy.Policy{MaxParallelPerSource: 4, MaxParallelCluster: 8, BandwidthPerHost: 100 << 20}})
	putInFlight(t, st, "mig-a", "h1", "h2", "transferring", 0)
	putInFlight(t, st, "mig-b", "h1", "h3", "transferring", 0)
	putInFlight(t, st, "mig-c", "h4", "h5", "transferring", 30)
	if err := s.reshare(ctx); err != nil {
		t.Fatal(err)
	}
	for id, want := range map[string]int64{"mig-a": 50 << 20, "mig-b": 50 << 20, "mig-c": 30 << 20} {
		if got := s.bandwidthShare(id); got != want {
			t.Errorf("share of %s = %d, want %d", id, got, want)
		}
	}
	putInFlight(t, st, "mig-b", "h1", "h3", "completed", 0)
	if err := s.reshare(ctx); err != nil {
		t.Fatal(err)
	}
	if got := s.bandwidthShare("mig-a"); got != 100<<20 {
		t.Errorf("share of mig-a after mig-b ended = %d, want all of the host's 100 MiB/s", got)
	}
	if got := s.bandwidthShare("mig-b"); got != 0 {
		t.Errorf("an ended migration keeps a share: %d", got)
	}
}

// TestApplyPolicy: what a request leaves unset comes from the VM's
// effective policy; the timeouts only when a policy sets them.
func TestApplyPolicy(t *testing.T) {
	vm := &ferryv1.VM{Spec: &ferryv1.VMSpec{Name: "db", MemoryMib: 2048, Labels: map[string]string{"tier": "gold"}}}
	set := policy.Set{
		Cluster: policy.Policy{BandwidthPerMigration: 64 << 20, CompletionTimeoutPerGiB: 30 * time.Second},
		Labels:  []policy.LabelOverride{{Key: "tier", Value: "gold", Override: policy.Override{ProgressTimeout: ptrTo(7 * time.Second)}}},
	}
	opt := &ferryv1.MigrationOptions{}
	applyPolicy(set, vm, opt)
	if opt.BandwidthMibps != 64 || opt.TimeoutMs != 60_000 || opt.StallTimeoutMs != 7000 || opt.MaxDowntimeMs != 300 {
		t.Errorf("options = %v, want 64 MiB/s, 60 s (2 GiB x 30 s), stall 7 s, downtime 300 ms", opt)
	}
	// The request's own values win; no policy timeout leaves the server's default.
	opt = &ferryv1.MigrationOptions{BandwidthMibps: 10, TimeoutMs: 5000}
	applyPolicy(policy.Set{}, vm, opt)
	if opt.BandwidthMibps != 10 || opt.TimeoutMs != 5000 || opt.StallTimeoutMs != 0 {
		t.Errorf("options = %v, want the request's and no stall timeout", opt)
	}
}

func ptrTo[T any](v T) *T { return &v }

// TestDiskRoom: vm create's placement skips a host whose data directory
// lacks room for the new VM's local disks (and says so when none has it);
// a migration's preflight refuses such a destination, naming the figures.
func TestDiskRoom(t *testing.T) {
	s, st := newTestServer(t)
	ctx := context.Background()
	for name, free := range map[string]int64{"h1": 512 << 20, "h2": 8 << 30} {
		if err := st.PutHost(ctx, &ferryv1.Host{Name: name, Address: "unix:///nonexistent/" + name, MigrationIp: "198.18.0.9", State: "ready",
			Capacity: &ferryv1.HostCapacity{Cpus: 2, MemoryMib: 4096, DiskFreeBytes: free}}, time.Minute); err != nil {
			t.Fatal(err)
		}
	}
	sp := &ferryv1.VMSpec{Name: "big", Vcpus: 1, MemoryMib: 256, Disks: []*ferryv1.DiskSpec{{Size: "1GiB"}, {Path: "/shared/x.qcow2", Shared: true}}}
	if got := newDiskBytes(sp); got != 1<<30 {
		t.Fatalf("newDiskBytes = %d, want the 1 GiB created disk only", got)
	}
	h, err := s.pickHost(ctx, sp, "", nil)
	if err != nil || h.Name != "h2" {
		t.Fatalf("placement chose %v (%v), want h2: h1 has 512 MiB free", h.GetName(), err)
	}
	if _, err := s.pickHost(ctx, sp, "", []string{"h2"}); connect.CodeOf(err) != connect.CodeResourceExhausted || !strings.Contains(err.Error(), "h1: 512 MiB free in its data directory, need 1024 MiB") {
		t.Fatalf("without h2: err = %v, want ResourceExhausted naming h1's free space", err)
	}
	dst, _ := st.GetHost(ctx, "h1")
	err = checkDiskRoom(&ferryv1.VM{Spec: sp}, dst, []*ferryv1.MigrationDisk{{Name: "disk0", AllocatedBytes: 300 << 20}})
	if connect.CodeOf(err) != connect.CodeResourceExhausted || !strings.Contains(err.Error(), "destination host h1 cannot take VM big's 1 local disk(s): 512 MiB free in its data directory, need 300 MiB for the local disks + 256 MiB margin") {
		t.Fatalf("preflight: err = %v, want a refusal with the figures", err)
	}
	if err := checkDiskRoom(&ferryv1.VM{Spec: sp}, dst, []*ferryv1.MigrationDisk{{Name: "disk0", AllocatedBytes: 100 << 20}}); err != nil {
		t.Fatalf("100 MiB + margin into 512 MiB: %v, want room", err)
	}
}

// TestOverheadsLearned: the fixed time a migration takes besides QEMU's
// own total is learned from completed live migrations (QEMU start times
// before any), and only from those.
func TestOverheadsLearned(t *testing.T) {
	var o overheads
	if o.setup() != 0 {
		t.Fatal("a setup before any observation")
	}
	o.observeStart(800 * time.Millisecond)
	if got := o.setup(); got != 800*time.Millisecond {
		t.Errorf("prior from QEMU starts = %v, want 800ms", got)
	}
	at := time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)
	done := func(status, strategy string, wall time.Duration, qemuMs int64) *ferryv1.Migration {
		return &ferryv1.Migration{Status: status, Strategy: strategy, StartedAt: timestamppb.New(at), FinishedAt: timestamppb.New(at.Add(wall)), TotalMs: qemuMs}
	}
	o.observe(done("failed", "precopy", 9*time.Second, 1000))
	o.observe(done("completed", "cold", 9*time.Second, 1000))
	if got := o.setup(); got != 800*time.Millisecond {
		t.Errorf("after a failed and a cold migration: %v, want the prior", got)
	}
	o.observe(done("completed", "precopy", 2500*time.Millisecond, 1000))
	o.observe(done("completed", "precopy", 3500*time.Millisecond, 1000))
	if got := o.setup(); got != 1800*time.Millisecond { // 1.5 s, then 0.3×2.5 + 0.7×1.5
		t.Errorf("learned = %v, want 1.8s", got)
	}
}
