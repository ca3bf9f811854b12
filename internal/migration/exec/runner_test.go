package exec

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"
)

// fakeRec is a toy record: how far a countdown went.
type fakeRec struct {
	n    int
	done bool
}

// fakeMachine counts observations down from start: each step asks for one
// action "tick n", whose observation is n-1; at 0 it is done. A failed
// write is answered by replaying the observation whose record it was.
type fakeMachine struct{ last *int }

func newFakeMachine() fakeMachine { return fakeMachine{last: new(int)} }

func (m fakeMachine) Step(r fakeRec, o int) (fakeRec, Persist, []string) {
	*m.last = o
	r.n = o
	if o <= 0 {
		r.done = true
		return r, PersistBefore, nil
	}
	return r, PersistBefore, []string{fmt.Sprintf("tick %d", o)}
}
func (m fakeMachine) Done(r fakeRec) bool     { return r.done }
func (m fakeMachine) PersistFailed(error) int { return *m.last }

// fakeLog records the order of writes and actions.
type fakeLog struct {
	mu     sync.Mutex
	events []string
	putErr func(n int) error
	block  chan struct{} // if not nil, Perform waits on it (or ctx)
}

func (l *fakeLog) add(s string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.events = append(l.events, s)
}

func (l *fakeLog) Put(_ context.Context, r fakeRec) error {
	if l.putErr != nil {
		if err := l.putErr(r.n); err != nil {
			return err
		}
	}
	l.add(fmt.Sprintf("put %d", r.n))
	return nil
}

func (l *fakeLog) Perform(ctx context.Context, a string) (int, bool) {
	l.add(a)
	if l.block != nil {
		select {
		case <-l.block:
		case <-ctx.Done():
			return 0, false
		}
	}
	var n int
	fmt.Sscanf(a, "tick %d", &n)
	return n - 1, true
}

func clone(r fakeRec) fakeRec { return r }

func TestRunnerWritesAheadAndEnds(t *testing.T) {
	l := &fakeLog{}
	r := NewRunner[fakeRec, int, string](newFakeMachine(), l, l, fakeRec{}, clone, nil)
	if err := r.Run(context.Background(), 2); err != nil {
		t.Fatal(err)
	}
	want := []string{"put 2", "tick 2", "put 1", "tick 1", "put 0"}
	if fmt.Sprint(l.events) != fmt.Sprint(want) {
		t.Fatalf("events %v, want %v (each record written before its action)", l.events, want)
	}
	if s := r.Snapshot(); !s.done || s.n != 0 {
		t.Fatalf("final record %+v, want done at 0", s)
	}
}

func TestRunnerStopsWhenContextEnds(t *testing.T) {
	l := &fakeLog{block: make(chan struct{})}
	r := NewRunner[fakeRec, int, string](newFakeMachine(), l, l, fakeRec{}, clone, nil)
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- r.Run(ctx, 3) }()
	time.Sleep(20 * time.Millisecond)
	cancel()
	select {
	case err := <-errc:
		if !errors.Is(err, ErrStopped) {
			t.Fatalf("Run = %v, want ErrStopped", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not return after its context ended")
	}
	if s := r.Snapshot(); s.n != 3 || s.done {
		t.Fatalf("record after stop %+v, want still at 3", s)
	}
}

func TestRunnerWritesProgressSoftly(t *testing.T) {
	l := &fakeLog{}
	r := NewRunner[fakeRec, int, string](softMachine{newFakeMachine()}, l, l, fakeRec{}, clone, nil)
	r.SoftEvery = time.Hour
	if err := r.Run(context.Background(), 3); err != nil {
		t.Fatal(err)
	}
	// The first soft write goes out (nothing written yet), the next two are
	// batched, and the final record is always written.
	want := []string{"put 3", "tick 3", "tick 2", "tick 1", "put 0"}
	if fmt.Sprint(l.events) != fmt.Sprint(want) {
		t.Fatalf("events %v, want %v", l.events, want)
	}
}

// softMachine is fakeMachine with every step's write soft.
type softMachine struct{ fakeMachine }

func (m softMachine) Step(r fakeRec, o int) (fakeRec, Persist, []string) {
	r, _, a := m.fakeMachine.Step(r, o)
	return r, PersistSoft, a
}

func TestRunnerStopsWhenFenced(t *testing.T) {
	l := &fakeLog{putErr: func(n int) error {
		if n == 1 {
			return fmt.Errorf("txn: %w", ErrFenced)
		}
		return nil
	}}
	r := NewRunner[fakeRec, int, string](newFakeMachine(), l, l, fakeRec{}, clone, nil)
	err := r.Run(context.Background(), 2)
	if !errors.Is(err, ErrFenced) {
		t.Fatalf("Run = %v, want ErrFenced", err)
	}
	want := []string{"put 2", "tick 2"}
	if fmt.Sprint(l.events) != fmt.Sprint(want) {
		t.Fatalf("events %v, want %v (nothing acted on after the fenced write)", l.events, want)
	}
}

func TestRunnerRetriesTransientWrites(t *testing.T) {
	fails := 2
	l := &fakeLog{}
	l.putErr = func(int) error {
		if fails > 0 {
			fails--
			return errors.New("etcd unavailable")
		}
		return nil
	}
	r := NewRunner[fakeRec, int, string](newFakeMachine(), l, l, fakeRec{}, clone, nil)
	if err := r.Run(context.Background(), 1); err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(l.events) != fmt.Sprint([]string{"put 1", "tick 1", "put 0"}) {
		t.Fatalf("events %v", l.events)
	}
}

func TestRunnerTakesOutsideObservations(t *testing.T) {
	l := &fakeLog{block: make(chan struct{})}
	r := NewRunner[fakeRec, int, string](newFakeMachine(), l, l, fakeRec{}, clone, nil)
	errc := make(chan error, 1)
	go func() { errc <- r.Run(context.Background(), 5) }()
	if !r.Observe(context.Background(), 0) { // "cancel": jump to the end
		t.Fatal("observation not delivered")
	}
	close(l.block) // let the in-flight tick return; its observation is then ignored after done
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
}
