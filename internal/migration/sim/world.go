package sim

import (
	"container/heap"
	"fmt"
	"math/rand"
	"strings"
	"time"

	statev1 "github.com/ferryvm/ferry/gen/ferry/state/v1"
	"github.com/ferryvm/ferry/internal/migration/core"
	"google.golang.org/protobuf/proto"
)

// Simulation constants (simulated time).
const (
	Tick        = 100 * time.Millisecond // QEMU's progress: one round, one post-copy chunk
	NetLatency  = time.Millisecond
	RPCTimeout  = 2 * time.Second // a lost request or reply surfaces as a transient error after this
	ServerDown  = time.Second     // a crashed server restarts after this
	AgentDown   = 3 * time.Second // a crashed agent restarts after this
	CutFor      = 5 * time.Second // a server↔agent partition lasts this long
	LinkDownFor = 4 * time.Second // an agent↔agent partition lasts this long
	FreezeFor   = 6 * time.Second // the server stalls this long (a timeout fires)
	DelayFor    = 8 * time.Second // a delayed request reaches its agent this late
	MaxSimTime  = 30 * time.Minute
	OrphanGrace = 2 * time.Minute // an agent removes an arrival no in-flight migration names after this
	// ReconnectFor is how long a resumed post-copy source keeps trying to
	// reach its destination before it is paused again.
	ReconnectFor = 3 * time.Second
)

// SimOptions are the migration's bounds in the simulation.
// Retries are on (3 attempts, 2 s backoff): a link-related failure before
// the owner switch is cleaned up and tried again.
var SimOptions = core.Options{StallTimeout: 5 * time.Second, Timeout: 2 * time.Minute, RecoveryWindow: 2 * time.Minute,
	MaxAttempts: 3, RetryBackoff: 2 * time.Second}

const (
	vmName = "vm1"
	migID  = "mig-1"
)

type event struct {
	at  time.Time
	seq int
	fn  func()
}

type eventQueue []*event

func (q eventQueue) Len() int { return len(q) }
func (q eventQueue) Less(i, j int) bool {
	if !q[i].at.Equal(q[j].at) {
		return q[i].at.Before(q[j].at)
	}
	return q[i].seq < q[j].seq
}
func (q eventQueue) Swap(i, j int) { q[i], q[j] = q[j], q[i] }
func (q *eventQueue) Push(x any)   { *q = append(*q, x.(*event)) }
func (q *eventQueue) Pop() any {
	old := *q
	e := old[len(old)-1]
	*q = old[:len(old)-1]
	return e
}

// World is one deterministic simulation: two hosts with fake agents and
// QEMUs, a fake store, a fake clock, and the server running the real core
// through a small in-process executor. Single-threaded; the seed only
// orders what would race.
type World struct {
	Clock  FakeClock
	Agents [2]*FakeAgent
	Store  *FakeStore
	rng    *rand.Rand

	q   eventQueue
	seq int

	strategy core.Strategy
	prev     core.VMState
	disks    bool // the VM has a local disk (WithLocalDisks)
	// roundTicks is how many ticks of RAM transfer one round lasts
	// (WithPostcopyAtBytes; 1 otherwise).
	roundTicks int64

	// the server
	serverUp bool
	epoch    int
	rec      core.Record
	lastSoft time.Time
	frozen   time.Time // the server does nothing until then

	cutUntil [2]time.Time // server ↔ agent
	// stuckResume: the next ResumeOutgoing hangs (FakeQEMU.stuck).
	stuckResume bool
	linkUntil   time.Time // agent ↔ agent

	nextPID  int64
	nextBoot int
	origBoot int

	// Steps counts the actions the executor performed (timers excluded);
	// Trace lists them with the faults, for reports.
	Steps int
	Trace []string
	// Hook, when set, runs before action number Steps is performed; it may
	// inject a fault. It returns what to do with the action itself.
	Hook func(w *World, k int, a core.Action) Disposition

	// Violations found by the checker.
	Violations []string
	qemuKilled bool // a fault killed a QEMU of the VM
	twoSeen    bool
	// foreignSince: a QEMU of the VM runs on a host its record does not name since
	foreignSince time.Time
	lagSeen      bool
	// Mutate, when set, rewrites the core's output (a deliberately broken rule).
	Mutate func(rec core.Record, ready *core.Ready)

	// flaps is how many more attempts the scenario flaps (retry.go);
	// flapped the last attempt it did; flapsAsked the scenario's count.
	flaps, flapsAsked int
	flapped           int32
	retrySeen         bool
	lateRequest       bool // a request was delayed past its caller's deadline
	corruptCopy       bool // the cold disk copy arrives corrupted (its checksum differs)
	// stuck: the guest dirties faster than plain pre-copy sends (it
	// converges only throttled or through post-copy); replanAs is what the
	// controller asks a stuck pre-copy to be retried as (replan.go).
	stuck    bool
	replanAs core.Strategy
}

