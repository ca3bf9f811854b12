// Package core is Ferry's migration engine as a pure step function, in the
// manner of etcd-io/raft's Ready loop:
//
//	next, ready := core.Step(record, observation)
//
// A Record is the persisted state of one migration; an Observation is what
// the executor saw; Ready says whether the new record must be written
// before anything else (write-ahead) and which Actions to perform. The
// package does no I/O, reads no clock (time arrives as Observation.Now),
// starts no goroutine and draws no random number. The executor
// (internal/migration/exec) performs the actions against the real agents
// and store; the simulation (internal/migration/sim) performs them against
// fakes and injects faults at every step.
//
// # Executor contract
//
//   - Start a migration with New (the VM record already locked: state
//     migrating, migration_id set, its generation in the record), and
//     drive it by feeding ObsLoaded first — also after a restart or a
//     leadership change, with the record read back from the store
//     (FromProto). Nothing else survives a restart: the record is the truth.
//   - For each Step: if Ready.Persist is PersistBefore, write the record
//     (ToProto) and only then perform the actions; if the write fails,
//     keep the previous record, perform nothing and feed ObsPersistFailed.
//     PersistSoft records only progress (bytes, rounds, times): write it
//     when convenient (e.g. at most once a second).
//   - Every action yields exactly one ObsResult (Action and Side copied),
//     with an error class: OK, Transient (Unavailable, DeadlineExceeded, a
//     lost reply, a store error), Refused (FailedPrecondition; a CAS on a
//     moved generation), NotFound. Actions of one Ready may run
//     concurrently; results may come in any order. ActSetTimer yields an
//     ObsTick at (or after) At.
//   - CASOwner and UpdateVM results carry the VM record (StoreVM): after the
//     write, or as found when refused — the core recognises its own CAS
//     whose reply was lost. UpdateVM writes only while the record's
//     migration_id is the migration's (else Refused) and should bump the
//     generation, so that no stale CAS can land after the release.
//   - Hybrid's post-copy switch and the controller's abort are decided by
//     the executor's planner.Controller from the transfer's samples and fed
//     as ObsSteer. Cancel requests are fed as ObsCancel, agent restarts
//     (a new heartbeat session) as ObsAgentRestarted.
//   - The public report (ferryv1.Migration) is rendered by the executor from
//     the record (State, Status, Error, History, FinishedAt) and its own
//     figures (samples, downtime phases), kept in the record proto's report
//     field. The core has no renderer.
//
// # Agent contract the core relies on
//
// Every agent step is keyed by (VM, migration id), idempotent, and answers
// the same after an agent restart. Beyond the briefing's contract the core
// relies on: QueryOutgoing answers status "none" for a VM whose QEMU runs
// but knows no such migration, NotFound when the VM's QEMU is gone (the
// core then asks GetVM to tell the two apart); CancelOutgoing returns the
// source's VM status (its real run state, paused = "paused"); FinishIncoming
// of an adopted destination answers OK with pid 0 once that QEMU died;
// AbortIncoming is refused once the destination ran — which makes an OK
// abort the proof that it never ran and never will; CancelOutgoing keeps
// the id it cancelled, so that a StartOutgoing of that id arriving late is
// refused (never a transfer the engine already rolled back).
// Calls still on their way when an executor restarts are bounded by
// StartGrace (StartVM, StopVM): cold paths that could race with them wait.
//
// # States
//
//	live:   pending → preparing → transferring → switchover ─CAS─▶ resuming ─┬─▶ cleanup → completed
//	                      │            │              │                      └─▶ postcopy-active ⇄ postcopy-paused
//	                      └────────────┴──────────────┴──▶ rolling-back              │      postcopy-recovering
//	                                                         → failed | cancelled    └─▶ cleanup → completed
//	        preparing | transferring ─(link failure, attempts left)─▶ rolling-back (Retrying) → retry-wait ─▶ preparing (retry.go)
//	        resuming ─(destination provably never ran)─▶ unswitching ─CAS back─▶ rolling-back → failed
//	        resuming | postcopy-* ─(the VM's only QEMU died)─▶ cleanup (Error set) → failed
//	        preparing → mirroring → transferring (local disks: mirrored to the destination's
//	        NBD export before RAM; mirroring rolls back like transferring)
//	cold:   pending → stopping → switchover ─CAS─▶ starting → cleanup → completed
//	        (a stopped VM skips stopping's StopVM and starting's StartVM: it is never booted)
//	        stopping → copying → switchover (local disks, Record.CopyDisks: PrepareDisks on the
//	        destination, CopyDisks from the source until the destination verified every checksum;
//	        copying rolls back: DeleteVM(dst, RemoveDisks), StartVM(src); cleanup's DeleteVM(src)
//	        removes the source's disks only with DisksCopied)
//	        starting ─(StartVM refused and GetVM: not running)─▶ unswitching ─CAS back─▶ rolling-back (StartVM src if it ran)
//
// Before the owner CAS (Facts.OwnerSwitched) every failure — an error,
// the stall timeout, the overall timeout, a cancel, a refused CAS — rolls
// back: CancelOutgoing and AbortIncoming (cold: StartVM on the source if
// the VM ran), then the VM record gets what the source's QEMU really does.
// A record loaded (restart, new leader) in preparing, mirroring,
// transferring is adopted: driven on from its state, whether the previous
// leader handed it over (ObsHandOver: Record.Handover) or was lost
// (handover.go; stopping and copying go on too); a destination agent silent for
// DestUnreachable before the CAS rolls back, and that rollback may end
// without the destination's removal (never armed, it cannot run; its
// agent's orphan reaper removes it). Stopping is bounded by the timeout
// only, never the stall timeout (no StopVM may still be on its way when a
// rollback starts the guest again).
//
// After the CAS the engine drives forward, bounded by the recovery window;
// a destination not armed within the stall timeout of the CAS was never
// sent the device state and is unswitched without waiting for its removal;
// the only way back is unswitching, which first removes the destination
// (AbortIncoming OK proves it never ran), then moves the owner back, then
// resumes the source with resume_completed. A destination that has run is
// never removed: if it died after it ran the VM is lost and recorded failed.
// A restart in any state drives from that state: the plan of every state is
// derived from the state and the facts alone, and every action is
// idempotent, so a restarted executor repeats the last steps safely (an
// adopted destination answers ArmResume OK; a CAS already done is
// recognised).
//
// Post-copy: StartPostcopy makes the source stop at pre-switchover like any
// switchover, so the owner CAS still happens with both QEMUs paused. After
// continue the destination runs and pulls pages (postcopy-active). A
// source that reports postcopy-paused, or no progress for the stall
// timeout (PauseMigration on both sides), leads to postcopy-paused;
// every RecoverEvery the engine tries RecoverIncoming then ResumeOutgoing
// (postcopy-recovering), and counts the post-copy recovered only when the
// source reports postcopy-active again (QEMU reconnects on its own after
// taking the resume; one that does not run within the stall timeout pauses
// again, postcopy.go). Past the recovery window it gives up and says
// where the guest and its pages are.
//
// # Facts
//
// Facts are set only by an observation that proves them and persisted
// before the engine acts on them: DestPrepared, OutgoingStarted,
// PostcopyAsked, SourceStopped, OwnerSwitched (with the generation the CAS
// wrote), DestArmed, ContinueSent, PostcopyStarted, DestRan, DestAborted,
// SourceResumed, SourceQuit, SourceLost, DestLost, VMRecordReleased,
// ReservationFreed. What the core does not know it asks for (GetVM,
// QueryIncoming, QueryOutgoing) instead of guessing.
//
// # Bounds
//
// Before the CAS: Options.Timeout from the start and Options.StallTimeout
// without progress (any state). After the CAS and in every rollback:
// Options.RecoveryWindow (GiveUpAt). Transient errors are retried after
// RetryBackoff; a step whose answer changed nothing is not repeated sooner.
//
// # Testing
//
// testdata/*.txt are scripts run by TestScripts over sim.Interp (commands:
// start, run, crash server|agent, hand over, kill qemu, drop request|reply,
// cut, link down, fail store, cancel, state, history; -args -rewrite
// regenerates them). The
// exhaustive fault exploration is in internal/migration/sim:
//
//	go test ./internal/migration/sim -run TestFaultExploration -v
package core
