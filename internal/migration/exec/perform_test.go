package exec

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"
	agentv1 "github.com/ferryvm/ferry/gen/ferry/agent/v1"
	statev1 "github.com/ferryvm/ferry/gen/ferry/state/v1"
	ferryv1 "github.com/ferryvm/ferry/gen/ferry/v1"
	"github.com/ferryvm/ferry/internal/migration/core"
	"github.com/ferryvm/ferry/internal/store"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// fakeVMStore is an in-memory VMStore with the etcd store's CAS rules. A
// VM's revision is its generation (every fake write bumps it); with recs
// set, SwitchOwner writes the migration record there in the same step.
type fakeVMStore struct {
	mu   sync.Mutex
	vms  map[string]*ferryv1.VM
	recs *fakeRecords
}

func (s *fakeVMStore) GetVMRevision(ctx context.Context, name string) (*ferryv1.VM, int64, error) {
	vm, err := s.GetVM(ctx, name)
	if err != nil {
		return nil, 0, err
	}
	return vm, vm.Generation, nil
}

func (s *fakeVMStore) SwitchOwner(_ context.Context, vm *ferryv1.VM, vmRev, gen int64, m *statev1.MigrationRecord, _ int64) (int64, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	cur := s.vms[vm.Spec.Name]
	if cur.Generation != gen || cur.Generation != vmRev {
		return 0, fmt.Errorf("generation %d, expected %d: %w", cur.Generation, gen, store.ErrConflict)
	}
	next := proto.Clone(vm).(*ferryv1.VM)
	next.Generation = gen + 1
	s.vms[vm.Spec.Name] = next
	vm.Generation = next.Generation
	if s.recs != nil {
		if err := s.recs.PutMigration(context.Background(), m); err != nil {
			return 0, err
		}
	}
	return next.Generation, nil
}

func (s *fakeVMStore) GetVM(_ context.Context, name string) (*ferryv1.VM, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	vm, ok := s.vms[name]
	if !ok {
		return nil, fmt.Errorf("VM %q: %w", name, store.ErrNotFound)
	}
	return proto.Clone(vm).(*ferryv1.VM), nil
}

func (s *fakeVMStore) UpdateVM(_ context.Context, name string, bump bool, fn func(*ferryv1.VM) error) (*ferryv1.VM, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	vm, ok := s.vms[name]
	if !ok {
		return nil, fmt.Errorf("VM %q: %w", name, store.ErrNotFound)
	}
	next := proto.Clone(vm).(*ferryv1.VM)
	if err := fn(next); err != nil {
		return nil, err
	}
	if bump {
		next.Generation++
	}
	s.vms[name] = next
	return proto.Clone(next).(*ferryv1.VM), nil
}

func (s *fakeVMStore) SwapVM(_ context.Context, vm *ferryv1.VM, gen int64) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	cur := s.vms[vm.Spec.Name]
	if cur.Generation != gen {
		return fmt.Errorf("generation %d, expected %d: %w", cur.Generation, gen, store.ErrConflict)
	}
	next := proto.Clone(vm).(*ferryv1.VM)
	next.Generation = gen + 1
	s.vms[vm.Spec.Name] = next
	vm.Generation = next.Generation
	return nil
}

// nopWatcher ignores agent replies.
type nopWatcher struct{}

func (nopWatcher) Outgoing(core.ActionKind, *agentv1.OutgoingStatus) {}
func (nopWatcher) Incoming(core.ActionKind, *agentv1.IncomingStatus) {}
func (nopWatcher) VM(core.Side, core.ActionKind, *ferryv1.VMStatus)  {}

func newPerformer(st VMStore) *performer {
	return &performer{id: "mig-1", vm: "web", from: "h1", to: "h2", store: st, clock: RealClock{}, watch: nopWatcher{}}
}

func lockedStore() *fakeVMStore {
	return &fakeVMStore{vms: map[string]*ferryv1.VM{
		"web": {Spec: &ferryv1.VMSpec{Name: "web"}, Host: "h1", Generation: 5, State: "migrating", MigrationId: "mig-1"},
	}}
}

func TestCASOwnerMovesTheOwnerOnItsGeneration(t *testing.T) {
	st := lockedStore()
	p := newPerformer(st)
	o, ok := p.Perform(context.Background(), core.Action{Kind: core.ActCASOwner, Owner: "h2", Generation: 5})
	if !ok || o.Err != core.OK || o.StoreVM.Host != "h2" || o.StoreVM.Generation != 6 {
		t.Fatalf("CAS on the locked generation: %+v (store VM %+v), want OK, host h2 at generation 6", o, o.StoreVM)
	}
	o, _ = p.Perform(context.Background(), core.Action{Kind: core.ActCASOwner, Owner: "h2", Generation: 5})
	if o.Err != core.Refused || o.StoreVM.Host != "h2" || o.StoreVM.Generation != 6 {
		t.Fatalf("CAS on a moved generation: %+v (store VM %+v), want Refused with the record as found", o, o.StoreVM)
	}
}