// Disposition says what happens to one action.
type Disposition int

// Dispositions.
const (
	DispDeliver      Disposition = iota
	DispLoseRequest              // never reaches its target: a transient error after RPCTimeout
	DispLoseReply                // done, but the executor sees a transient error after RPCTimeout
	DispStoreFailure             // a store write that fails (not applied)
	DispDrop                     // the server crashed before it: nothing happens
	DispDelay                    // arrives after DelayFor; the executor sees a timeout after RPCTimeout
)

// NewWorld sets up a VM running (or stopped, for cold) on the source host.
func NewWorld(s core.Strategy, prev core.VMState, seed int64) *World {
	w := &World{rng: rand.New(rand.NewSource(seed)), strategy: s, prev: prev, nextPID: 100, roundTicks: 1}
	w.Clock.now = time.Date(2026, 12, 1, 8, 0, 0, 0, time.UTC)
	w.Agents[core.Src] = &FakeAgent{w: w, side: core.Src, Host: "h1", Up: true}
	w.Agents[core.Dst] = &FakeAgent{w: w, side: core.Dst, Host: "h2", Up: true}
	src := &vmOnHost{dir: true}
	if prev == core.VMRunning {
		src.qemu, src.tap = w.newQEMU(w.newBoot()), true
		src.qemu.Run = "running"
	}
	w.origBoot = w.nextBoot
	w.Agents[core.Src].vm = src
	w.Store = &FakeStore{VM: FakeStoreVM{Host: "h1", Generation: 7, State: string(core.VMMigrating), MigrationID: migID}, Reservation: true}
	rec, err := core.New(migID, vmName, "h1", "h2", s, prev, 7, SimOptions, w.Clock.now)
	if err != nil {
		panic(err)
	}
	w.rec = rec
	w.putRecord(rec)
	w.serverUp = true
	return w
}

// WithLocalDisks gives the VM a local disk on the source (call it before
// Start): a live migration mirrors it to the destination's NBD export.
func (w *World) WithLocalDisks() {
	w.disks = true
	if v := w.Agents[core.Src].vm; v != nil {
		v.disk, v.diskSynced = true, true
	}
	if w.strategy == core.Cold {
		// A cold migration copies it (core.Copying) before the owner switch.
		w.rec.CopyDisks = true
		w.putRecord(w.rec)
	}
}

// WithPostcopyAtBytes sets the record's post-copy switch point in RAM
// bytes (call it before Start) and makes each round of the fake's RAM
// transfer last roundTicks ticks, so the point can fall inside round 1.
func (w *World) WithPostcopyAtBytes(b int64, roundTicks int64) {
	w.rec.Options.PostcopyAtBytes = b
	w.putRecord(w.rec)
	w.roundTicks = max(roundTicks, 1)
}

// copyPeer finds the destination's disk receiver a copy job writes to: the
// address and migration id match and its agent (the receiver) runs.
func (w *World) copyPeer(from core.Side, j *fakeCopy) *vmOnHost {
	other := w.Agents[1-from]
	v := other.vm
	if !other.Up || !w.linkUp() || v == nil || v.diskInID != j.id || v.diskURI != j.uri || v.qemu != nil {
		return nil
	}
	return v
}

