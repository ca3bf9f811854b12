package drain

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	ferryv1 "github.com/ferryvm/ferry/gen/ferry/v1"
	"github.com/ferryvm/ferry/internal/evacuate"
	"github.com/ferryvm/ferry/internal/placement"
	"google.golang.org/protobuf/proto"
)

var errFakeNotFound = errors.New("fake: not found")

// fakeRecords keeps records in memory (clones, like a store).
type fakeRecords struct {
	m map[string]*ferryv1.Evacuation
}

func (f *fakeRecords) GetEvacuation(_ context.Context, h string) (*ferryv1.Evacuation, error) {
	e, ok := f.m[h]
	if !ok {
		return nil, errFakeNotFound
	}
	return proto.Clone(e).(*ferryv1.Evacuation), nil
}
func (f *fakeRecords) PutEvacuation(_ context.Context, e *ferryv1.Evacuation) error {
	c := proto.Clone(e).(*ferryv1.Evacuation)
	c.Generation++
	f.m[e.Host] = c
	return nil
}
func (f *fakeRecords) ListEvacuations(context.Context) ([]*ferryv1.Evacuation, error) {
	var out []*ferryv1.Evacuation
	for _, e := range f.m {
		out = append(out, proto.Clone(e).(*ferryv1.Evacuation))
	}
	return out, nil
}
func (f *fakeRecords) DeleteEvacuation(_ context.Context, h string) error {
	delete(f.m, h)
	return nil
}

type fakeMig struct {
	vm, to    string
	ticks     int // passes left before it ends
	fail      bool
	restarted bool // its failure is a control-plane restart's
	done      bool
}

// fakeCluster is a fake cluster of 256-MiB VMs: a migration ends after
// two passes (failing when its destination is in failTo).
type fakeCluster struct {
	hosts       []string
	vmHost      map[string]string
	lock        map[string]string // vm -> migration id
	migs        map[string]*fakeMig
	failTo      map[string]bool
	unreachable bool
	full        bool // no host has room
	maxInFlight int
	n           int
	restartOnce map[string]bool // the first migration to this host fails by a control-plane restart
	waitStarts  int             // Migrate refuses this many starts with ErrWait (a limit held by others)
}

func newFakeCluster(vms int) *fakeCluster {
	c := &fakeCluster{hosts: []string{"h1", "h2", "h3"}, vmHost: map[string]string{}, lock: map[string]string{}, migs: map[string]*fakeMig{}, failTo: map[string]bool{}}
	for i := 1; i <= vms; i++ {
		c.vmHost[fmt.Sprintf("vm%d", i)] = "h1"
	}
	return c
}

type fakeBW struct{}

func (fakeBW) Estimate(string, string) (float64, bool) { return 100 << 20, true }

func (c *fakeCluster) Snapshot(_ context.Context, host string) (Snapshot, error) {
	s := Snapshot{SourceReachable: !c.unreachable, ClusterFree: 8}
	for v, at := range c.vmHost {
		if at == host {
			s.OnHost = append(s.OnHost, v)
		}
	}
	return s, nil
}

func (c *fakeCluster) PlanInput(_ context.Context, host string, vms []string) (evacuate.Input, error) {
	in := evacuate.Input{Bandwidth: fakeBW{}}
	for _, v := range vms {
		in.VMs = append(in.VMs, evacuate.VM{Name: v, VCPUs: 1, MemoryMiB: 256})
	}
	for _, h := range c.hosts {
		ph := placement.Host{Name: h, CPUs: 4, MemoryMiB: 8192}
		if c.full {
			ph.MemoryMiB = 300
		}
		for _, at := range c.vmHost {
			if at == h {
				ph.Place(placement.Request{VCPUs: 1, MemoryMiB: 256})
			}
		}
		in.Hosts = append(in.Hosts, evacuate.Host{Host: ph, Schedulable: h != host, Health: evacuate.Healthy})
	}
	return in, nil
}

func (c *fakeCluster) VM(_ context.Context, name string) (VMView, error) {
	h, ok := c.vmHost[name]
	if !ok {
		return VMView{Gone: true}, nil
	}
	return VMView{Host: h, State: "running", MigrationID: c.lock[name]}, nil
}

