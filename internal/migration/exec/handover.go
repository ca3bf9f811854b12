package exec

import (
	"context"
	"sync"
	"time"

	"github.com/ferryvm/ferry/internal/migration/core"
)

// HandOverWait bounds Engine.HandOver: a migration whose handed-over
// record is not written by then is left as it was last written (the next
// leader adopts it as after a crash).
const HandOverWait = 3 * time.Second

// handOverRetry is how often a handover not yet written is asked again
// (its write may have failed).
const handOverRetry = 500 * time.Millisecond

// HandOver stops this engine from driving its migrations for a leader that
// resigns, while it still leads (its writes still pass the fence): each
// runner gets core.ObsHandOver — it plans nothing more, folds in the
// answers still on their way, and writes its record with the handed-over
// fact (term: the resigning leader's). It returns once every record was
// written, or at ctx's end, with how many were handed over and how many
// were left as last written. Start and Cancel are refused from then on;
// the caller ends Run's context next, then resigns. The next leader
// adopts every migration either way (core/handover.go).
func (e *Engine) HandOver(ctx context.Context, term int64) (handed, left int) {
	e.mu.Lock()
	e.handing = true
	runs := make([]*run, 0, len(e.runs))
	for _, rp := range e.runs {
		runs = append(runs, rp)
	}
	e.mu.Unlock()
	var mu sync.Mutex
	var wg sync.WaitGroup
	for _, rp := range runs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ok := e.handOver(ctx, rp, term)
			mu.Lock()
			defer mu.Unlock()
			if ok {
				handed++
			} else {
				left++
			}
		}()
	}
	wg.Wait()
	return handed, left
}

// handOver hands one migration over; it reports whether its record now
// carries the handed-over fact (or the migration ended meanwhile).
func (e *Engine) handOver(ctx context.Context, rp *run, term int64) bool {
	var asked time.Time
	for {
		runner, rec := rp.current()
		switch {
		case rec.State.Terminal():
			return true
		case !rec.Handover.At.IsZero():
			e.cfg.Log.Info("migration handed over to the next leader", "id", rec.ID, "vm", rec.VM, "state", rec.State, "term", term)
			return true
		case runner == nil:
			return false // still being set up: its stored record is where it stands
		}
		if time.Since(asked) >= handOverRetry {
			if !runner.Observe(ctx, core.Observation{Kind: core.ObsHandOver, Now: e.cfg.Clock.Now(), Term: term}) {
				return false
			}
			asked = time.Now()
		}
		select {
		case <-ctx.Done():
			e.cfg.Log.Warn("migration not handed over in time: the next leader adopts it as last written", "id", rec.ID, "state", rec.State)
			return false
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// handingOver reports whether HandOver was called since Run began.
func (e *Engine) handingOver() bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.handing
}
