package sim

import (
	"time"

	"github.com/ferryvm/ferry/internal/migration/core"
)

// A graceful leader change (the HandOver fault): the leading server
// resigns — as `systemctl restart` of the leading replica does during a
// rolling upgrade — and another one takes over at once.
const (
	// HandOverWait bounds a resigning leader's wait for the handed-over
	// record to be written (the executor's bound, exec.HandOverWait).
	HandOverWait = 2 * time.Second
	// NewLeaderAfter is how soon after the resignation the next leader
	// loads the record (its campaign wins once the key is gone).
	NewLeaderAfter = 100 * time.Millisecond
)

// HandOver makes the leading server resign: its executor gets
// ObsHandOver (it plans nothing more, folds the answers still on their
// way and writes the handed-over fact); once the store holds that record,
// or after HandOverWait, the server stops (answers still on their way are
// lost; requests already sent still land) and the next leader loads the
// record NewLeaderAfter later.
func (w *World) HandOver() {
	epoch := w.epoch
	w.after(0, func() { w.deliverIf(epoch, core.Observation{Kind: core.ObsHandOver, Term: int64(epoch) + 1}) })
	start := w.Clock.now
	n := 0
	var poll func()
	poll = func() {
		if w.epoch != epoch || !w.serverUp {
			return // crashed meanwhile
		}
		stored := w.loadRecord()
		if stored.Handover.At.IsZero() && !stored.State.Terminal() && w.Clock.now.Sub(start) < HandOverWait {
			if n++; n%50 == 0 {
				// Not written yet (a failed write): ask again, as the
				// executor does every HandOverRetry.
				w.deliver(core.Observation{Kind: core.ObsHandOver, Term: int64(epoch) + 1})
			}
			w.after(10*time.Millisecond, poll)
			return
		}
		if stored.Handover.At.IsZero() {
			w.logf("leader resigns without the handed-over record (%s)", stored.State)
		} else {
			w.logf("leader resigns: record handed over in %s", stored.State)
		}
		w.serverUp = false
		w.epoch++
		w.at(w.Clock.now.Add(NewLeaderAfter), w.RestartServer)
	}
	w.after(time.Millisecond, poll)
}
