package sim

import (
	"fmt"

	"github.com/ferryvm/ferry/internal/migration/core"
)

// WithStuckGuest makes the guest dirty faster than a plain pre-copy sends
// (call it before Start): it converges only throttled (auto-converge) or
// through post-copy. auto marks the strategy as the planner's choice
// (core.Options.Auto); as is what the executor's controller asks such a
// pre-copy to be retried as once it judges it not converging ("" asks
// nothing: the pre-copy runs until the migration's timeout).
func (w *World) WithStuckGuest(auto bool, as core.Strategy) {
	w.stuck, w.replanAs = true, as
	w.rec.Options.Auto = auto
	w.putRecord(w.rec)
}

// steerReplan is the controller of a stuck plain pre-copy: after round 3
// it asks for the retry (core.SteerReplan), on every look at the transfer
// as the real one asks again after a restart.
func (w *World) steerReplan(obs core.Observation, next core.Record) {
	if !w.stuck || w.replanAs == "" || obs.Kind != core.ObsResult || obs.Action != core.ActQueryOutgoing || next.Strategy != core.Precopy ||
		obs.Out == nil || obs.Out.Rounds < 3 || obs.Out.Status != "active" || next.State != core.Transferring {
		return
	}
	as := w.replanAs
	w.after(0, func() {
		w.deliver(core.Observation{Kind: core.ObsSteer, Steer: core.SteerReplan, Strategy: as,
			SteerWhy: fmt.Sprintf("precopy did not converge in 3s after its downtime target reached its cap 300 ms: retried as %s", as)})
	})
}

// checkReplanEnd: a stuck auto pre-copy that no fault hit completes in
// exactly two attempts, the second with the re-planned strategy; with any
// fault it is never re-planned more than once.
func (w *World) checkReplanEnd(r core.Record, faulted bool) {
	n := 0
	for _, t := range r.Retries {
		if t.Strategy != "" {
			n++
		}
	}
	if n > 1 {
		w.violate("re-planned %d times, at most once is allowed", n)
	}
	if !w.stuck || w.replanAs == "" || !r.Options.Auto || faulted {
		return
	}
	if r.State != core.Completed || r.Attempt != 2 || r.Strategy != w.replanAs || n != 1 {
		w.violate("a stuck auto pre-copy ended %s in attempt %d as %s after %d re-plan(s), want completed in attempt 2 as %s (%s)",
			r.State, r.Attempt, r.Strategy, n, w.replanAs, r.Error)
	}
}
