package server

import (
	"context"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	ferryv1 "github.com/ferryvm/ferry/gen/ferry/v1"
	"github.com/ferryvm/ferry/internal/etcdembed/etcdtest"
	"github.com/ferryvm/ferry/internal/pki"
	"github.com/ferryvm/ferry/internal/store"
	"google.golang.org/protobuf/proto"
)

// newTestServer returns a Server over a real embedded etcd with two ready
// hosts and one running VM on h1 (no agents: only refusals are exercised).
func newTestServer(t *testing.T) (*Server, store.Store) {
	t.Helper()
	ctx := context.Background()
	st := etcdtest.Store(t, t.TempDir())
	for _, h := range []string{"h1", "h2"} {
		if err := st.PutHost(ctx, &ferryv1.Host{Name: h, Address: "unix:///nonexistent/" + h, MigrationIp: "198.18.0.9",
			Capacity: &ferryv1.HostCapacity{Cpus: 2, MemoryMib: 4096}, AgentFeatures: []string{pki.FeatureTLSStreams}}, time.Minute); err != nil {
			t.Fatal(err)
		}
	}
	vm := &ferryv1.VM{Spec: &ferryv1.VMSpec{Name: "web", Vcpus: 1, MemoryMib: 256, MaxDowntimeMs: 300}, Host: "h1", State: "running", Generation: 1}
	if err := st.CreateVM(ctx, vm); err != nil {
		t.Fatal(err)
	}
	return New(Config{Store: st}), st
}

// TestMigrateRefusalsChangeNothing: every request that cannot be carried
// out is refused with a clear message and a fitting code before anything
// is touched.
func TestMigrateRefusalsChangeNothing(t *testing.T) {
	s, st := newTestServer(t)
	ctx := context.Background()
	before, _ := st.GetVM(ctx, "web")
	h := &migrationService{s}
	tests := []struct {
		name string
		req  *ferryv1.MigrateRequest
		code connect.Code
		msg  string
	}{
		{"same host", &ferryv1.MigrateRequest{Vm: "web", To: "h1"}, connect.CodeInvalidArgument, "already on host h1"},
		{"unknown host", &ferryv1.MigrateRequest{Vm: "web", To: "h9"}, connect.CodeNotFound, `"h9" is not registered`},
		{"unknown VM", &ferryv1.MigrateRequest{Vm: "nope", To: "h2"}, connect.CodeNotFound, `VM "nope" not found`},
		{"bad strategy", &ferryv1.MigrateRequest{Vm: "web", To: "h2", Options: &ferryv1.MigrationOptions{Strategy: "teleport"}}, connect.CodeInvalidArgument, "strategy: must be"},
		{"postcopy forbidden", &ferryv1.MigrateRequest{Vm: "web", To: "h2", Options: &ferryv1.MigrationOptions{Strategy: "postcopy", NoPostcopy: true}}, connect.CodeInvalidArgument, "--no-postcopy forbids"},
		{"throttle forbidden", &ferryv1.MigrateRequest{Vm: "web", To: "h2", Options: &ferryv1.MigrationOptions{Strategy: "converge", NoThrottle: true}}, connect.CodeInvalidArgument, "--no-throttle forbids"},
		{"negative bandwidth", &ferryv1.MigrateRequest{Vm: "web", To: "h2", Options: &ferryv1.MigrationOptions{BandwidthMibps: -1}}, connect.CodeInvalidArgument, "bandwidth: must be >= 0"},
		{"downtime too long", &ferryv1.MigrateRequest{Vm: "web", To: "h2", Options: &ferryv1.MigrationOptions{MaxDowntimeMs: 61000}}, connect.CodeInvalidArgument, "max-downtime"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := h.Migrate(ctx, connect.NewRequest(tc.req))
			if connect.CodeOf(err) != tc.code || err == nil || !strings.Contains(err.Error(), tc.msg) {
				t.Fatalf("err = %v (code %v), want code %v containing %q", err, connect.CodeOf(err), tc.code, tc.msg)
			}
		})
	}
	after, _ := st.GetVM(ctx, "web")
	if !proto.Equal(before, after) {
		t.Errorf("a refused migration changed the VM record:\n%v\n%v", before, after)
	}
	if ms, _ := st.ListMigrations(ctx); len(ms) != 0 {
		t.Errorf("refused migrations were recorded: %v", ms)
	}
}

// TestMigrateAutoWithoutAgentsFailsCleanly: auto must measure on the
// agents; when it cannot, the request fails and nothing is locked.
func TestMigrateAutoWithoutAgentsFailsCleanly(t *testing.T) {
	s, st := newTestServer(t)
	ctx := context.Background()
	_, err := (&migrationService{s}).Migrate(ctx, connect.NewRequest(&ferryv1.MigrateRequest{Vm: "web", To: "h2"}))
	if connect.CodeOf(err) != connect.CodeUnavailable || !strings.Contains(err.Error(), "measure VM web on h1") {
		t.Fatalf("err = %v, want Unavailable naming the measurement", err)
	}
	vm, _ := st.GetVM(ctx, "web")
	if vm.State != "running" || vm.MigrationId != "" || vm.Generation != 1 {
		t.Errorf("VM record after a failed plan: %v", vm)
	}
}

func TestQEMUKnobs(t *testing.T) {
	m := &ferryv1.Migration{Options: &ferryv1.MigrationOptions{MaxDowntimeMs: 300}}
	if got := qemuDowntimeLimit(m); got != 300 {
		t.Errorf("downtime limit without a plan = %d, want the target 300", got)
	}
	m.Predicted = &ferryv1.StrategyPrediction{DowntimeLimitMs: 270}
	if got := qemuDowntimeLimit(m); got != 270 {
		t.Errorf("downtime limit with a plan = %d, want the planner's 270", got)
	}
	m.Plan = &ferryv1.Plan{Inputs: &ferryv1.PlanInputs{BandwidthMibps: 100}}
	if got := postcopyBandwidth(m, unlimitedBandwidth); got != 80<<20 {
		t.Errorf("post-copy bandwidth = %d, want 80%% of the measured 100 MiB/s", got)
	}
	if got := postcopyBandwidth(m, 50<<20); got != 40<<20 {
		t.Errorf("post-copy bandwidth under a 50 MiB/s cap = %d, want 40 MiB/s", got)
	}
}