func (c *fakeCluster) Migration(_ context.Context, id string) (Migration, error) {
	m, ok := c.migs[id]
	if !ok {
		return Migration{Gone: true}, nil
	}
	if !m.done {
		return Migration{Status: "running", Progress: 0.5}, nil
	}
	if m.restarted {
		return Migration{Status: "failed", Error: "the control plane restarted during the migration", NotDestination: true}, nil
	}
	if m.fail {
		return Migration{Status: "failed", Error: "destination agent gone"}, nil
	}
	return Migration{Status: "completed", Took: time.Second}, nil
}

func (c *fakeCluster) Migrate(_ context.Context, vm, to, _ string) (string, error) {
	if c.lock[vm] != "" {
		return "", fmt.Errorf("VM %s is already migrating", vm)
	}
	if c.waitStarts > 0 {
		c.waitStarts--
		return "", fmt.Errorf("%w: migration limit reached (fake)", ErrWait)
	}
	c.n++
	id := fmt.Sprintf("mig-%d", c.n)
	c.migs[id] = &fakeMig{vm: vm, to: to, ticks: 2, fail: c.failTo[to], restarted: c.restartOnce[to]}
	if c.restartOnce[to] {
		delete(c.restartOnce, to)
	}
	c.lock[vm] = id
	inFlight := 0
	for _, m := range c.migs {
		if !m.done {
			inFlight++
		}
	}
	c.maxInFlight = max(c.maxInFlight, inFlight)
	return id, nil
}

func (c *fakeCluster) Cancel(_ context.Context, id string) error {
	if m, ok := c.migs[id]; ok && !m.done {
		m.done, m.fail = true, true
		delete(c.lock, m.vm)
	}
	return nil
}

// step ends the migrations whose time has come.
func (c *fakeCluster) step() {
	for _, m := range c.migs {
		if m.done {
			continue
		}
		if m.ticks--; m.ticks <= 0 {
			m.done = true
			delete(c.lock, m.vm)
			if !m.fail && !m.restarted {
				c.vmHost[m.vm] = m.to
			}
		}
	}
}

func newTestRunner(c *fakeCluster, recs *fakeRecords) *Runner {
	return New(Config{Cluster: c, Records: recs, IsNotFound: func(err error) bool { return errors.Is(err, errFakeNotFound) }})
}

func drive(t *testing.T, r *Runner, c *fakeCluster, recs *fakeRecords, host string) *ferryv1.Evacuation {
	t.Helper()
	for i := 0; i < 100; i++ {
		c.step()
		r.Pass(context.Background())
		if e := recs.m[host]; Terminal(e.State) {
			return e
		}
	}
	t.Fatalf("evacuation of %s did not end: %v", host, recs.m[host])
	return nil
}

func TestDrainMovesEveryVMWithinParallelism(t *testing.T) {
	c, recs := newFakeCluster(4), &fakeRecords{m: map[string]*ferryv1.Evacuation{}}
	r := newTestRunner(c, recs)
	rec, err := r.Enter(context.Background(), "h1", ReasonManual)
	if err != nil {
		t.Fatal(err)
	}
	if len(rec.Plan) != 5 || !strings.Contains(rec.Plan[0], "4 moves") {
		t.Fatalf("plan = %q", rec.Plan)
	}
	e := drive(t, r, c, recs, "h1")
	if e.State != StateCompleted {
		t.Fatalf("state %s: %s", e.State, e.Message)
	}
	if c.maxInFlight != 2 || e.MaxInFlight != 2 {
		t.Errorf("max in flight: cluster %d, record %d; want 2", c.maxInFlight, e.MaxInFlight)
	}
	for v, h := range c.vmHost {
		if h == "h1" {
			t.Errorf("%s still on h1", v)
		}
	}
	if err := r.Exit(context.Background(), "h1"); err != nil {
		t.Fatal(err)
	}
	if _, ok := recs.m["h1"]; ok {
		t.Error("exit left the record")
	}
}

func TestDrainRetriesAFailedVMElsewhere(t *testing.T) {
	c, recs := newFakeCluster(4), &fakeRecords{m: map[string]*ferryv1.Evacuation{}}
	c.failTo["h2"] = true
	r := newTestRunner(c, recs)
	if _, err := r.Enter(context.Background(), "h1", ReasonManual); err != nil {
		t.Fatal(err)
	}
	e := drive(t, r, c, recs, "h1")
	if e.State != StateCompleted {
		t.Fatalf("state %s: %s", e.State, e.Message)
	}
	retried := 0
	for _, it := range e.Items {
		if it.To != "h3" {
			t.Errorf("%s ended on %s", it.Vm, it.To)
		}
		if len(it.Failures) > 0 {
			retried++
			if it.Avoid[0] != "h2" || it.Attempts != 2 {
				t.Errorf("%s: avoid %v attempts %d", it.Vm, it.Avoid, it.Attempts)
			}
		}
	}
	if retried == 0 {
		t.Error("no VM was retried")
	}
}

