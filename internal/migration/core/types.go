package core

import (
	"fmt"
	"time"
)

// Version is the newest version of the persisted record this package
// reads and writes (statev1.MigrationRecord.version). Records of a newer
// version are refused. A record is written as version 3 only once it was
// re-planned (replan.go: an older engine must not drive an attempt whose
// strategy changed under it); every other record stays version 2.
const Version uint32 = 3

// BaseVersion is the version of a record that was never re-planned.
const BaseVersion uint32 = 2

// Strategy is how a migration moves the VM.
type Strategy string

// Strategies.
const (
	Precopy  Strategy = "precopy"  // live, pause-before-switchover
	Converge Strategy = "converge" // pre-copy with QEMU auto-converge
	Postcopy Strategy = "postcopy" // switch to post-copy after the first full round
	Hybrid   Strategy = "hybrid"   // pre-copy; post-copy when the executor's controller says so (SteerPostcopy)
	Cold     Strategy = "cold"     // stop, move the owner, boot on the destination
)

// Live reports whether s is a live strategy.
func (s Strategy) Live() bool { return s != Cold }

// UsesPostcopy reports whether both QEMUs need postcopy-ram.
func (s Strategy) UsesPostcopy() bool { return s == Postcopy || s == Hybrid }

// ParseStrategy checks a strategy name.
func ParseStrategy(s string) (Strategy, error) {
	switch Strategy(s) {
	case Precopy, Converge, Postcopy, Hybrid, Cold:
		return Strategy(s), nil
	}
	return "", fmt.Errorf("strategy: must be precopy, converge, postcopy, hybrid or cold, got %q", s)
}

// State is the engine's state of one migration (persisted).
type State string

// States. Before OwnerSwitched every failure rolls back to the source; after
// it the engine drives forward, except Unswitching (the destination was
// proven never to have run and is removed first).
const (
	Pending      State = "pending"      // recorded, nothing done yet
	Preparing    State = "preparing"    // PrepareIncoming on the destination
	Transferring State = "transferring" // StartOutgoing, then RAM rounds (and post-copy's request)
	// Mirroring: the VM has local disks: StartOutgoing started a mirror of
	// each to the destination's NBD export; RAM follows (Transferring) when
	// every mirror is ready. Like Transferring, it rolls back on failure.
	Mirroring  State = "mirroring"
	Switchover State = "switchover" // source paused at pre-switchover (or cold: stopped): CAS the owner
	Resuming   State = "resuming"   // owner is the destination: arm, continue, finish incoming

	PostcopyActive     State = "postcopy-active"     // destination runs, pulls the rest of RAM
	PostcopyPaused     State = "postcopy-paused"     // link broke: both sides paused, guest waits
	PostcopyRecovering State = "postcopy-recovering" // RecoverIncoming done, ResumeOutgoing

	Stopping State = "stopping" // cold: stop the guest on the source (running VM only)
	// Copying (cold, local disks): the stopped guest's local disks are
	// copied to the destination (allocated extents only) and verified
	// there by checksum before the owner switches; like stopping's
	// successors before the CAS, it rolls back on failure.
	Copying  State = "copying"
	Starting State = "starting" // cold: owner is the destination: boot it there (running VM only)

	// RetryWait: a live attempt that failed for a link-related reason
	// before the owner switch was cleaned up (destination removed, source
	// running); the next attempt starts at NextAttemptAt (retry.go).
	RetryWait State = "retry-wait"

	Cleanup     State = "cleanup"     // the VM lives on the destination: remove the source, release the VM record
	Unswitching State = "unswitching" // after the CAS, destination provably never ran: remove it, CAS back
	RollingBack State = "rolling-back"
	Completed   State = "completed"
	Failed      State = "failed"
	Cancelled   State = "cancelled"
)

// Terminal reports whether s is an end state.
func (s State) Terminal() bool { return s == Completed || s == Failed || s == Cancelled }

// Status is the user-facing status: running, completed, failed or cancelled.
func (s State) Status() string {
	if s.Terminal() {
		return string(s)
	}
	return "running"
}