func TestUpdateVMOnlyWhileTheMigrationHoldsIt(t *testing.T) {
	st := lockedStore()
	p := newPerformer(st)
	u := core.VMUpdate{State: core.VMRunning, Host: "h1", Unlock: true}
	o, _ := p.Perform(context.Background(), core.Action{Kind: core.ActUpdateVM, Update: u})
	if o.Err != core.OK || o.StoreVM.MigrationID != "" || o.StoreVM.State != "running" {
		t.Fatalf("update while locked: %+v (store VM %+v), want OK, unlocked, running", o, o.StoreVM)
	}
	o, _ = p.Perform(context.Background(), core.Action{Kind: core.ActUpdateVM, Update: u})
	if o.Err != core.Refused {
		t.Fatalf("update after the lock was released: %+v, want Refused", o)
	}
}

func TestClassify(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want core.ErrClass
	}{
		{nil, core.OK},
		{connect.NewError(connect.CodeNotFound, errors.New("no such migration")), core.NotFound},
		{fmt.Errorf("arm: %w", connect.NewError(connect.CodeFailedPrecondition, errors.New("aborted"))), core.Refused},
		{connect.NewError(connect.CodeUnavailable, errors.New("dial")), core.Transient},
		{context.DeadlineExceeded, core.Transient},
		{fmt.Errorf("swap: %w", store.ErrConflict), core.Refused},
	} {
		if got := classify(tc.err); got != tc.want {
			t.Errorf("classify(%v) = %s, want %s", tc.err, got, tc.want)
		}
	}
}

