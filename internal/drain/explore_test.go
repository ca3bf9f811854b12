package drain

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand"
	"testing"

	ferryv1 "github.com/ferryvm/ferry/gen/ferry/v1"
)

// flakyRecords loses writes at random: the leader died before the write
// reached etcd (every later pass reads what was written before).
type flakyRecords struct {
	*fakeRecords
	rnd  *rand.Rand
	drop float64
}

var errLostWrite = errors.New("fake: the leader died before the write")

func (f *flakyRecords) PutEvacuation(ctx context.Context, e *ferryv1.Evacuation) error {
	if f.rnd.Float64() < f.drop {
		return errLostWrite
	}
	return f.fakeRecords.PutEvacuation(ctx, e)
}

// checkedCluster is the fake cluster with the invariants checked at
// every start: never more than 2 migrations in flight out of h1, never a
// start for a VM that already migrates (which the fake refuses, and which
// would be a second copy in flight).
type checkedCluster struct {
	*fakeCluster
	t       *testing.T
	refused int
}

func (c *checkedCluster) Migrate(ctx context.Context, vm, to, strategy string) (string, error) {
	if c.lock[vm] != "" {
		c.refused++
		c.t.Errorf("started %s again while %s is in flight", vm, c.lock[vm])
	}
	id, err := c.fakeCluster.Migrate(ctx, vm, to, strategy)
	inFlight := 0
	for _, m := range c.migs {
		if !m.done {
			inFlight++
		}
	}
	if inFlight > 2 {
		c.t.Errorf("%d migrations in flight out of h1, limit 2", inFlight)
	}
	return id, err
}

// TestExploreDrainUnderLostWritesAndFailures: for many seeds, a drain of
// five VMs with random destination failures, random lost record writes
// (a leader crash after a start, before its write) and a new runner
// (a new leader) at random passes ends, and ends right: completed exactly
// when no VM is left on the source, every VM accounted for, limits kept.
func TestExploreDrainUnderLostWritesAndFailures(t *testing.T) {
	for seed := int64(1); seed <= 1000; seed++ {
		t.Run(fmt.Sprint(seed), func(t *testing.T) {
			rnd := rand.New(rand.NewSource(seed))
			fc := newFakeCluster(5)
			if rnd.Intn(3) == 0 {
				fc.failTo["h2"] = true
			}
			if rnd.Intn(6) == 0 {
				fc.failTo["h3"] = true
			}
			c := &checkedCluster{fakeCluster: fc, t: t}
			recs := &flakyRecords{fakeRecords: &fakeRecords{m: map[string]*ferryv1.Evacuation{}}, rnd: rnd, drop: 0.15}
			newRunner := func() *Runner {
				return New(Config{Cluster: c, Records: recs, Log: slog.New(slog.NewTextHandler(io.Discard, nil)),
					IsNotFound: func(err error) bool { return errors.Is(err, errFakeNotFound) }})
			}
			r := newRunner()
			for {
				if _, err := r.Enter(context.Background(), "h1", ReasonManual); err == nil {
					break
				}
			}
			var e *ferryv1.Evacuation
			for pass := 0; ; pass++ {
				if pass > 300 {
					t.Fatalf("no end after 300 passes: %v", recs.m["h1"])
				}
				if rnd.Intn(4) == 0 {
					fc.step()
				}
				if rnd.Intn(10) == 0 {
					r = newRunner() // a leader change
				}
				r.Pass(context.Background())
				if e = recs.m["h1"]; e != nil && Terminal(e.State) {
					break
				}
			}
			left := 0
			for _, h := range fc.vmHost {
				if h == "h1" {
					left++
				}
			}
			for _, m := range fc.migs {
				if !m.done {
					t.Errorf("migration of %s still in flight after the end", m.vm)
				}
			}
			if (e.State == StateCompleted) != (left == 0) {
				t.Fatalf("state %s with %d VMs left on h1: %s", e.State, left, e.Message)
			}
			if len(e.Items) != 5 {
				t.Fatalf("%d items, want 5", len(e.Items))
			}
			for _, it := range e.Items {
				at := fc.vmHost[it.Vm]
				switch it.Status {
				case ItemCompleted:
					if at == "h1" || at != it.To {
						t.Errorf("%s completed to %s but is on %s", it.Vm, it.To, at)
					}
				case ItemFailed:
					if at != "h1" {
						t.Errorf("%s failed but is on %s", it.Vm, at)
					}
				default:
					t.Errorf("%s ended %s", it.Vm, it.Status)
				}
			}
			if !fc.failTo["h2"] && !fc.failTo["h3"] && e.State != StateCompleted {
				t.Errorf("no failing destination yet %s: %s", e.State, e.Message)
			}
		})
	}
}