func TestDrainGivesUpWhenEveryDestinationFails(t *testing.T) {
	c, recs := newFakeCluster(1), &fakeRecords{m: map[string]*ferryv1.Evacuation{}}
	c.failTo["h2"], c.failTo["h3"] = true, true
	r := newTestRunner(c, recs)
	if _, err := r.Enter(context.Background(), "h1", ReasonManual); err != nil {
		t.Fatal(err)
	}
	e := drive(t, r, c, recs, "h1")
	if e.State != StateIncomplete || e.Items[0].Status != ItemFailed || len(e.Items[0].Failures) != 2 {
		t.Fatalf("got %s %v", e.State, e.Items)
	}
	if !strings.Contains(e.Message, "vm1") {
		t.Errorf("message does not name vm1: %s", e.Message)
	}
	if err := r.Exit(context.Background(), "h1"); err != nil {
		t.Fatal(err)
	}
}

func TestDrainResumesInANewRunnerAndAdoptsAMissedStart(t *testing.T) {
	c, recs := newFakeCluster(3), &fakeRecords{m: map[string]*ferryv1.Evacuation{}}
	r := newTestRunner(c, recs)
	if _, err := r.Enter(context.Background(), "h1", ReasonManual); err != nil {
		t.Fatal(err)
	}
	// A start the record missed: the leader died between Migrate and the write.
	rec := recs.m["h1"]
	var pending *ferryv1.EvacuationItem
	for _, it := range rec.Items {
		if it.Status == ItemPending {
			pending = it
		}
	}
	if pending == nil {
		t.Fatal("no pending item after the first pass")
	}
	c.lock[pending.Vm] = "mig-missed"
	c.migs["mig-missed"] = &fakeMig{vm: pending.Vm, to: pending.To, ticks: 3}
	if err := r.Exit(context.Background(), "h1"); !errors.Is(err, ErrBusy) {
		t.Fatalf("exit while running: %v, want ErrBusy", err)
	}
	e := drive(t, newTestRunner(c, recs), c, recs, "h1")
	if e.State != StateCompleted {
		t.Fatalf("state %s: %s", e.State, e.Message)
	}
	for _, it := range e.Items {
		if it.Vm == pending.Vm && it.MigrationId != "mig-missed" {
			t.Errorf("%s ran %s, not the adopted mig-missed", it.Vm, it.MigrationId)
		}
	}
}

func TestDrainWaitsWhileTheSourceIsUnreachable(t *testing.T) {
	c, recs := newFakeCluster(2), &fakeRecords{m: map[string]*ferryv1.Evacuation{}}
	c.unreachable = true
	r := newTestRunner(c, recs)
	rec, err := r.Enter(context.Background(), "h1", ReasonManual)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 5; i++ {
		r.Pass(context.Background())
	}
	if c.n != 0 || !strings.Contains(recs.m["h1"].Message, "unreachable") {
		t.Fatalf("started %d migrations of an unreachable host; record %v", c.n, rec)
	}
	c.unreachable = false
	if e := drive(t, r, c, recs, "h1"); e.State != StateCompleted {
		t.Fatalf("state %s", e.State)
	}
}

func TestDrainCancel(t *testing.T) {
	c, recs := newFakeCluster(4), &fakeRecords{m: map[string]*ferryv1.Evacuation{}}
	r := newTestRunner(c, recs)
	if _, err := r.Enter(context.Background(), "h1", ReasonManual); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Cancel(context.Background(), "h1"); err != nil {
		t.Fatal(err)
	}
	e := drive(t, r, c, recs, "h1")
	if e.State != StateCancelled {
		t.Fatalf("state %s: %s", e.State, e.Message)
	}
	if c.n != 2 {
		t.Errorf("%d migrations started, want the 2 of the first pass", c.n)
	}
	for v, h := range c.vmHost {
		if h != "h1" {
			t.Errorf("%s moved to %s despite the cancel", v, h)
		}
	}
}