// VMState is a VM record's state as the engine writes it.
type VMState string

// VM states.
const (
	VMRunning   VMState = "running"
	VMStopped   VMState = "stopped"
	VMPaused    VMState = "paused"
	VMFailed    VMState = "failed"
	VMMigrating VMState = "migrating"
)

// Options are the bounds of one migration (from ferryv1.MigrationOptions).
type Options struct {
	// PostcopyAtFraction makes a post-copy migration switch once round 1
	// has gone through this fraction of the guest's RAM (the planner's
	// switch point, 0..1; QEMU's remaining over total bytes); 0: after
	// round 1.
	PostcopyAtFraction float64
	// PostcopyAtBytes, when set, is the switch point as RAM bytes round 1
	// has sent (Outgoing.RAMTransferred); it takes precedence over the
	// fraction, which runs ahead of the data over zero pages.
	PostcopyAtBytes int64
	// StallTimeout fails a pre-copy (before the CAS) that makes no progress
	// this long, and pauses a post-copy that makes none (to recover it).
	StallTimeout time.Duration
	// Timeout bounds the migration up to the owner CAS.
	Timeout time.Duration
	// RecoveryWindow bounds everything after the CAS (and every cleanup
	// retry): how long the engine keeps retrying before it gives up and
	// records what it knows.
	RecoveryWindow time.Duration
	// MaxAttempts bounds how many times a live migration is tried when a
	// link-related failure ends an attempt before the owner switch
	// (retry.go); 0 or 1: never retried.
	MaxAttempts int32
	// RetryBackoff is the wait before the second attempt, doubled for each
	// further one up to MaxRetryBackoff; 0: DefaultRetryBackoff.
	RetryBackoff time.Duration
	// Auto: the planner chose the strategy (the operator asked for auto).
	// Only then may a pre-copy the controller judges not converging be
	// re-planned once as another strategy (SteerReplan, replan.go).
	Auto bool
}

// Facts are what observations proved. Each is set only when an observation
// shows it (never guessed after a restart) and persisted before the engine
// acts on it.
type Facts struct {
	DestPrepared     bool // PrepareIncoming returned a URI
	OutgoingStarted  bool // StartOutgoing returned a status
	PostcopyAsked    bool // StartPostcopy returned OK (the source switches at pre-switchover)
	SourceStopped    bool // cold: StopVM on the source returned OK (or the VM was stopped)
	OwnerSwitched    bool // the owner CAS src→dst succeeded (Generation is the new one); false again after an unswitch
	DestArmed        bool // ArmResume returned OK
	ContinueSent     bool // ContinueOutgoing returned OK
	PostcopyStarted  bool // the source reported postcopy-active (or later) after the continue
	DestRan          bool // the destination runs or ran (FinishIncoming, QueryIncoming ran, or StartVM for cold)
	DestAborted      bool // AbortIncoming (cold: DeleteVM on the destination) returned OK: it never ran and never will
	SourceResumed    bool // CancelOutgoing (cold: StartVM on the source) returned OK: the source runs
	SourceQuit       bool // FinishOutgoing (cold: DeleteVM on the source) returned OK
	SourceLost       bool // the source QEMU is gone (GetVM: absent or dead)
	DestLost         bool // the destination QEMU is gone after it ran
	VMRecordReleased bool // the VM record was written with its final state and unlocked
	ReservationFreed bool // the destination's capacity reservation was released
	GaveUp           bool // the retries ran out of their window: only the final VM record write is left
	DisksCopied      bool // cold: CopyDisks reported the local disks copied and verified by the destination's checksum
}

