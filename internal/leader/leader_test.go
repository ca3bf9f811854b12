package leader_test

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	ferryv1 "github.com/ferryvm/ferry/gen/ferry/v1"
	"github.com/ferryvm/ferry/internal/etcdembed"
	"github.com/ferryvm/ferry/internal/leader"
	"github.com/ferryvm/ferry/internal/store"
	clientv3 "go.etcd.io/etcd/client/v3"
)

func startEtcd(t *testing.T) string {
	t.Helper()
	e, err := etcdembed.Start(context.Background(), t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.Close)
	return e.Endpoint
}

func newStore(t *testing.T, ep string) *store.Etcd {
	t.Helper()
	s, err := store.NewEtcd(context.Background(), []string{ep})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// replica is one campaigning process in the test: its own etcd client and
// store, the fence wired like the server wires it.
type replica struct {
	name    string
	st      *store.Etcd
	cancel  context.CancelFunc
	done    chan struct{}
	mu      sync.Mutex
	terms   []leader.Term
	leading bool
	ended   chan leader.Term
}

func startReplica(t *testing.T, ep, name string, ttl time.Duration) *replica {
	t.Helper()
	r := &replica{name: name, st: newStore(t, ep), done: make(chan struct{}), ended: make(chan leader.Term, 8)}
	r.st.CloseFence()
	el, err := leader.New(r.st.Client(), leader.Config{Self: leader.Info{Name: name, URL: "http://" + name}, TTL: ttl, RetryDelay: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	r.cancel = cancel
	go func() {
		defer close(r.done)
		_ = el.Run(ctx, func(term leader.Term) {
			r.st.CloseFence()
			r.mu.Lock()
			r.leading = false
			r.mu.Unlock()
		}, func(tctx context.Context, term leader.Term) {
			r.st.SetFence(term.Fence)
			r.mu.Lock()
			r.terms = append(r.terms, term)
			r.leading = true
			r.mu.Unlock()
			<-tctx.Done()
			r.ended <- term
		})
	}()
	t.Cleanup(func() { r.stop() })
	return r
}

func (r *replica) stop() {
	r.cancel()
	<-r.done
}

func (r *replica) isLeading() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.leading
}

func waitFor(t *testing.T, what string, timeout time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %s", what, timeout)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func oneLeader(rs ...*replica) (*replica, int) {
	var l *replica
	n := 0
	for _, r := range rs {
		if r.isLeading() {
			l, n = r, n+1
		}
	}
	return l, n
}

// TestElectionHandOver: of two replicas exactly one leads and only its
// writes pass the fence; when it resigns the other leads, and a write
// carrying the old term's fence fails and changes nothing.
func TestElectionHandOver(t *testing.T) {
	ep := startEtcd(t)
	a := startReplica(t, ep, "a", 2*time.Second)
	b := startReplica(t, ep, "b", 2*time.Second)
	var first *replica
	waitFor(t, "a leader", 10*time.Second, func() bool { l, n := oneLeader(a, b); first = l; return n == 1 })
	other := b
	if first == b {
		other = a
	}
	time.Sleep(300 * time.Millisecond)
	if _, n := oneLeader(a, b); n != 1 {
		t.Fatalf("%d leaders, want 1", n)
	}
	ctx := context.Background()
	info, fence, err := leader.Current(ctx, a.st.Client(), "")
	if err != nil || info.Name != first.name || info.URL != "http://"+first.name {
		t.Fatalf("Current = %+v, %v; want %s", info, err, first.name)
	}
	if fence != first.terms[0].Fence {
		t.Fatalf("Current fence %+v, the leader's term has %+v", fence, first.terms[0].Fence)
	}
	if err := first.st.CreateVM(ctx, &ferryv1.VM{Spec: &ferryv1.VMSpec{Name: "v"}, Host: "h1", State: "running"}); err != nil {
		t.Fatalf("leader write: %v", err)
	}
	if err := other.st.CreateVM(ctx, &ferryv1.VM{Spec: &ferryv1.VMSpec{Name: "x"}}); !errors.Is(err, store.ErrNotLeader) {
		t.Fatalf("follower write: %v, want ErrNotLeader", err)
	}

	oldFence := first.terms[0].Fence
	first.stop() // resigns
	waitFor(t, "hand-over", 10*time.Second, other.isLeading)
	if first.isLeading() {
		t.Fatal("stopped replica still leading")
	}
	// A deposed leader that somehow still holds its old fence is refused.
	first.st.SetFence(oldFence)
	_, err = first.st.UpdateVM(ctx, "v", true, func(v *ferryv1.VM) error { v.State = "stopped"; return nil })
	if !errors.Is(err, store.ErrNotLeader) {
		t.Fatalf("write with the old term's fence: %v, want ErrNotLeader", err)
	}
	if v, _ := other.st.GetVM(ctx, "v"); v.State != "running" {
		t.Fatalf("deposed write changed the record: state %q", v.State)
	}
	if _, err := other.st.UpdateVM(ctx, "v", true, func(v *ferryv1.VM) error { v.State = "stopped"; return nil }); err != nil {
		t.Fatalf("new leader write: %v", err)
	}
}

// TestTermEndsWhenLeaseLost: revoking the leader's lease (what happens when
// the process dies or is cut off for a TTL) ends its term — its context is
// cancelled, its fence refuses — and the other replica is elected.
func TestTermEndsWhenLeaseLost(t *testing.T) {
	ep := startEtcd(t)
	a := startReplica(t, ep, "a", 2*time.Second)
	waitFor(t, "a leads", 10*time.Second, a.isLeading)
	b := startReplica(t, ep, "b", 2*time.Second)
	ctx := context.Background()
	c := b.st.Client()
	resp, err := c.Get(ctx, a.terms[0].Fence.Key)
	if err != nil || len(resp.Kvs) != 1 {
		t.Fatalf("leader key: %v %v", resp, err)
	}
	if _, err := c.Revoke(ctx, clientv3.LeaseID(resp.Kvs[0].Lease)); err != nil {
		t.Fatal(err)
	}
	select {
	case term := <-a.ended:
		if term != a.terms[0] {
			t.Fatalf("ended term %+v, want %+v", term, a.terms[0])
		}
	case <-time.After(5 * time.Second):
		t.Fatal("term context not cancelled within 5s of losing the lease")
	}
	if err := a.st.CreateVM(ctx, &ferryv1.VM{Spec: &ferryv1.VMSpec{Name: "late"}}); !errors.Is(err, store.ErrNotLeader) {
		t.Fatalf("write after the term ended: %v, want ErrNotLeader", err)
	}
	waitFor(t, "a new leader", 10*time.Second, func() bool { _, n := oneLeader(a, b); return n == 1 })
	info, _, err := leader.Current(ctx, c, "")
	if err != nil {
		t.Fatal(err)
	}
	l, _ := oneLeader(a, b)
	if info.Name != l.name {
		t.Fatalf("Current names %s, the leading replica is %s", info.Name, l.name)
	}
}

// TestObserverAndRegistry: observers see the leader change; replicas are
// listed while registered and vanish when they stop.
func TestObserverAndRegistry(t *testing.T) {
	ep := startEtcd(t)
	st := newStore(t, ep)
	c := st.Client()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	o := leader.NewObserver(c, "")
	go o.Run(ctx)
	if _, ok := o.Leader(); ok {
		t.Fatal("observer reports a leader before any campaign")
	}
	a := startReplica(t, ep, "a", 2*time.Second)
	waitFor(t, "observer sees a", 5*time.Second, func() bool { i, ok := o.Leader(); return ok && i.Name == "a" })
	b := startReplica(t, ep, "b", 2*time.Second)
	a.stop()
	waitFor(t, "observer sees b", 5*time.Second, func() bool { i, ok := o.Leader(); return ok && i.Name == "b" })
	b.stop()
	waitFor(t, "observer sees no leader", 5*time.Second, func() bool { _, ok := o.Leader(); return !ok })

	rctx, rcancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		leader.Register(rctx, c, leader.Info{Name: "r1", URL: "http://r1"}, 2*time.Second, 100*time.Millisecond)
		close(done)
	}()
	var rs []leader.Replica
	waitFor(t, "r1 registered", 5*time.Second, func() bool {
		rs, _ = leader.Replicas(ctx, c)
		return len(rs) == 1
	})
	if rs[0].Name != "r1" || rs[0].URL != "http://r1" || rs[0].LastSeen.IsZero() {
		t.Fatalf("replicas = %+v", rs)
	}
	first := rs[0].LastSeen
	waitFor(t, "last seen refreshed", 5*time.Second, func() bool {
		rs, _ = leader.Replicas(ctx, c)
		return len(rs) == 1 && rs[0].LastSeen.After(first)
	})
	rcancel()
	<-done
	if rs, err := leader.Replicas(ctx, c); err != nil || len(rs) != 0 {
		t.Fatalf("after stop: replicas = %+v, %v; want none", rs, err)
	}
}

// TestRestartedReplicaTakesOverAtOnce: a replica whose process died while
// leading (its key still held by a live lease) and which comes back under
// the same name removes its old key and leads without waiting the TTL; the
// old term's fence refuses writes.
func TestRestartedReplicaTakesOverAtOnce(t *testing.T) {
	ep := startEtcd(t)
	st := newStore(t, ep)
	ctx := context.Background()
	// The dead incarnation: a key with a long lease nobody will revoke.
	g, err := st.Client().Grant(ctx, 60)
	if err != nil {
		t.Fatal(err)
	}
	put, err := st.Client().Put(ctx, leader.DefaultPrefix+"/dead", `{"name":"a","url":"http://a"}`, clientv3.WithLease(g.ID))
	if err != nil {
		t.Fatal(err)
	}
	old := store.Fence{Key: leader.DefaultPrefix + "/dead", Rev: put.Header.Revision}
	start := time.Now()
	a := startReplica(t, ep, "a", 30*time.Second)
	waitFor(t, "restarted a leads", 5*time.Second, a.isLeading)
	t.Logf("restarted replica led after %s (its old lease had 60s left)", time.Since(start).Round(time.Millisecond))
	st.SetFence(old)
	if err := st.CreateVM(ctx, &ferryv1.VM{Spec: &ferryv1.VMSpec{Name: "x"}}); !errors.Is(err, store.ErrNotLeader) {
		t.Fatalf("write with the dead incarnation's fence: %v, want ErrNotLeader", err)
	}
	// Another replica's key is left alone.
	b := startReplica(t, ep, "b", 30*time.Second)
	time.Sleep(500 * time.Millisecond)
	if !a.isLeading() || b.isLeading() {
		t.Fatalf("a leading %v, b leading %v; want a only", a.isLeading(), b.isLeading())
	}
}