// copyPhysics moves the source agents' disk copies by one Tick.
func (w *World) copyPhysics() {
	for _, ag := range w.Agents {
		j := ag.copyJob
		if j == nil || j.status != "copying" || !ag.Up {
			continue
		}
		peer := w.copyPeer(ag.side, j)
		if peer == nil || ag.alive() {
			j.status, j.err = "failed", "the connection to the destination broke" // (or the guest started again under the copy)
			continue
		}
		j.sent += 1 << 20
		if j.left--; j.left <= 0 {
			if w.corruptCopy {
				j.status, j.err = "failed", "checksum mismatch on the destination" // its copy is not used
				continue
			}
			peer.diskSynced = true // the destination verified the checksum
			j.status = "completed"
		}
	}
}

func (w *World) newQEMU(boot int) *FakeQEMU {
	w.nextPID++
	return &FakeQEMU{PID: w.nextPID, Boot: boot, Alive: true, Mig: "none"}
}

func (w *World) newBoot() int { w.nextBoot++; return w.nextBoot }

func (w *World) at(t time.Time, fn func()) {
	w.seq++
	heap.Push(&w.q, &event{at: t, seq: w.seq, fn: fn})
}

func (w *World) after(d time.Duration, fn func()) { w.at(w.Clock.now.Add(d), fn) }

func (w *World) logf(format string, args ...any) {
	w.Trace = append(w.Trace, fmt.Sprintf("%7.3fs ", w.Clock.now.Sub(w.rec.StartedAt).Seconds())+fmt.Sprintf(format, args...))
}

func (w *World) linkUp() bool { return !w.Clock.now.Before(w.linkUntil) }

func (w *World) reach(s core.Side) bool {
	return w.Clock.now.After(w.cutUntil[s]) || w.Clock.now.Equal(w.cutUntil[s])
}

// kill ends a QEMU process.
func (w *World) kill(q *FakeQEMU) {
	if q == nil {
		return
	}
	q.Alive = false
	q.Run = "dead"
}

// peerFor finds the destination QEMU listening at uri.
func (w *World) peerFor(from core.Side, uri string) *FakeQEMU {
	other := w.Agents[1-from]
	if other.vm == nil || other.vm.uri != uri || !other.alive() || other.vm.qemu.In != "listening" {
		return nil
	}
	return other.vm.qemu
}

// diskPeerFor finds the destination QEMU exporting the local disk at uri.
func (w *World) diskPeerFor(from core.Side, uri string) *FakeQEMU {
	other := w.Agents[1-from]
	if uri == "" || other.vm == nil || other.vm.diskURI != uri || !other.alive() {
		return nil
	}
	return other.vm.qemu
}

func (w *World) putRecord(r core.Record) {
	b, err := proto.Marshal(core.ToProto(r))
	if err != nil {
		panic(err)
	}
	w.Store.Record = b
}

func (w *World) loadRecord() core.Record {
	m := &statev1.MigrationRecord{}
	if err := proto.Unmarshal(w.Store.Record, m); err != nil {
		panic(err)
	}
	r, err := core.FromProto(m)
	if err != nil {
		panic(err)
	}
	return r
}

// Start begins the migration: the server's executor loads the record.
func (w *World) Start() {
	w.scheduleTick()
	w.after(0, func() { w.deliver(core.Observation{Kind: core.ObsLoaded}) })
}

// scheduleTick is QEMU's progress, every Tick, and the control plane's
// host reconciler every second.
func (w *World) scheduleTick() {
	w.after(Tick, func() {
		w.physics()
		if w.Clock.now.Sub(w.rec.StartedAt)%time.Second == 0 {
			w.reconcileHosts()
			for _, ag := range w.Agents {
				ag.reap()
			}
		}
		w.scheduleTick()
	})
}