// Record is a migration's persisted state: everything a restarted or newly
// elected leader needs to drive it on. Fields below "volatile" are the
// executor's session with the core: they are not persisted and are reset by
// a Loaded observation.
type Record struct {
	Version  uint32
	ID       string
	VM       string
	From, To string // host names
	Strategy Strategy
	Options  Options

	State State
	// PrevVMState is the VM's state before the migration (running,
	// stopped or paused): a cold migration of a stopped VM never boots it.
	PrevVMState VMState
	// Generation is the VM record's generation the migration locked; after
	// each owner CAS, the generation the CAS wrote.
	Generation int64
	DestURI    string
	RecoverURI string // where a paused post-copy destination listens again
	// DiskURI is the destination's NBD server (host:port) exporting the
	// local disks; empty when the VM has none (no mirror, no Mirroring).
	DiskURI string
	// CopyDisks: a cold migration of a VM with local disks: they are
	// copied (Copying) before the owner switch and the source's copies
	// removed only at the cleanup (set by the executor before Start).
	CopyDisks bool
	Facts     Facts

	StartedAt time.Time
	// Deadline is StartedAt + Timeout: the end of attempts before the CAS.
	Deadline time.Time
	// SwitchedAt is when the owner CAS succeeded.
	SwitchedAt time.Time
	// GiveUpAt bounds the current phase's retries (set on entering
	// rolling-back, unswitching, and at the CAS: + RecoveryWindow).
	GiveUpAt time.Time
	// Attempts counts retried steps (bounded by deadlines, reported).
	Attempts int32

	// Progress of the transfer (for the stall timeout).
	Transferred    int64
	Rounds         int64
	LastProgressAt time.Time
	PausedAt       time.Time // post-copy paused since (zero when not paused)

	CancelRequested bool
	// PostcopyWanted: the strategy (post-copy after the first round) or the
	// controller (hybrid) decided to switch; StartPostcopy follows.
	PostcopyWanted bool
	// Error is the cause of a failure (empty on success and cancel); Note
	// is the last thing the engine wants the operator to know.
	Error string
	Note  string
	// FinishedAt is set on entering a terminal state.
	FinishedAt time.Time
	// FinalVMState is what the VM record was written with at the end.
	FinalVMState VMState

	// History is the state changes with their reason (for the report).
	History []Event

	// Attempt is the live attempt before the owner switch (1-based; 0 in a
	// version-1 record reads as 1). Agent steps use AttemptID.
	Attempt int32
	// Retrying: the rolling-back in progress cleans up an attempt that is
	// retried: the VM stays locked and the reservation kept; RetryWait follows.
	Retrying bool
	// NextAttemptAt is when RetryWait starts the next attempt.
	NextAttemptAt time.Time
	// Retries lists the attempts that failed and were retried.
	Retries []Retry

	// Handover is set by a resigning leader's executor once it stopped
	// driving the record (ObsHandOver) and cleared by the next load
	// (handover.go); zero when the last executor did not resign (crashed,
	// was cut off, or still drives it).
	Handover Handover

	vol volatile
}

// Retry is one attempt that failed before the owner switch for a
// link-related reason and was retried.
type Retry struct {
	Attempt int32
	At      time.Time // when it failed
	Reason  string
	Backoff time.Duration // the wait after its cleanup before the next attempt
	// Strategy is what the next attempt runs when the engine re-planned
	// it (replan.go); "" when it keeps the failed attempt's strategy.
	Strategy Strategy
}

// Event is one state change of a migration's history.
type Event struct {
	At      time.Time
	State   State
	Message string
}

// Side names a host of the migration.
type Side int

// Sides.
const (
	Src Side = iota
	Dst
)

// String is src or dst.
func (s Side) String() string {
	if s == Src {
		return "src"
	}
	return "dst"
}

// Host is the host name of side s.
func (r *Record) Host(s Side) string {
	if s == Src {
		return r.From
	}
	return r.To
}

// ActionKind is one thing the executor can do.
type ActionKind int

