// Package migration holds the state machines of a migration: the control
// plane's (Machine, persisted per migration) and the two agents' (Source,
// Incoming). Each is a transition table with a Step function that rejects
// events out of order, so a late, repeated or confused step is an error
// instead of an action. The package is pure: no I/O.
package migration

import (
	"errors"
	"fmt"
)

// ErrOutOfOrder is returned by Step for an event the current state does not
// accept.
var ErrOutOfOrder = errors.New("event out of order")

// State is a control-plane migration state (persisted in etcd).
type State string

// Control-plane states. Before Committed every failure rolls back to the
// source; Committed is the point of no return (the owner record names the
// destination).
const (
	Pending      State = "pending"      // recorded, nothing done yet
	Preparing    State = "preparing"    // destination QEMU starting with -incoming defer
	Transferring State = "transferring" // source sending RAM rounds
	Switchover   State = "switchover"   // both paused at pre-switchover: CAS the owner
	Resuming     State = "resuming"     // owner is the destination: device state, resume, announce
	Cleanup      State = "cleanup"      // destination runs: remove the source QEMU and taps
	Completed    State = "completed"

	Stopping State = "stopping" // cold: stopping the guest on the source
	Copying  State = "copying"  // cold: copying the VM's files to the destination
	Starting State = "starting" // cold: owner is the destination: boot it there

	Unswitching State = "unswitching" // destination never ran: CAS the owner back
	RollingBack State = "rolling-back"
	Failed      State = "failed"
	Cancelled   State = "cancelled"
)

// Event drives the control-plane machine.
type Event string

// Control-plane events.
const (
	EvBeginLive        Event = "begin-live"     // pending → preparing
	EvBeginCold        Event = "begin-cold"     // pending → stopping
	EvPrepared         Event = "prepared"       // destination listens
	EvPreSwitchover    Event = "pre-switchover" // source paused with the last RAM sent
	EvStopped          Event = "stopped"        // cold: guest stopped
	EvCopied           Event = "copied"         // cold: files on the destination
	EvCommitted        Event = "committed"      // owner CAS succeeded
	EvResumed          Event = "resumed"        // destination runs
	EvCleaned          Event = "cleaned"        // source removed
	EvFail             Event = "fail"           // an error before the point of no return
	EvCancel           Event = "cancel"         // the user cancelled
	EvDestNeverRan     Event = "dest-never-ran" // failure after the CAS, destination never ran
	EvUnswitched       Event = "unswitched"     // owner CAS back to the source succeeded
	EvRolledBack       Event = "rolled-back"    // source runs, destination removed (failure)
	EvRolledBackByUser Event = "rolled-back-cancelled"
)

var machine = map[State]map[Event]State{
	Pending:      {EvBeginLive: Preparing, EvBeginCold: Stopping, EvFail: RollingBack, EvCancel: RollingBack},
	Preparing:    {EvPrepared: Transferring, EvFail: RollingBack, EvCancel: RollingBack},
	Transferring: {EvPreSwitchover: Switchover, EvFail: RollingBack, EvCancel: RollingBack},
	Switchover:   {EvCommitted: Resuming, EvFail: RollingBack, EvCancel: RollingBack},
	Resuming:     {EvResumed: Cleanup, EvDestNeverRan: Unswitching},
	Cleanup:      {EvCleaned: Completed},
	Stopping:     {EvStopped: Copying, EvFail: RollingBack, EvCancel: RollingBack},
	Copying:      {EvCopied: Switchover, EvFail: RollingBack, EvCancel: RollingBack},
	Starting:     {EvResumed: Cleanup, EvDestNeverRan: Unswitching},
	Unswitching:  {EvUnswitched: RollingBack},
	RollingBack:  {EvRolledBack: Failed, EvRolledBackByUser: Cancelled},
}

// Step returns the state after ev, or ErrOutOfOrder. A cold migration's
// commit leads to Starting instead of Resuming.
func Step(s State, ev Event, cold bool) (State, error) {
	next, ok := machine[s][ev]
	if !ok {
		return s, fmt.Errorf("migration in state %s got %s: %w", s, ev, ErrOutOfOrder)
	}
	if cold && next == Resuming {
		next = Starting
	}
	return next, nil
}

// Terminal reports whether s is an end state.
func (s State) Terminal() bool { return s == Completed || s == Failed || s == Cancelled }

// Committed reports whether the owner record already names the destination
// in s: recovery must then drive forward, never resume the source.
func (s State) Committed() bool {
	return s == Resuming || s == Starting || s == Cleanup || s == Completed
}

// Status is the user-facing status of s: running, completed, failed or
// cancelled.
func (s State) Status() string {
	if s.Terminal() {
		return string(s)
	}
	return "running"
}

// Cancellable reports whether a cancel can still roll the migration back.
func (s State) Cancellable() bool {
	_, ok := machine[s][EvCancel]
	return ok
}
