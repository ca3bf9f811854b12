package server

// The fixed time of a migration, learned: what a live migration takes
// besides QEMU's own migration (the destination's start, the streams'
// setup, the guest-alive check, the records), so evacuation ETAs include
// it instead of the planner's 0.1 s default.

import (
	"sync"
	"time"

	ferryv1 "github.com/ferryvm/ferry/gen/ferry/v1"
	"github.com/ferryvm/ferry/internal/ewma"
)

// overheadWeight is the weight of the newest migration in the average.
const overheadWeight = 0.3

// overheads keeps the exponentially weighted average of the fixed time of
// the cluster's completed live migrations. The zero value is ready to use.
type overheads struct {
	mu    sync.Mutex
	fixed ewma.Average // nanoseconds
	// start is the average time an agent took to start a VM's QEMU: the
	// prior before any migration completed (a destination starts one).
	start ewma.Average // nanoseconds
}

// fold adds d to a with weight overheadWeight.
func fold(a *ewma.Average, d time.Duration) {
	a.Alpha = overheadWeight
	a.Add(float64(d))
}

// observeStart folds in how long an agent's StartVM took.
func (o *overheads) observeStart(d time.Duration) {
	if d <= 0 || d > 5*time.Minute {
		return
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	fold(&o.start, d)
}

// observe folds in a finished migration's report: its wall time from the
// start to completed less QEMU's own total (which the planner predicts).
func (o *overheads) observe(m *ferryv1.Migration) {
	if m.GetStatus() != "completed" || m.GetStrategy() == "cold" || m.GetStartedAt() == nil || m.GetFinishedAt() == nil || m.GetTotalMs() <= 0 {
		return
	}
	wall := m.GetFinishedAt().AsTime().Sub(m.GetStartedAt().AsTime())
	fixed := wall - time.Duration(m.GetTotalMs())*time.Millisecond
	if fixed <= 0 || fixed > 10*time.Minute {
		return
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	fold(&o.fixed, fixed)
}

// setup is the learned fixed time: from completed live migrations, else
// the time a QEMU takes to start, else 0 (the planner's default).
func (o *overheads) setup() time.Duration {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.fixed.N > 0 {
		return time.Duration(o.fixed.Value)
	}
	return time.Duration(o.start.Value)
}