// Action kinds. Agent actions are keyed by (VM, migration id) and
// idempotent on the agent; store actions are guarded by the VM's migration
// lock or generation.
const (
	ActNone ActionKind = iota
	// Agent migration steps (MigrationAgentService).
	ActPrepareIncoming  // dst: start qemu -S -incoming defer, listen; result: URI
	ActQueryIncoming    // dst: incoming state, ran, pid
	ActArmResume        // dst: listening → armed
	ActFinishIncoming   // dst: wait until it runs, announce, adopt
	ActAbortIncoming    // dst: kill, untap, remove (refused if it ran)
	ActStartOutgoing    // src: caps, params, migrate URI
	ActQueryOutgoing    // src: QEMU's migration status (long poll: Wait, KnownStatus)
	ActStartPostcopy    // src: migrate-start-postcopy
	ActContinueOutgoing // src: migrate-continue at pre-switchover
	ActCancelOutgoing   // src: migrate_cancel, cont (ResumeCompleted: even if completed)
	ActFinishOutgoing   // src: quit the completed source, remove tap and directory
	ActPauseMigration   // either side: migrate-pause (post-copy link silent)
	ActRecoverIncoming  // dst: migrate-recover; result: URI
	ActResumeOutgoing   // src: migrate resume=true to URI
	// Agent VM steps (AgentService).
	ActStartVM  // boot the VM on Side (cold)
	ActStopVM   // stop the VM on Side (Force: kill)
	ActDeleteVM // remove the VM (QEMU, tap, directory) from Side
	ActGetVM    // the VM's real run state on Side
	// Store.
	ActCASOwner           // VM record: host := Owner if generation == Generation
	ActUpdateVM           // VM record (guarded by the migration lock): state, host, reason, unlock
	ActReleaseReservation // the destination's capacity reservation for this migration
	// Timer.
	ActSetTimer // deliver a Tick at At
	// Agent disk-copy steps (DiskAgentService, cold migration of local disks).
	ActPrepareDisks // dst: create empty copies of the local disks, listen for them; result: DiskURI
	ActCopyDisks    // src: start (or report) the sparse copy to DiskURI; result: Out (copying, completed = verified, failed)
	actCount
)

var actionNames = [...]string{
	ActNone: "none", ActPrepareIncoming: "PrepareIncoming", ActQueryIncoming: "QueryIncoming", ActArmResume: "ArmResume",
	ActFinishIncoming: "FinishIncoming", ActAbortIncoming: "AbortIncoming", ActStartOutgoing: "StartOutgoing",
	ActQueryOutgoing: "QueryOutgoing", ActStartPostcopy: "StartPostcopy", ActContinueOutgoing: "ContinueOutgoing",
	ActCancelOutgoing: "CancelOutgoing", ActFinishOutgoing: "FinishOutgoing", ActPauseMigration: "PauseMigration",
	ActRecoverIncoming: "RecoverIncoming", ActResumeOutgoing: "ResumeOutgoing", ActStartVM: "StartVM", ActStopVM: "StopVM",
	ActDeleteVM: "DeleteVM", ActGetVM: "GetVM", ActCASOwner: "CASOwner", ActUpdateVM: "UpdateVM",
	ActReleaseReservation: "ReleaseReservation", ActSetTimer: "SetTimer",
	ActPrepareDisks: "PrepareDisks", ActCopyDisks: "CopyDisks",
}

// String is the action's name (its agent RPC or store step).
func (k ActionKind) String() string {
	if k >= 0 && int(k) < len(actionNames) {
		return actionNames[k]
	}
	return fmt.Sprintf("action(%d)", int(k))
}

// IsStore reports whether k is a store write.
func (k ActionKind) IsStore() bool {
	return k == ActCASOwner || k == ActUpdateVM || k == ActReleaseReservation
}

// IsAgent reports whether k is an agent RPC.
func (k ActionKind) IsAgent() bool {
	return k >= ActPrepareIncoming && k <= ActGetVM || k == ActPrepareDisks || k == ActCopyDisks
}

// VMUpdate is what ActUpdateVM writes to the VM record, only while the
// record's migration_id is the migration's (else the result is Refused).
type VMUpdate struct {
	State  VMState
	Host   string // the owner to record (unchanged when equal)
	Reason string // the record's message (why failed/paused)
	Unlock bool   // clear migration_id: the migration no longer holds the VM
}

