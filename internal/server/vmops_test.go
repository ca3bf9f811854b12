package server

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"
	agentv1 "github.com/ferryvm/ferry/gen/ferry/agent/v1"
	"github.com/ferryvm/ferry/gen/ferry/agent/v1/agentv1connect"
	ferryv1 "github.com/ferryvm/ferry/gen/ferry/v1"
	"github.com/ferryvm/ferry/internal/migration/core"
	"github.com/ferryvm/ferry/internal/placement"
	"github.com/ferryvm/ferry/internal/rpcaddr"
	"github.com/ferryvm/ferry/internal/store"
)

// fakeAgent is a fake agent (unit tests only): it records the calls it
// gets and runs "VMs" as entries of a map. startErr makes StartVM start
// the VM and then answer an error (a lost reply); deleteErrs fails that
// many DeleteVM calls first.
type fakeAgent struct {
	agentv1connect.UnimplementedAgentServiceHandler
	agentv1connect.UnimplementedMigrationAgentServiceHandler

	mu         sync.Mutex
	running    map[string]bool
	calls      []string
	startErr   error
	deleteErrs int
	startDelay time.Duration
}

func (f *fakeAgent) record(call string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, call)
}

func (f *fakeAgent) called(call string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	n := 0
	for _, c := range f.calls {
		if c == call {
			n++
		}
	}
	return n
}

func (f *fakeAgent) status(name string) *ferryv1.VMStatus {
	if f.running[name] {
		return &ferryv1.VMStatus{Name: name, State: "running", Pid: 4242}
	}
	return &ferryv1.VMStatus{Name: name, State: "stopped"}
}

func (f *fakeAgent) StartVM(_ context.Context, req *connect.Request[agentv1.AgentStartVMRequest]) (*connect.Response[agentv1.AgentStartVMResponse], error) {
	name := req.Msg.Spec.GetName()
	f.record("StartVM " + name)
	time.Sleep(f.startDelay)
	f.mu.Lock()
	defer f.mu.Unlock()
	f.running[name] = true
	if f.startErr != nil {
		return nil, connect.NewError(connect.CodeUnavailable, f.startErr)
	}
	return connect.NewResponse(&agentv1.AgentStartVMResponse{Status: f.status(name)}), nil
}

func (f *fakeAgent) StopVM(_ context.Context, req *connect.Request[agentv1.AgentStopVMRequest]) (*connect.Response[agentv1.AgentStopVMResponse], error) {
	f.record("StopVM " + req.Msg.Name)
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.running, req.Msg.Name)
	return connect.NewResponse(&agentv1.AgentStopVMResponse{Status: f.status(req.Msg.Name)}), nil
}

func (f *fakeAgent) DeleteVM(_ context.Context, req *connect.Request[agentv1.AgentDeleteVMRequest]) (*connect.Response[agentv1.AgentDeleteVMResponse], error) {
	f.record("DeleteVM " + req.Msg.Name)
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.deleteErrs != 0 {
		f.deleteErrs--
		return nil, connect.NewError(connect.CodeUnavailable, errors.New("fake: agent busy"))
	}
	delete(f.running, req.Msg.Name)
	return connect.NewResponse(&agentv1.AgentDeleteVMResponse{}), nil
}

func (f *fakeAgent) GetVM(_ context.Context, req *connect.Request[agentv1.AgentGetVMRequest]) (*connect.Response[agentv1.AgentGetVMResponse], error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if !f.running[req.Msg.Name] {
		return nil, connect.NewError(connect.CodeNotFound, fmt.Errorf("fake: no VM %s", req.Msg.Name))
	}
	return connect.NewResponse(&agentv1.AgentGetVMResponse{Status: f.status(req.Msg.Name)}), nil
}

func (f *fakeAgent) AbortIncoming(_ context.Context, req *connect.Request[agentv1.MigrationStepRequest]) (*connect.Response[agentv1.StepResponse], error) {
	f.record("AbortIncoming " + req.Msg.Name + " " + req.Msg.MigrationId)
	return connect.NewResponse(&agentv1.StepResponse{}), nil
}

// serveFakeAgent serves f on a unix socket and returns its address.
func serveFakeAgent(t *testing.T, f *fakeAgent) string {
	t.Helper()
	f.running = map[string]bool{}
	addr := "unix://" + filepath.Join(t.TempDir(), "agent.sock")
	l, err := rpcaddr.Listen(addr)
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.Handle(agentv1connect.NewAgentServiceHandler(f))
	mux.Handle(agentv1connect.NewMigrationAgentServiceHandler(f))
	hs := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = hs.Serve(l) }()
	t.Cleanup(func() { _ = hs.Close() })
	return addr
}