// reconcileHosts is the server's heartbeat reconciler (internal/server/hosts.go)
// as far as the engine relies on it, for a VM record no migration holds: a
// QEMU that exited on the owner makes it failed, a QEMU running there again
// makes a failed record running. (Running versus paused is left to the
// engine's own final write, which the checker verifies.)
func (w *World) reconcileHosts() {
	vm := &w.Store.VM
	if !w.serverUp || vm.MigrationID != "" {
		return
	}
	for _, ag := range w.Agents {
		if ag.Host != vm.Host || !ag.Up || !w.reach(ag.side) {
			continue
		}
		alive := ag.alive()
		switch {
		case !alive && (vm.State == string(core.VMRunning) || vm.State == string(core.VMPaused)):
			vm.State, vm.Message = string(core.VMFailed), "its QEMU exited (host heartbeat)"
			vm.Generation++
			w.logf("host reconciler: VM failed (its QEMU exited)")
		case alive && vm.State == string(core.VMFailed) && ag.vm.qemu.Run == "running":
			vm.State, vm.Message = string(core.VMRunning), ""
			vm.Generation++
			w.logf("host reconciler: VM running again")
		}
	}
}

// deliver feeds one observation to the core and performs what it asks.
func (w *World) deliver(obs core.Observation) {
	if !w.serverUp {
		return
	}
	if w.Clock.now.Before(w.frozen) {
		w.at(w.frozen, func() { w.deliver(obs) })
		return
	}
	obs.Now = w.Clock.now
	next, ready := core.Step(w.rec, obs)
	if w.Mutate != nil {
		w.Mutate(next, &ready)
	}
	if next.State != w.rec.State {
		w.logf("state %s → %s", w.rec.State, next.State)
	}
	switch ready.Persist {
	case core.PersistBefore:
		if w.Store.failNext {
			w.Store.failNext = false
			w.logf("persist FAILED (store write error)")
			w.deliver(core.Observation{Kind: core.ObsPersistFailed})
			return
		}
		w.putRecord(next)
		w.lastSoft = w.Clock.now
	case core.PersistSoft:
		if w.Clock.now.Sub(w.lastSoft) >= time.Second {
			w.putRecord(next)
			w.lastSoft = w.Clock.now
		}
	}
	w.rec = next
	for _, a := range ready.Actions {
		w.perform(a)
	}
	if obs.Kind == core.ObsResult && obs.Action == core.ActQueryOutgoing && next.Strategy == core.Hybrid &&
		obs.Out != nil && obs.Out.Rounds >= 3 && obs.Out.Status == "active" && next.State == core.Transferring {
		// The executor's adaptive controller sees pre-copy will not converge.
		w.after(0, func() {
			w.deliver(core.Observation{Kind: core.ObsSteer, Steer: core.SteerPostcopy, SteerWhy: "the dirty rate exceeds the link"})
		})
	}
	w.steerReplan(obs, next)
}

