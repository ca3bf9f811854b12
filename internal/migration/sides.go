package migration

import "fmt"

// SourceState is the source agent's view of an outgoing live migration.
type SourceState string

// Source states.
const (
	SrcIdle          SourceState = "idle"
	SrcMigrating     SourceState = "migrating"      // migrate issued, RAM rounds
	SrcPreSwitchover SourceState = "pre-switchover" // paused, waiting for the owner CAS
	SrcContinued     SourceState = "continued"      // migrate-continue sent
	SrcCompleted     SourceState = "completed"      // QEMU reported completed: must never run again
	SrcFinished      SourceState = "finished"       // QEMU quit, taps and files removed
	SrcCancelled     SourceState = "cancelled"      // rolled back: the source runs
)

// SourceEvent drives the source machine.
type SourceEvent string

// Source events.
const (
	SrcEvStart     SourceEvent = "start"
	SrcEvPaused    SourceEvent = "reached-pre-switchover"
	SrcEvContinue  SourceEvent = "continue"
	SrcEvCompleted SourceEvent = "completed"
	SrcEvFinish    SourceEvent = "finish"
	SrcEvCancel    SourceEvent = "cancel"
)

var sourceMachine = map[SourceState]map[SourceEvent]SourceState{
	SrcIdle:          {SrcEvStart: SrcMigrating},
	SrcMigrating:     {SrcEvPaused: SrcPreSwitchover, SrcEvCancel: SrcCancelled},
	SrcPreSwitchover: {SrcEvContinue: SrcContinued, SrcEvCancel: SrcCancelled},
	SrcContinued:     {SrcEvCompleted: SrcCompleted, SrcEvCancel: SrcCancelled},
	SrcCompleted:     {SrcEvFinish: SrcFinished},
	SrcCancelled:     {SrcEvStart: SrcMigrating},
}

// StepSource returns the source state after ev, or ErrOutOfOrder.
func StepSource(s SourceState, ev SourceEvent) (SourceState, error) {
	next, ok := sourceMachine[s][ev]
	if !ok {
		return s, fmt.Errorf("source in state %s got %s: %w", s, ev, ErrOutOfOrder)
	}
	return next, nil
}

// IncomingState is the destination agent's view of an incoming migration.
type IncomingState string

// Incoming states.
const (
	InNone      IncomingState = "none"
	InListening IncomingState = "listening" // paused QEMU waiting for the stream
	InArmed     IncomingState = "armed"     // owner CAS done: resume when the state has arrived
	InRunning   IncomingState = "running"   // resumed and announced
	InAdopted   IncomingState = "adopted"   // an ordinary VM of this host now
	InAborted   IncomingState = "aborted"   // QEMU, taps and files removed
)

// IncomingEvent drives the destination machine.
type IncomingEvent string

// Incoming events.
const (
	InEvListen  IncomingEvent = "listen"
	InEvArm     IncomingEvent = "arm"
	InEvResumed IncomingEvent = "resumed"
	InEvAdopt   IncomingEvent = "adopt"
	InEvAbort   IncomingEvent = "abort"
)

var incomingMachine = map[IncomingState]map[IncomingEvent]IncomingState{
	InNone:      {InEvListen: InListening, InEvAbort: InAborted},
	InListening: {InEvArm: InArmed, InEvAbort: InAborted},
	InArmed:     {InEvResumed: InRunning, InEvAbort: InAborted},
	InRunning:   {InEvAdopt: InAdopted},
	InAborted:   {InEvListen: InListening, InEvAbort: InAborted},
}

// StepIncoming returns the destination state after ev, or ErrOutOfOrder.
// A running destination cannot be aborted: past that point the VM lives
// there.
func StepIncoming(s IncomingState, ev IncomingEvent) (IncomingState, error) {
	next, ok := incomingMachine[s][ev]
	if !ok {
		return s, fmt.Errorf("incoming migration in state %s got %s: %w", s, ev, ErrOutOfOrder)
	}
	return next, nil
}