// newFakeAgentServer is newTestServer with fake agents on h1 and h2, each
// with room for memRoom VMs of 256 MiB.
func newFakeAgentServer(t *testing.T, memRoom int) (*Server, store.Store, *fakeAgent, *fakeAgent) {
	t.Helper()
	s, st := newTestServer(t)
	ctx := context.Background()
	a1, a2 := &fakeAgent{}, &fakeAgent{}
	for _, h := range []struct {
		name string
		a    *fakeAgent
	}{{"h1", a1}, {"h2", a2}} {
		if err := st.PutHost(ctx, &ferryv1.Host{Name: h.name, Address: serveFakeAgent(t, h.a), MigrationIp: "198.18.0.9",
			Capacity: &ferryv1.HostCapacity{Cpus: 2, MemoryMib: placement.ReservedMiB + int64(memRoom)*256}}, time.Minute); err != nil {
			t.Fatal(err)
		}
	}
	a1.running["web"] = true
	return s, st, a1, a2
}

func vmSpec(name string) *ferryv1.VMSpec {
	return &ferryv1.VMSpec{Name: name, Vcpus: 1, MemoryMib: 256, Accel: "tcg", Boot: &ferryv1.BootSpec{Kernel: "/k"}}
}

// putMigration stores a migration record with the given status and state.
func putMigration(t *testing.T, st store.Store, id, vm, from, to, status, state string) {
	t.Helper()
	_ = status // rendered from state
	r, err := core.New(id, vm, from, to, core.Strategy("precopy"), core.VMState("running"), 1,
		core.Options{StallTimeout: time.Second, Timeout: time.Minute, RecoveryWindow: time.Minute}, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	r.State = core.State(state)
	if err := st.PutMigration(context.Background(), core.ToProto(r)); err != nil {
		t.Fatal(err)
	}
}

func lockVMRecord(t *testing.T, st store.Store, name, id string) {
	t.Helper()
	if _, err := st.UpdateVM(context.Background(), name, false, func(v *ferryv1.VM) error {
		v.State, v.MigrationId = "migrating", id
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}

// TestVMOperationsRefusedOnlyWhileMigrationInFlight: with a migration
// record still running, stop/start/delete/migrate are refused naming it
// and `ferry migration cancel`, and nothing changes; once its record is
// terminal, the stale lock is cleared (the state read from the host, the
// destination asked to clean up) and the operation goes through.
func TestVMOperationsRefusedOnlyWhileMigrationInFlight(t *testing.T) {
	s, st, a1, a2 := newFakeAgentServer(t, 4)
	ctx := context.Background()
	v := &vmService{s}
	putMigration(t, st, "mig-live", "web", "h1", "h2", "running", "transferring")
	lockVMRecord(t, st, "web", "mig-live")
	before, _ := st.GetVM(ctx, "web")
	ops := map[string]func() error{
		"stop": func() error {
			_, err := v.StopVM(ctx, connect.NewRequest(&ferryv1.StopVMRequest{Name: "web"}))
			return err
		},
		"start": func() error {
			_, err := v.StartVM(ctx, connect.NewRequest(&ferryv1.StartVMRequest{Name: "web"}))
			return err
		},
		"delete": func() error {
			_, err := v.DeleteVM(ctx, connect.NewRequest(&ferryv1.DeleteVMRequest{Name: "web"}))
			return err
		},
		"migrate": func() error {
			_, err := (&migrationService{s}).Migrate(ctx, connect.NewRequest(&ferryv1.MigrateRequest{Vm: "web", To: "h2"}))
			return err
		},
	}
	for name, op := range ops {
		err := op()
		if connect.CodeOf(err) != connect.CodeFailedPrecondition || !strings.Contains(err.Error(), "mig-live") || !strings.Contains(err.Error(), "ferry migration cancel mig-live") {
			t.Errorf("%s during migration: %v, want FailedPrecondition naming mig-live and `ferry migration cancel mig-live`", name, err)
		}
	}
	if after, _ := st.GetVM(ctx, "web"); after.State != "migrating" || after.MigrationId != "mig-live" || after.Generation != before.Generation {
		t.Fatalf("refusals changed the record: %v", after)
	}

	// The migration failed but the VM was left locked.
	putMigration(t, st, "mig-live", "web", "h1", "h2", "failed", "failed")
	if _, err := v.StopVM(ctx, connect.NewRequest(&ferryv1.StopVMRequest{Name: "web", Force: true})); err != nil {
		t.Fatalf("stop after the migration failed: %v", err)
	}
	vm, _ := st.GetVM(ctx, "web")
	if vm.State != "stopped" || vm.MigrationId != "" || a1.called("StopVM web") != 1 {
		t.Fatalf("after stop: state %s migrationId %q, StopVM calls %d; want stopped, unlocked, 1", vm.State, vm.MigrationId, a1.called("StopVM web"))
	}
	if a2.called("AbortIncoming web mig-live") != 1 {
		t.Errorf("the failed migration's destination was not asked to clean up: calls %v", a2.calls)
	}

	// Start from a lock whose migration record is missing.
	lockVMRecord(t, st, "web", "mig-gone")
	if _, err := v.StartVM(ctx, connect.NewRequest(&ferryv1.StartVMRequest{Name: "web"})); err != nil {
		t.Fatalf("start with a lock on a missing migration: %v", err)
	}
	if vm, _ = st.GetVM(ctx, "web"); vm.State != "running" || vm.MigrationId != "" {
		t.Fatalf("after start: %v", vm)
	}

	// Migrate from a stale lock: past the lock it goes as far as planning
	// (the fake agents cannot measure), and leaves the record unlocked.
	lockVMRecord(t, st, "web", "mig-gone")
	_, err := (&migrationService{s}).Migrate(ctx, connect.NewRequest(&ferryv1.MigrateRequest{Vm: "web", To: "h2"}))
	if err == nil || strings.Contains(err.Error(), "being migrated") {
		t.Fatalf("migrate with a stale lock: %v; want it past the lock (failing at planning with fake agents)", err)
	}
	if vm, _ = st.GetVM(ctx, "web"); vm.State != "running" || vm.MigrationId != "" {
		t.Fatalf("after migrate attempt: %v", vm)
	}

	// Delete from a lock with `migrating` but no id at all.
	lockVMRecord(t, st, "web", "")
	if _, err := v.DeleteVM(ctx, connect.NewRequest(&ferryv1.DeleteVMRequest{Name: "web"})); err != nil {
		t.Fatalf("delete with a stale lock: %v", err)
	}
	if _, err := st.GetVM(ctx, "web"); !store.IsNotFound(err) {
		t.Fatalf("record after delete: %v", err)
	}
	if a1.called("DeleteVM web") != 1 {
		t.Fatalf("DeleteVM calls on h1 = %d, want 1", a1.called("DeleteVM web"))
	}
}

// TestCreateUndoDeletesOnHostWhenReplyLost: a StartVM whose reply is lost
// (the fake agent starts the VM, then answers an error) makes the undo
// delete the VM on the host — retrying through failures — and only then
// remove the record. If the host never confirms, the record is kept,
// failed, with what to do.
func TestCreateUndoDeletesOnHostWhenReplyLost(t *testing.T) {
	s, st, a1, a2 := newFakeAgentServer(t, 4)
	ctx := context.Background()
	v := &vmService{s}
	a1.startErr, a2.startErr = errors.New("fake: reply lost"), errors.New("fake: reply lost")
	a1.deleteErrs = 2
	_, err := v.CreateVM(ctx, connect.NewRequest(&ferryv1.CreateVMRequest{Spec: vmSpec("lost"), Host: "h1"}))
	if err == nil || !strings.Contains(err.Error(), "VM lost was removed from host h1 and not recorded") {
		t.Fatalf("create with a lost reply: %v; want an error saying the VM was removed from h1", err)
	}
	if a1.called("DeleteVM lost") != 3 || a1.running["lost"] {
		t.Fatalf("DeleteVM calls %d (want 3: two failures then success), still running %v", a1.called("DeleteVM lost"), a1.running["lost"])
	}
	if _, err := st.GetVM(ctx, "lost"); !store.IsNotFound(err) {
		t.Fatalf("record after the undo: %v, want not found", err)
	}

	saved := undoDeleteBudget
	undoDeleteBudget = 1500 * time.Millisecond
	t.Cleanup(func() { undoDeleteBudget = saved })
	a2.deleteErrs = -1 // never succeeds
	if _, err := v.CreateVM(ctx, connect.NewRequest(&ferryv1.CreateVMRequest{Spec: vmSpec("stuck"), Host: "h2"})); err == nil || !strings.Contains(err.Error(), "ferry vm delete stuck") {
		t.Fatalf("create with a lost reply and no delete: %v; want an error naming `ferry vm delete stuck`", err)
	}
	vm, err := st.GetVM(ctx, "stuck")
	if err != nil || vm.State != "failed" || !strings.Contains(vm.Message, "ferry vm delete stuck") {
		t.Fatalf("record when the host cannot confirm the removal: %v %v; want kept, failed, naming `ferry vm delete stuck`", vm, err)
	}
	if held, _ := s.heldByHost(ctx); held["h2"].VCPUs != 0 {
		t.Fatalf("the failed create's reservation is still held: %v", held)
	}
}

// TestConcurrentCreatesNeverOvercommit: creates racing for two hosts with
// room for two VMs each: exactly four succeed, the others are refused
// with ResourceExhausted, and no host holds more than two.
func TestConcurrentCreatesNeverOvercommit(t *testing.T) {
	s, st, a1, a2 := newFakeAgentServer(t, 2)
	ctx := context.Background()
	// web already holds one slot of h1.
	a1.startDelay, a2.startDelay = 20*time.Millisecond, 20*time.Millisecond
	v := &vmService{s}
	const n = 8
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, errs[i] = v.CreateVM(ctx, connect.NewRequest(&ferryv1.CreateVMRequest{Spec: vmSpec(fmt.Sprintf("c%d", i))}))
		}()
	}
	wg.Wait()
	ok := 0
	for i, err := range errs {
		switch {
		case err == nil:
			ok++
		case connect.CodeOf(err) != connect.CodeResourceExhausted:
			t.Errorf("create c%d: %v, want success or ResourceExhausted", i, err)
		}
	}
	if ok != 3 {
		t.Errorf("%d creates succeeded, want 3 (h1 has room for one more, h2 for two)", ok)
	}
	vms, _ := st.ListVMs(ctx)
	per := map[string]int{}
	for _, vm := range vms {
		per[vm.Host]++
	}
	if per["h1"] > 2 || per["h2"] > 2 {
		t.Fatalf("overcommitted: %v", per)
	}
	if held, _ := s.heldByHost(ctx); len(held) != 0 {
		t.Fatalf("reservations left after the creates ended: %v", held)
	}
}

// TestMigrationReservationHoldsRoom: a migration's reservation on its
// destination makes a create pinned there fail until it is released.
func TestMigrationReservationHoldsRoom(t *testing.T) {
	s, _, _, _ := newFakeAgentServer(t, 1)
	ctx := context.Background()
	vm := &ferryv1.VM{Spec: vmSpec("web"), Host: "h1"}
	dst, _ := s.store.GetHost(ctx, "h2")
	if err := s.reserveMigration(ctx, "mig-r", vm, dst, &ferryv1.MigrationOptions{TimeoutMs: 60000}); err != nil {
		t.Fatal(err)
	}
	v := &vmService{s}
	_, err := v.CreateVM(ctx, connect.NewRequest(&ferryv1.CreateVMRequest{Spec: vmSpec("late"), Host: "h2"}))
	if connect.CodeOf(err) != connect.CodeResourceExhausted {
		t.Fatalf("create on a host whose room a migration holds: %v, want ResourceExhausted", err)
	}
	if err := s.checkRoom(ctx, &ferryv1.VM{Spec: vmSpec("other")}, dst); connect.CodeOf(err) != connect.CodeResourceExhausted {
		t.Fatalf("checkRoom ignores the reservation: %v", err)
	}
	s.releaseReservation("mig-r")
	if _, err := v.CreateVM(ctx, connect.NewRequest(&ferryv1.CreateVMRequest{Spec: vmSpec("late"), Host: "h2"})); err != nil {
		t.Fatalf("create after the release: %v", err)
	}
}

// TestMigrationRefusesDisksTheDestinationCannotHold: an unshared disk given
// by path (not Ferry's to move) and a shared disk without a path (a record from before shared+size was
// refused), are refused before any agent is asked, and nothing changes.
func TestMigrationRefusesDisksTheDestinationCannotHold(t *testing.T) {
	s, st := newTestServer(t)
	ctx := context.Background()
	for _, tc := range []struct {
		disk *ferryv1.DiskSpec
		want string
	}{
		{&ferryv1.DiskSpec{Name: "data", Path: "/srv/data.qcow2"}, "spec.disks[0] (data) is an image given by path (/srv/data.qcow2) that is not marked shared"},
		{&ferryv1.DiskSpec{Name: "data", Size: "1GiB", Shared: true}, "spec.disks[0] (data) is shared but has no path"},
	} {
		if _, err := st.UpdateVM(ctx, "web", false, func(v *ferryv1.VM) error { v.Spec.Disks = []*ferryv1.DiskSpec{tc.disk}; return nil }); err != nil {
			t.Fatal(err)
		}
		before, _ := st.GetVM(ctx, "web")
		for _, dry := range []bool{true, false} {
			_, err := (&migrationService{s}).Migrate(ctx, connect.NewRequest(&ferryv1.MigrateRequest{Vm: "web", To: "h2", DryRun: dry,
				Options: &ferryv1.MigrationOptions{Strategy: "cold"}}))
			if connect.CodeOf(err) != connect.CodeFailedPrecondition || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("disk %v (dry run %v): %v, want FailedPrecondition with %q", tc.disk, dry, err, tc.want)
			}
		}
		if after, _ := st.GetVM(ctx, "web"); after.Generation != before.Generation || after.MigrationId != "" {
			t.Errorf("refusal changed the record: %v", after)
		}
	}
	if held, _ := s.heldByHost(ctx); len(held) != 0 {
		t.Errorf("a refused migration holds a reservation: %v", held)
	}
}