// perform executes one action on behalf of the executor.
func (w *World) perform(a core.Action) {
	epoch := w.epoch
	if a.Kind == core.ActSetTimer {
		w.at(a.At, func() {
			if w.epoch == epoch {
				w.deliver(core.Observation{Kind: core.ObsTick})
			}
		})
		return
	}
	w.flap(a)
	k := w.Steps
	w.Steps++
	disp := DispDeliver
	if w.Hook != nil {
		disp = w.Hook(w, k, a)
	}
	if !w.serverUp || w.epoch != epoch || disp == DispDrop {
		return // the server crashed before it could act
	}
	if a.MigrationID != "" && a.MigrationID != migID {
		w.logf("#%d %s [%s]", k, a, a.MigrationID) // a retried attempt's agent id
	} else {
		w.logf("#%d %s", k, a)
	}
	reply := func(obs core.Observation, d time.Duration) {
		obs.Kind, obs.Action, obs.Side = core.ObsResult, a.Kind, a.Side
		w.after(d, func() {
			if w.epoch != epoch {
				return
			}
			if a.Kind.IsAgent() && !w.reach(a.Side) {
				w.after(RPCTimeout-d, func() {
					if w.epoch == epoch {
						w.deliver(transient(a, "reply lost: agent unreachable"))
					}
				})
				return
			}
			w.deliver(obs)
		})
	}
	if a.Kind.IsStore() {
		if w.Store.failNext || disp == DispStoreFailure {
			w.Store.failNext = false
			w.logf("   store write FAILED")
			reply(core.Observation{Err: core.Transient, ErrMsg: "store unavailable"}, w.lat())
			return
		}
		obs := w.storeOp(a)
		if disp == DispLoseReply {
			reply(core.Observation{Err: core.Transient, ErrMsg: "reply lost"}, RPCTimeout)
			return
		}
		reply(obs, w.lat())
		return
	}
	ag := w.Agents[a.Side]
	if disp == DispLoseRequest || !w.reach(a.Side) {
		reply(core.Observation{Err: core.Transient, ErrMsg: "deadline exceeded"}, RPCTimeout)
		return
	}
	if disp == DispDelay {
		w.lateRequest = true
		w.after(DelayFor, func() {
			if ag.Up {
				w.logf("   late %s reaches the agent", a)
				ag.handle(a, agentID(a)) // done, but nobody waits for the answer
			}
		})
		reply(core.Observation{Err: core.Transient, ErrMsg: "deadline exceeded"}, RPCTimeout)
		return
	}
	w.after(w.lat(), func() {
		if !ag.Up {
			// The agent's process is gone: the connection is refused at once.
			w.after(NetLatency, func() { w.deliverIf(epoch, transient(a, "connection refused")) })
			return
		}
		wait := time.Duration(0)
		if a.Kind == core.ActQueryOutgoing && a.Wait > 0 && ag.alive() && ag.vm.qemu.Mig == a.KnownStatus {
			wait = a.Wait // long poll: answer when the status moves, or after wait
		}
		run := func() {
			if !ag.Up {
				w.after(RPCTimeout, func() { w.deliverIf(epoch, transient(a, "agent went away")) })
				return
			}
			obs := ag.handle(a, agentID(a))
			if disp == DispLoseReply {
				reply(core.Observation{Err: core.Transient, ErrMsg: "reply lost"}, RPCTimeout)
				return
			}
			reply(obs, w.lat())
		}
		if wait > 0 {
			w.after(wait, run)
		} else {
			run()
		}
	})
}

// agentID is the id an agent step is keyed by (the attempt's).
func agentID(a core.Action) string {
	if a.MigrationID != "" {
		return a.MigrationID
	}
	return migID
}

func (w *World) deliverIf(epoch int, obs core.Observation) {
	if w.epoch == epoch {
		w.deliver(obs)
	}
}

func transient(a core.Action, msg string) core.Observation {
	return core.Observation{Kind: core.ObsResult, Action: a.Kind, Side: a.Side, Err: core.Transient, ErrMsg: msg}
}

// storeOp applies a store action.
func (w *World) storeOp(a core.Action) core.Observation {
	s := w.Store
	switch a.Kind {
	case core.ActCASOwner:
		if s.VM.Generation != a.Generation {
			return core.Observation{Err: core.Refused, ErrMsg: "generation moved", StoreVM: s.snapshot()}
		}
		s.VM.Host = a.Owner
		s.VM.Generation++
		if a.Record != nil {
			// The switched migration record, in the same transaction.
			w.putRecord(*a.Record)
		}
		return core.Observation{StoreVM: s.snapshot()}
	case core.ActUpdateVM:
		if s.VM.MigrationID != migID {
			return core.Observation{Err: core.Refused, ErrMsg: "not locked by this migration", StoreVM: s.snapshot()}
		}
		u := a.Update
		s.VM.State = string(u.State)
		if u.Host != "" {
			s.VM.Host = u.Host
		}
		s.VM.Message = u.Reason
		if u.Unlock {
			s.VM.MigrationID = ""
		}
		s.VM.Generation++
		return core.Observation{StoreVM: s.snapshot()}
	case core.ActReleaseReservation:
		s.Reservation = false
		return core.Observation{}
	}
	return core.Observation{Err: core.Refused, ErrMsg: "unknown store action"}
}