// TestDrainPlansAnUnplacedVMAgain: a VM the first plan could not place
// (here: no room anywhere) is planned again RePlanAfter later and moves
// once room was freed; the evacuation does not end in between.
func TestDrainPlansAnUnplacedVMAgain(t *testing.T) {
	c, recs := newFakeCluster(1), &fakeRecords{m: map[string]*ferryv1.Evacuation{}}
	c.full = true
	now := time.Unix(1000, 0)
	r := New(Config{Cluster: c, Records: recs, IsNotFound: func(err error) bool { return errors.Is(err, errFakeNotFound) }, Now: func() time.Time { return now }})
	rec, err := r.Enter(context.Background(), "h1", ReasonManual)
	if err != nil {
		t.Fatal(err)
	}
	if it := rec.Items[0]; it.Status != ItemUnplaced || it.Plans != 1 || rec.State != StateRunning {
		t.Fatalf("after the first plan: %s, item %v", rec.State, it)
	}
	now = now.Add(RePlanAfter / 2)
	r.Pass(context.Background())
	if e := recs.m["h1"]; e.State != StateRunning || e.Items[0].Plans != 1 {
		t.Fatalf("re-planned too early or ended: %v", e)
	}
	c.full = false
	now = now.Add(RePlanAfter)
	e := drive(t, r, c, recs, "h1")
	if e.State != StateCompleted || e.Items[0].Plans != 2 {
		t.Fatalf("got %s, plans %d: %s", e.State, e.Items[0].Plans, e.Message)
	}
}

// TestDrainEndsIncompleteAfterMaxPlans: a VM that never fits is reported
// after MaxPlans plans, with the planner's reason.
func TestDrainEndsIncompleteAfterMaxPlans(t *testing.T) {
	c, recs := newFakeCluster(1), &fakeRecords{m: map[string]*ferryv1.Evacuation{}}
	c.full = true
	now := time.Unix(1000, 0)
	r := New(Config{Cluster: c, Records: recs, IsNotFound: func(err error) bool { return errors.Is(err, errFakeNotFound) }, Now: func() time.Time { return now }})
	if _, err := r.Enter(context.Background(), "h1", ReasonManual); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < MaxPlans+2; i++ {
		now = now.Add(RePlanAfter)
		r.Pass(context.Background())
	}
	e := recs.m["h1"]
	if e.State != StateIncomplete || e.Items[0].Plans != MaxPlans || !strings.Contains(e.Items[0].Error, "memory") {
		t.Fatalf("got %s, item %v", e.State, e.Items[0])
	}
}

// TestDrainRestartIsNotTheDestinationsFault: a migration rolled back by a
// control-plane restart is retried without avoiding its destination.
func TestDrainRestartIsNotTheDestinationsFault(t *testing.T) {
	c, recs := newFakeCluster(1), &fakeRecords{m: map[string]*ferryv1.Evacuation{}}
	c.hosts = []string{"h1", "h2"} // one destination: avoiding it would leave none
	c.restartOnce = map[string]bool{"h2": true}
	r := newTestRunner(c, recs)
	if _, err := r.Enter(context.Background(), "h1", ReasonManual); err != nil {
		t.Fatal(err)
	}
	e := drive(t, r, c, recs, "h1")
	it := e.Items[0]
	if e.State != StateCompleted || it.To != "h2" || it.Attempts != 2 || len(it.Avoid) != 0 || len(it.Failures) != 1 {
		t.Fatalf("state %s, item %v: want completed to h2 on attempt 2, nothing avoided", e.State, it)
	}
}

// TestDrainWaitsForALimit: a start refused for a limit other migrations
// hold waits for a later pass; it is no failed attempt.
func TestDrainWaitsForALimit(t *testing.T) {
	c, recs := newFakeCluster(2), &fakeRecords{m: map[string]*ferryv1.Evacuation{}}
	c.waitStarts = 3
	r := newTestRunner(c, recs)
	if _, err := r.Enter(context.Background(), "h1", ReasonManual); err != nil {
		t.Fatal(err)
	}
	e := drive(t, r, c, recs, "h1")
	if e.State != StateCompleted {
		t.Fatalf("state %s: %s", e.State, e.Message)
	}
	for _, it := range e.Items {
		if it.Attempts != 1 || len(it.Failures) != 0 || len(it.Avoid) != 0 {
			t.Errorf("%s: attempts %d, failures %v, avoid %v; want one attempt", it.Vm, it.Attempts, it.Failures, it.Avoid)
		}
	}
}