// Action is one thing for the executor to do. Each action yields exactly one
// Result observation (success, or an error class — a lost reply is a
// Transient error), unless the executor restarts (then it sends Loaded).
type Action struct {
	Kind ActionKind
	Side Side // agent actions: which host

	URI             string        // StartOutgoing (dest URI), ResumeOutgoing (recover URI)
	DiskURI         string        // StartOutgoing: the NBD server to mirror the local disks to; CopyDisks: the destination's receiver
	Wait            time.Duration // QueryOutgoing long poll
	KnownStatus     string        // QueryOutgoing: the status seen last
	ResumeCompleted bool          // CancelOutgoing: the destination provably never ran
	Force           bool          // StopVM: kill instead of a guest power-off
	RemoveDisks     bool          // DeleteVM: the VM's local disk images go too (else a cold source keeps them)
	Postcopy        bool          // PrepareIncoming, StartOutgoing: postcopy-ram
	AutoConverge    bool          // StartOutgoing: QEMU throttles the guest

	Owner      string // CASOwner: the new owner host
	Generation int64  // CASOwner: the expected generation
	// Record (CASOwner of a live migration) is the migration record as it
	// is once the owner switched: the executor writes it in the same store
	// transaction as the owner (both or neither), so the switch costs one
	// transaction inside the guest's pause.
	Record *Record
	Update VMUpdate

	At time.Time // SetTimer

	// MigrationID is the id agent steps are keyed by: the record's
	// AttemptID when the action was planned (set for every agent action).
	MigrationID string
}

// String renders the action for traces and scripts, e.g. CASOwner(h2@7).
func (a Action) String() string {
	switch {
	case a.Kind == ActSetTimer:
		return "SetTimer"
	case a.Kind.IsAgent():
		s := fmt.Sprintf("%s(%s)", a.Kind, a.Side)
		if a.Kind == ActCancelOutgoing && a.ResumeCompleted {
			s = fmt.Sprintf("%s(%s,resume_completed)", a.Kind, a.Side)
		}
		return s
	case a.Kind == ActCASOwner:
		return fmt.Sprintf("CASOwner(%s@%d)", a.Owner, a.Generation)
	case a.Kind == ActUpdateVM:
		s := fmt.Sprintf("UpdateVM(%s", a.Update.State)
		if a.Update.Host != "" {
			s += "@" + a.Update.Host
		}
		if a.Update.Unlock {
			s += ",unlock"
		}
		return s + ")"
	}
	return a.Kind.String()
}

// ObsKind is what an observation reports.
type ObsKind int

// Observation kinds.
const (
	// ObsResult is the result of one Action (Action, Side, Err and data).
	ObsResult ObsKind = iota
	// ObsTick is the time passing (a timer fired, or any wake-up).
	ObsTick
	// ObsLoaded: this executor just became leader, or restarted, and loaded
	// the record from the store; nothing is in flight.
	ObsLoaded
	// ObsAgentRestarted: the agent of Side restarted (its in-flight calls are
	// lost; its state is rebuilt from its QEMUs).
	ObsAgentRestarted
	// ObsCancel: the user asked to cancel.
	ObsCancel
	// ObsSteer: the executor's adaptive controller (planner.Controller) fed
	// with the transfer's samples decided something (SteerPostcopy,
	// SteerAbort).
	ObsSteer
	// ObsPersistFailed: the executor could not write the record Step asked to
	// persist; it kept the previous record and did none of the actions.
	ObsPersistFailed
	// ObsHandOver: this executor's leader resigns (Term is its term): the
	// record gets the handed-over fact, written before the executor stops
	// driving it; from then on Step asks for nothing until a next
	// executor's ObsLoaded (handover.go).
	ObsHandOver
)

var obsNames = [...]string{"result", "tick", "loaded", "agent-restarted", "cancel", "steer", "persist-failed", "hand-over"}

// String is the observation kind's name.
func (k ObsKind) String() string {
	if k >= 0 && int(k) < len(obsNames) {
		return obsNames[k]
	}
	return fmt.Sprintf("obs(%d)", int(k))
}

