package core

import (
	"fmt"
	"time"
)

// ErrRestarted is the cause older engines recorded for a live migration
// a control-plane restart (or a change of leader) interrupted before the
// owner switch: they rolled it back. This engine adopts such a migration
// instead (handover.go) and no longer records it; it is kept for records
// written by older engines and for callers that recognise it.
const ErrRestarted = "the control plane restarted during the migration"

// DestUnreachable is how long the destination agent may stay silent
// before the owner switch before the migration rolls back: its QEMU may be
// gone with it, and nothing can be decided about the destination without
// it (its own restart takes about a second).
const DestUnreachable = 5 * time.Second

// destReachable tracks the destination agent's answers while preparing or
// transferring, and rolls back once it has not answered for
// DestUnreachable.
func (r *Record) destReachable(obs Observation) {
	if obs.Side != Dst || !obs.Action.IsAgent() {
		return
	}
	if obs.Err != Transient {
		r.vol.dstDown = time.Time{}
		return
	}
	if r.Facts.OwnerSwitched || (r.State != Preparing && r.State != Mirroring && r.State != Transferring && r.State != Copying && r.State != RollingBack) {
		return
	}
	if r.vol.dstDown.IsZero() {
		r.vol.dstDown = obs.Now
		return
	}
	if r.State != RollingBack && obs.Now.Sub(r.vol.dstDown) >= DestUnreachable {
		r.failAttempt(obs.Now, fmt.Sprintf("destination agent on %s unreachable for %s: %s", r.To, DestUnreachable, obs.ErrMsg))
	}
}

// destLeftToAgent reports whether a rollback may end without the
// destination's removal confirmed: its agent has not answered for
// DestUnreachable. The owner never switched, so the source was never sent
// migrate-continue: the destination QEMU (even one armed at the
// switchover) never gets the device state and cannot run; its agent
// removes an arrival that no migration in flight names when it is back
// (the orphan reaper).
func (r *Record) destLeftToAgent(now time.Time) bool {
	return !r.Facts.OwnerSwitched && !r.vol.dstDown.IsZero() && now.Sub(r.vol.dstDown) >= DestUnreachable
}
