package exec

import (
	"context"
	"fmt"

	ferryv1 "github.com/ferryvm/ferry/gen/ferry/v1"
	"github.com/ferryvm/ferry/internal/migration/core"
	"github.com/ferryvm/ferry/internal/planner"
)

// newAttempt runs before a record is written: when it starts a new
// attempt, the adaptive controller starts afresh (its samples and rounds
// are the new attempt's), and when that attempt runs another strategy
// (core replan.go) the report is re-planned for it first (Config.Replan:
// its tuning and prediction), the next steps get its knobs and the
// controller is that strategy's. It all happens before the record that
// names the new attempt is written, so a restarted server reads the
// re-planned report with it. An error leaves everything as it was.
func (w *recordWriter) newAttempt(ctx context.Context, rec core.Record) error {
	if rec.Attempt == w.attempt && rec.Strategy == w.strategy {
		return nil
	}
	if rec.Strategy != w.strategy {
		m := w.rep.snapshot(true)
		m.Strategy = string(rec.Strategy)
		if opt := m.GetOptions(); opt != nil {
			m.Options.Strategy = string(rec.Strategy)
		}
		if w.e.cfg.Replan != nil {
			if err := w.e.cfg.Replan(ctx, m, string(rec.Strategy)); err != nil {
				return fmt.Errorf("re-plan migration %s as %s for attempt %d: %w", rec.ID, rec.Strategy, rec.Attempt, err)
			}
		}
		w.rep.replanned(m)
		if w.retuned != nil {
			w.retuned(m)
		}
		w.log.Info("migration re-planned", "attempt", rec.Attempt, "from", w.strategy, "strategy", rec.Strategy)
	}
	w.rep.restartController(w.e.cfg.Controller(w.rep.snapshot(false)))
	w.attempt, w.strategy = rec.Attempt, rec.Strategy
	return nil
}

// replanned takes the re-planned report's plan, prediction and options.
func (r *reporter) replanned(m *ferryv1.Migration) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.m.Strategy = m.Strategy
	r.m.Plan, r.m.Predicted = m.GetPlan(), m.GetPredicted() // m is the caller's copy
	r.m.Options = m.GetOptions()
}

// restartController gives a new attempt its controller: nothing steered
// yet, and its elapsed time counted from its own transfer's start (the
// next StartOutgoing's answer; the last attempt's figures are dropped).
func (r *reporter) restartController(c *planner.Controller) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.ctrl, r.steered, r.lastOut = c, false, nil
}