// physics moves QEMU's migrations by one Tick.
func (w *World) physics() {
	for _, ag := range w.Agents {
		if ag.alive() && ag.vm.qemu.In != "" && ag.vm.qemu.In != "listening" && ag.vm.qemu.In != "receiving" {
			ag.vm.qemu.loadedTicks++ // counted from the tick after the state arrived
		}
	}
	for _, ag := range w.Agents {
		if !ag.alive() {
			continue
		}
		q := ag.vm.qemu
		p := q.peer
		peerOK := p != nil && p.Alive && w.linkUp()
		dp := q.diskPeer
		diskOK := dp != nil && dp.Alive && w.linkUp()
		switch q.Mig {
		case "mirroring":
			if !diskOK {
				// The mirror's NBD target failed: the job ends with an
				// error; the guest runs on with its own disk (the
				// destination QEMU is left for the engine to remove).
				q.Mig = "failed"
				break
			}
			q.Sent += 1 << 20
			if q.mirrorLeft--; q.mirrorLeft <= 0 {
				// Every mirror is ready: the agent starts the RAM transfer.
				if peerOK {
					q.Mig = "active"
					p.In = "receiving"
				} else {
					q.Mig = "failed"
				}
			}
		case "active":
			if !peerOK {
				q.Mig = "failed" // the guest keeps running
				w.failIncomingLater(p)
				break
			}
			q.ramTicks++
			q.Rounds = (q.ramTicks + w.roundTicks - 1) / w.roundTicks
			q.Sent += 1 << 20
			q.RAM += 1 << 20
			// (A pre-copy converges after 4 rounds; with postcopy-ram
			// armed it waits for the switch; a stuck guest's plain
			// pre-copy never converges, only a throttled one.)
			if q.PCPending || (!q.Postcopy && (!w.stuck || q.AutoConverge) && q.Rounds >= 4) {
				if dp != nil {
					// The agent completes the mirrors with the guest paused
					// before it reports pre-switchover.
					if !diskOK {
						q.Mig = "failed"
						w.failIncoming(p)
						break
					}
					if dv := w.Agents[1-ag.side].vm; dv != nil && dv.qemu == dp {
						dv.diskSynced = true
					}
				}
				q.Mig, q.Run = "pre-switchover", "finish-migrate"
			}
		case "device":
			if !peerOK {
				q.Mig, q.Run = "failed", "running" // QEMU restarts a source whose migration failed before completing
				w.failIncomingLater(p)
				break
			}
			q.Sent += 1 << 18
			p.Boot = q.Boot // the device state carries the running guest
			if q.PCPending {
				q.Mig, q.Run, q.pcLeft = "postcopy-active", "postmigrate", 10
				p.In = "postcopy"
			} else {
				q.Mig, q.Run = "completed", "postmigrate"
				p.In = "loaded"
			}
		case "postcopy-recover":
			// A resume taken while the link was down: it connects once the
			// link is back, or gives up (paused again) after ReconnectFor.
			switch {
			case q.stuck:
				// neither connects nor gives up until paused
			case peerOK && p.In == "postcopy-recover":
				q.Mig, p.In = "postcopy-active", "postcopy"
			case w.Clock.now.Sub(q.reconnectSince) >= ReconnectFor || p == nil || !p.Alive:
				q.Mig = "postcopy-paused"
			}
		case "postcopy-active":
			if !peerOK {
				q.Mig = "postcopy-paused"
				if p != nil && p.Alive {
					p.In = "postcopy-paused"
				}
				break
			}
			q.Sent += 1 << 19
			q.pcLeft--
			if q.pcLeft <= 0 {
				q.Mig = "completed"
				p.In = "done"
			}
		}
	}
	// A destination whose source died in post-copy waits for pages forever.
	for _, ag := range w.Agents {
		if ag.alive() && (ag.vm.qemu.In == "postcopy") {
			src := w.Agents[1-ag.side]
			if !src.alive() || !w.linkUp() {
				ag.vm.qemu.In = "postcopy-paused"
			}
		}
	}
	w.copyPhysics()
	for _, ag := range w.Agents {
		ag.reconcile()
	}
}

// failIncomingLater: the destination of a stream that failed exits when it
// sees the failure: at once, or once the link is back if the link broke it
// (no packet reaches it meanwhile).
func (w *World) failIncomingLater(p *FakeQEMU) {
	if w.linkUp() {
		w.failIncoming(p)
		return
	}
	w.at(w.linkUntil, func() { w.failIncoming(p) })
}