// ErrClass is how an action failed, as callers branch on it.
type ErrClass int

// Error classes (from the agent contract's codes).
const (
	OK        ErrClass = iota
	Transient          // Unavailable, DeadlineExceeded, a lost reply, a store write error: retry
	Refused            // FailedPrecondition (a CAS on a moved generation): the state forbids it
	NotFound           // no such VM or migration there
)

// String is the error class's name.
func (e ErrClass) String() string {
	return [...]string{"ok", "transient", "refused", "not-found"}[e]
}

// Steer is the controller's decision (ObsSteer).
type Steer int

// Steer decisions.
const (
	SteerNone Steer = iota
	SteerPostcopy
	SteerAbort
	// SteerReplan: a pre-copy the planner chose does not converge with
	// everything plain pre-copy may change: abort this attempt and retry
	// it once as Observation.Strategy (replan.go).
	SteerReplan
)

// Outgoing is the source QEMU's side (QueryOutgoing and the other source steps).
type Outgoing struct {
	// Status is QEMU's migration status: none, setup, active, pre-switchover,
	// device, completed, failed, cancelled, postcopy-active, postcopy-paused,
	// postcopy-recover.
	Status string
	// QEMUStatus is the run state (running, paused, finish-migrate, postmigrate, ...).
	QEMUStatus  string
	Transferred int64
	Rounds      int64
	Error       string
	// Remaining and Total are QEMU's RAM bytes still to send in this
	// round and of the whole guest (0: unknown).
	Remaining, Total int64
	// RAMTransferred is QEMU's RAM bytes sent in this migration (without
	// the disks' mirrors, which Transferred counts as progress).
	RAMTransferred int64
}

// Incoming is the destination's side (QueryIncoming, ArmResume, FinishIncoming).
type Incoming struct {
	// State is the agent's: listening, armed, running, adopted, aborted, failed.
	State      string
	QEMUStatus string
	Ran        bool
	PID        int64 // 0: the QEMU is gone
	Error      string
}

// VMInfo is a VM as an agent reports it (GetVM, StartVM, StopVM, CancelOutgoing).
type VMInfo struct {
	// State is running, paused, stopped or failed; absent when the agent has
	// no such VM (GetVM NotFound is reported as Result Err=NotFound instead).
	State string
	PID   int64
}

// StoreVM is the VM record as the store returned it (CASOwner, UpdateVM).
type StoreVM struct {
	Host        string
	Generation  int64
	MigrationID string
	State       string
}

// Observation is what the executor saw.
type Observation struct {
	Kind ObsKind
	Now  time.Time

	// ObsResult: which action, and how it went.
	Action ActionKind
	Side   Side
	Err    ErrClass
	ErrMsg string

	URI      string    // PrepareIncoming, RecoverIncoming
	DiskURI  string    // PrepareIncoming: the NBD server of the local disks ("" without); PrepareDisks: where the copy goes
	Out      *Outgoing // source steps
	In       *Incoming // destination steps
	VM       *VMInfo   // VM steps
	StoreVM  *StoreVM  // store steps: the record after the write, or as found when refused
	Steer    Steer     // ObsSteer
	SteerWhy string
	// Strategy is what SteerReplan retries the migration as (hybrid or
	// converge).
	Strategy Strategy
	// Term is the leadership term of the executor (ObsHandOver: the
	// resigning leader's; the election key's create revision).
	Term int64
}

// PersistMode says whether the record must be written before the actions.
type PersistMode int

// Persist modes.
const (
	// PersistNone: nothing the record holds changed.
	PersistNone PersistMode = iota
	// PersistSoft: only progress changed (bytes, rounds, times); the
	// executor may write it later or batch it (e.g. once a second).
	PersistSoft
	// PersistBefore: write-ahead. The executor writes the record and only
	// then performs the actions; if the write fails it keeps the previous
	// record, performs none of them and feeds ObsPersistFailed.
	PersistBefore
)

// Ready is what a Step asks the executor to do (like raft's Ready).
type Ready struct {
	Persist PersistMode
	Actions []Action
}
