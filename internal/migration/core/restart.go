package core

import "time"

// ErrRestarted is the cause recorded for a migration a control-plane
// restart (or a change of leader) interrupted before the owner switch.
const ErrRestarted = "the control plane restarted during the migration"

// rollbackInterrupted applies the rule for a record loaded by a new
// executor: a migration that was preparing or transferring (or stopping a
// cold guest) and had not switched the owner is rolled back, as the fault
// model promises ("rolls back before the owner switch"); the source still
// runs the guest. A pending migration has done nothing yet and starts; one
// at the switchover first learns from the owner CAS whether it happened.
func (r *Record) rollbackInterrupted(now time.Time) {
	if r.Facts.OwnerSwitched {
		return
	}
	switch r.State {
	case Preparing, Transferring, Stopping:
		r.rollback(now, ErrRestarted, false)
	}
}