// failIncoming: a destination whose stream failed before it was complete exits.
func (w *World) failIncoming(p *FakeQEMU) {
	if p != nil && p.Alive && (p.In == "listening" || p.In == "receiving") {
		w.kill(p)
	}
}

// Run runs the event loop until the migration is terminal and the world
// settled, or until MaxSimTime. It checks the instant invariant after
// every event.
func (w *World) Run() {
	settleUntil := time.Time{}
	start := w.rec.StartedAt
	same := 0
	for len(w.q) > 0 {
		e := heap.Pop(&w.q).(*event)
		if e.at.Equal(w.Clock.now) {
			same++
		} else {
			same = 0
		}
		if same > 10000 {
			w.violate("livelock: more than 10000 events at %s without time passing (state %s)", w.Clock.now.Sub(start), w.rec.State)
			return
		}
		w.Clock.now = e.at
		e.fn()
		w.checkInstant()
		if w.Clock.now.Sub(start) > MaxSimTime {
			w.violate("the migration did not end within %s of simulated time (state %s)", MaxSimTime, w.storedState())
			return
		}
		if !w.rec.State.Terminal() && w.Clock.now.Sub(start) > MaxSimTime/2 && w.Steps > 20000 {
			w.violate("the migration did not end after %d steps (state %s)", w.Steps, w.storedState())
			return
		}
		if w.serverUp && w.rec.State.Terminal() && w.storedState().Terminal() {
			if settleUntil.IsZero() {
				settleUntil = w.Clock.now.Add(CutFor + AgentDown + RPCTimeout)
			} else if w.Clock.now.After(settleUntil) {
				if w.reapPending() && w.Clock.now.Before(settleUntil.Add(OrphanGrace+5*time.Second)) {
					continue // an agent's reaper still has an arrival to remove
				}
				return
			}
		}
	}
}

// RunFor runs the event loop for d of simulated time.
func (w *World) RunFor(d time.Duration) {
	end := w.Clock.now.Add(d)
	for len(w.q) > 0 && !w.q[0].at.After(end) {
		e := heap.Pop(&w.q).(*event)
		w.Clock.now = e.at
		e.fn()
		w.checkInstant()
	}
	w.Clock.now = end
}

func (w *World) storedState() core.State { return w.loadRecord().State }

// Record is the migration record as the store holds it.
func (w *World) Record() core.Record { return w.loadRecord() }

func (w *World) violate(format string, args ...any) {
	w.Violations = append(w.Violations, fmt.Sprintf(format, args...))
}

// Summary is a one-line view of the world (for scripts).
func (w *World) Summary() string {
	var b strings.Builder
	r := w.loadRecord()
	fmt.Fprintf(&b, "migration %s", r.State)
	if r.Error != "" {
		fmt.Fprintf(&b, " (%s)", r.Error)
	}
	fmt.Fprintf(&b, "; vm %s@%s", w.Store.VM.State, w.Store.VM.Host)
	if w.Store.VM.MigrationID != "" {
		b.WriteString(" locked")
	}
	for _, ag := range w.Agents {
		fmt.Fprintf(&b, "; %s:", ag.side)
		switch {
		case ag.vm == nil:
			b.WriteString("-")
		case ag.vm.qemu == nil || !ag.vm.qemu.Alive:
			b.WriteString("dir")
		default:
			fmt.Fprintf(&b, "%s/boot%d", ag.vm.qemu.Run, ag.vm.qemu.Boot)
		}
	}
	return b.String()
}

// Events processes the next n events (a script's deliver).
func (w *World) Events(n int) {
	for ; n > 0 && len(w.q) > 0; n-- {
		e := heap.Pop(&w.q).(*event)
		w.Clock.now = e.at
		e.fn()
		w.checkInstant()
	}
}

// lat is one network hop: NetLatency plus a jitter drawn from the seed, so
// that different seeds order concurrent replies differently.
func (w *World) lat() time.Duration {
	return NetLatency + time.Duration(w.rng.Intn(3))*time.Millisecond
}