func TestTimerTicksAtItsTime(t *testing.T) {
	p := newPerformer(lockedStore())
	at := time.Now().Add(20 * time.Millisecond)
	o, ok := p.Perform(context.Background(), core.Action{Kind: core.ActSetTimer, At: at})
	if !ok || o.Kind != core.ObsTick || o.Now.Before(at) {
		t.Fatalf("timer: %+v ok %v, want a tick at or after %s", o, ok, at)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, ok := p.Perform(ctx, core.Action{Kind: core.ActSetTimer, At: time.Now().Add(time.Hour)}); ok {
		t.Fatal("a timer cut short by the runner's end reported a tick")
	}
}

func TestPausedMs(t *testing.T) {
	t0 := time.Unix(1000, 0)
	h := []core.Event{
		{At: t0, State: core.PostcopyActive},
		{At: t0.Add(time.Second), State: core.PostcopyPaused},
		{At: t0.Add(2 * time.Second), State: core.PostcopyRecovering},
		{At: t0.Add(3 * time.Second), State: core.PostcopyActive},
		{At: t0.Add(5 * time.Second), State: core.PostcopyPaused},
	}
	if got := pausedMs(h, t0.Add(6*time.Second)); got != 3000 {
		t.Fatalf("pausedMs = %d, want 3000 (2 s, then 1 s still paused)", got)
	}
}

func TestReportPostcopyFigures(t *testing.T) {
	t0 := time.Now()
	ts := func(d time.Duration) *timestamppb.Timestamp { return timestamppb.New(t0.Add(d)) }
	r := newReporter(&ferryv1.Migration{Strategy: "hybrid", StartedAt: ts(0)}, nil)
	r.Outgoing(core.ActStartOutgoing, &agentv1.OutgoingStatus{Status: "active", TotalBytes: 1 << 28})
	r.Outgoing(core.ActStartPostcopy, &agentv1.OutgoingStatus{Status: "active", TotalBytes: 1 << 28})
	r.Outgoing(core.ActContinueOutgoing, &agentv1.OutgoingStatus{Status: "postcopy-active", TotalBytes: 1 << 28,
		StoppedAt: ts(time.Second), PreSwitchoverAt: ts(time.Second + 5*time.Millisecond), ContinuedAt: ts(time.Second + 10*time.Millisecond),
		PostcopyStartedAt: ts(time.Second)})
	r.Incoming(core.ActFinishIncoming, &agentv1.IncomingStatus{ResumedAt: ts(time.Second + 30*time.Millisecond)})
	r.Incoming(core.ActQueryIncoming, &agentv1.IncomingStatus{State: "adopted"}) // an adopted VM reports no times
	r.Outgoing(core.ActQueryOutgoing, &agentv1.OutgoingStatus{Status: "completed", CompletedAt: ts(4 * time.Second)})
	m := r.snapshot(false)
	if m.PostcopyMs != 3000 || m.GetDowntimePhases().GetTotalMs() != 30 {
		t.Fatalf("postcopyMs %d, downtime total %d; want 3000 and 30", m.PostcopyMs, m.GetDowntimePhases().GetTotalMs())
	}
}

// TestReportWarnsOfDowntimeOverTheLimit: a pause longer than maxDowntime
// is a warning naming the phases; within the limit there is none, and a
// report computed again keeps one warning.
func TestReportWarnsOfDowntimeOverTheLimit(t *testing.T) {
	t0 := time.Now()
	ts := func(d time.Duration) *timestamppb.Timestamp { return timestamppb.New(t0.Add(d)) }
	for _, tc := range []struct {
		resumed time.Duration
		warn    bool
	}{{250 * time.Millisecond, false}, {1010 * time.Millisecond, true}} {
		r := newReporter(&ferryv1.Migration{Strategy: "precopy", StartedAt: ts(0), Options: &ferryv1.MigrationOptions{MaxDowntimeMs: 300}}, nil)
		out := &agentv1.OutgoingStatus{Status: "completed", TotalBytes: 1 << 28, DowntimeMs: 20,
			StoppedAt: ts(time.Second), PreSwitchoverAt: ts(time.Second + time.Millisecond), ContinuedAt: ts(time.Second + 6*time.Millisecond)}
		r.Outgoing(core.ActQueryOutgoing, out)
		in := &agentv1.IncomingStatus{LoadedAt: ts(time.Second + tc.resumed - time.Millisecond), ResumedAt: ts(time.Second + tc.resumed)}
		r.Incoming(core.ActFinishIncoming, in)
		r.Incoming(core.ActQueryIncoming, in)
		m := r.snapshot(false)
		var got []string
		for _, w := range m.Warnings {
			if strings.HasPrefix(w, WarnDowntimeOverLimit) {
				got = append(got, w)
			}
		}
		switch {
		case tc.warn && (len(got) != 1 || !strings.Contains(got[0], "paused 1010 ms, maxDowntime 300 ms") || !strings.Contains(got[0], "device state")):
			t.Errorf("pause %s: warnings %q, want one naming 1010 ms, the limit and the phases", tc.resumed, m.Warnings)
		case !tc.warn && len(got) != 0:
			t.Errorf("pause %s within the limit: warnings %q", tc.resumed, got)
		}
	}
}

// TestSwitchOwnerWritesOwnerAndRecordTogether: a live switchover's CAS
// writes the switched migration record in the same store step; a VM record
// changed since the prefetch is read again once; a moved generation is
// Refused with nothing written.
func TestSwitchOwnerWritesOwnerAndRecordTogether(t *testing.T) {
	st := lockedStore()
	st.recs = &fakeRecords{recs: map[string]*statev1.MigrationRecord{}}
	p := newPerformer(st)
	p.record = func(r core.Record) *statev1.MigrationRecord { return core.ToProto(r) }
	p.prefetchOwner(context.Background())
	// Changed since the prefetch, same generation: the fake's revision is
	// the generation, so fake a stale revision.
	p.owner.rev = 4
	sw := core.Record{Version: core.Version, ID: "mig-1", VM: "web", From: "h1", To: "h2", State: core.Resuming, Generation: 6}
	o, ok := p.Perform(context.Background(), core.Action{Kind: core.ActCASOwner, Owner: "h2", Generation: 5, Record: &sw})
	if !ok || o.Err != core.OK || o.StoreVM.Host != "h2" || o.StoreVM.Generation != 6 {
		t.Fatalf("switch: %+v (store VM %+v), want OK, host h2 at generation 6", o, o.StoreVM)
	}
	if m := st.recs.recs["mig-1"]; m == nil || m.State != string(core.Resuming) {
		t.Fatalf("migration record after the switch = %v, want the switched record (resuming)", m)
	}
	delete(st.recs.recs, "mig-1")
	o, _ = p.Perform(context.Background(), core.Action{Kind: core.ActCASOwner, Owner: "h2", Generation: 5, Record: &sw})
	if o.Err != core.Refused || o.StoreVM.Generation != 6 || st.recs.recs["mig-1"] != nil {
		t.Fatalf("switch on a moved generation: %+v (store VM %+v, record %v), want Refused and nothing written", o, o.StoreVM, st.recs.recs["mig-1"])
	}
}
