package exec

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"
)

// ErrStopped is returned by Run when its context ended before the
// migration did: the record holds where it stood, and whoever runs the
// engine next resumes from it.
var ErrStopped = errors.New("executor stopped before the migration ended")

// Persist says whether a step's record must be written before its actions.
type Persist int

// Persist modes (core.PersistMode).
const (
	// PersistNone: the record did not change in a way that needs writing.
	PersistNone Persist = iota
	// PersistSoft: only progress changed; written at most every SoftEvery.
	PersistSoft
	// PersistBefore: write-ahead; the actions run only once it is written.
	PersistBefore
)

// Machine is the pure core as the runner sees it: Step folds an
// observation into the record and returns the actions to perform next and
// whether the record must be written first. Step must not do I/O.
type Machine[Rec, Obs, Act any] interface {
	// Step returns the next record, how to persist it and its actions.
	Step(rec Rec, obs Obs) (Rec, Persist, []Act)
	// Done reports whether the migration of rec has ended.
	Done(rec Rec) bool
	// PersistFailed is the observation for a write-ahead that failed: the
	// runner kept the previous record and performed none of the actions.
	PersistFailed(err error) Obs
}

// Performer carries out one action and reports what it saw as an
// observation (the reply, its error, a timer firing). It runs in its own
// goroutine and must return when ctx ends; nil means nothing to report.
type Performer[Act, Obs any] interface {
	Perform(ctx context.Context, act Act) (Obs, bool)
}

// Persister writes a record before its actions run (write-ahead). An error
// wrapping ErrFenced means this executor may no longer write at all.
type Persister[Rec any] interface {
	Put(ctx context.Context, rec Rec) error
}

// ErrFenced is what a Persister's error wraps when the write was refused
// because this replica is no longer the leader: the runner stops.
var ErrFenced = errors.New("store write fenced: not the leader")

// Runner drives one migration: a loop of Step, write-ahead Put, perform.
// Only its own goroutine touches rec; Snapshot gives readers a copy.
type Runner[Rec, Obs, Act any] struct {
	m     Machine[Rec, Obs, Act]
	p     Performer[Act, Obs]
	store Persister[Rec]
	log   *slog.Logger
	clone func(Rec) Rec

	obs chan Obs

	mu  sync.Mutex
	rec Rec

	// SoftEvery is how often a record whose only changes are progress
	// figures is written.
	SoftEvery time.Duration
	lastPut   time.Time
	softDirty bool
}

// NewRunner returns a Runner starting from rec. clone copies a record for
// Snapshot (records are shared with readers only as copies).
func NewRunner[Rec, Obs, Act any](m Machine[Rec, Obs, Act], p Performer[Act, Obs], store Persister[Rec], rec Rec, clone func(Rec) Rec, log *slog.Logger) *Runner[Rec, Obs, Act] {
	if log == nil {
		log = slog.Default()
	}
	return &Runner[Rec, Obs, Act]{m: m, p: p, store: store, log: log, clone: clone, rec: rec, obs: make(chan Obs, 16), SoftEvery: time.Second}
}

// Snapshot returns a copy of the current record.
func (r *Runner[Rec, Obs, Act]) Snapshot() Rec {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.clone(r.rec)
}

// Observe hands the runner an observation from outside (a cancel request,
// a leader's "recovered" notice). It blocks until the runner takes it or
// ctx ends, and reports whether it was delivered.
func (r *Runner[Rec, Obs, Act]) Observe(ctx context.Context, o Obs) bool {
	select {
	case r.obs <- o:
		return true
	case <-ctx.Done():
		return false
	}
}

// Run steps the machine from first until the migration is done (actions
// still in flight are then cancelled and awaited), or ctx ends (ErrStopped: in-flight
// actions are cancelled and awaited, nothing more is written), or a write
// is fenced.
func (r *Runner[Rec, Obs, Act]) Run(ctx context.Context, first Obs) error {
	type result struct {
		o  Obs
		ok bool
	}
	actx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer func() {
		cancel()
		wg.Wait()
	}()
	results := make(chan result)
	next, have := first, true
	for {
		if have && r.m.Done(r.current()) {
			have = false // a late reply after the end: nothing left to decide
		}
		if have {
			have = false
			rec, mode, acts := r.m.Step(r.current(), next)
			if err := r.persist(ctx, rec, mode); err != nil {
				if errors.Is(err, ErrFenced) || ctx.Err() != nil {
					return err
				}
				r.log.Warn("write-ahead of the migration record failed", "err", err)
				next, have = r.m.PersistFailed(err), true
				continue
			}
			r.mu.Lock()
			r.rec = rec
			r.mu.Unlock()
			for _, a := range acts {
				wg.Add(1)
				go func() {
					defer wg.Done()
					o, ok := r.p.Perform(actx, a)
					select {
					case results <- result{o, ok}:
					case <-actx.Done():
					}
				}()
			}
		}
		if r.m.Done(r.current()) {
			return nil // what is still in flight no longer matters: cancelled and awaited on return
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w: %w", ErrStopped, ctx.Err())
		case res := <-results:
			next, have = res.o, res.ok
		case o := <-r.obs:
			next, have = o, true
		}
	}
}

// current is the record as of the last step.
func (r *Runner[Rec, Obs, Act]) current() Rec {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.rec
}

// persist writes rec as mode asks: before its actions (write-ahead), or
// batched when only progress changed; a final record is always written.
func (r *Runner[Rec, Obs, Act]) persist(ctx context.Context, rec Rec, mode Persist) error {
	if mode == PersistSoft {
		r.softDirty = true
		if time.Since(r.lastPut) < r.SoftEvery && !r.m.Done(rec) {
			return nil
		}
	} else if mode == PersistNone && !(r.softDirty && r.m.Done(rec)) {
		return nil
	}
	pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := r.store.Put(pctx, rec); err != nil {
		if mode == PersistSoft && !errors.Is(err, ErrFenced) {
			r.log.Warn("write migration progress failed; will retry", "err", err)
			return nil // progress only: the next write carries it
		}
		return fmt.Errorf("persist migration record: %w", err)
	}
	r.lastPut, r.softDirty = time.Now(), false
	return nil
}
