package sim

import (
	"time"

	"github.com/ferryvm/ferry/internal/migration/core"
)

// Fault is one kind of fault the exploration injects at a step.
type Fault string

// Fault kinds.
const (
	NoFault       Fault = "none"
	CrashServer   Fault = "crash-server"    // the server dies before the step; restarts, reloads the record
	CrashAgentSrc Fault = "crash-agent-src" // the source agent dies (its QEMU lives on) and restarts
	CrashAgentDst Fault = "crash-agent-dst" // the destination agent dies and restarts
	LoseRequest   Fault = "lose-request"    // the step's request never arrives
	LoseReply     Fault = "lose-reply"      // the step is done, its reply lost
	KillQEMUSrc   Fault = "kill-qemu-src"   // the source QEMU is killed
	KillQEMUDst   Fault = "kill-qemu-dst"   // the destination QEMU is killed
	CutSrc        Fault = "cut-src"         // server ↔ source agent partitioned (agents still reach each other)
	CutDst        Fault = "cut-dst"         // server ↔ destination agent partitioned
	LinkDown      Fault = "link-down"       // agent ↔ agent partitioned (the migration stream breaks)
	StoreFail     Fault = "store-fail"      // the next store write fails
	TimeoutFires  Fault = "timeout"         // the server stalls past the stall timeout: a timeout fires
	TimerEarly    Fault = "timer-early"     // a timer fires before its deadline
	CancelByUser  Fault = "cancel"          // the user cancels
	DelayRequest  Fault = "delay-request"   // the step's request arrives late (after the caller timed out)
	HandOverFault Fault = "hand-over"       // the leading server resigns after the step is sent; the next leader adopts (handover.go)
	StuckResume   Fault = "stuck-resume"    // the link breaks, and the next post-copy resume hangs until the source is paused (a relay's channel that died with the link)
)

// AllFaults is every fault kind the exploration injects.
var AllFaults = []Fault{CrashServer, CrashAgentSrc, CrashAgentDst, LoseRequest, LoseReply, KillQEMUSrc, KillQEMUDst,
	CutSrc, CutDst, LinkDown, StoreFail, TimeoutFires, TimerEarly, CancelByUser, DelayRequest, HandOverFault, StuckResume}

// Inject applies fault f now, before action a; it returns what happens to a.
func (w *World) Inject(f Fault, a core.Action) Disposition {
	w.logf("FAULT %s", f)
	switch f {
	case CrashServer:
		w.CrashServer(ServerDown)
		return DispDrop
	case CrashAgentSrc:
		w.CrashAgent(core.Src, AgentDown)
	case CrashAgentDst:
		w.CrashAgent(core.Dst, AgentDown)
	case LoseRequest:
		if a.Kind.IsStore() {
			return DispStoreFailure
		}
		return DispLoseRequest
	case LoseReply:
		return DispLoseReply
	case DelayRequest:
		if a.Kind.IsStore() {
			return DispStoreFailure
		}
		return DispDelay
	case KillQEMUSrc:
		w.KillQEMU(core.Src)
	case KillQEMUDst:
		w.KillQEMU(core.Dst)
	case CutSrc:
		w.Cut(core.Src, CutFor)
	case CutDst:
		w.Cut(core.Dst, CutFor)
	case LinkDown:
		w.linkUntil = w.Clock.now.Add(LinkDownFor)
	case StoreFail:
		w.Store.failNext = true
	case TimeoutFires:
		w.frozen = w.Clock.now.Add(FreezeFor)
		epoch := w.epoch
		w.at(w.frozen, func() { w.deliverIf(epoch, core.Observation{Kind: core.ObsTick}) })
	case TimerEarly:
		epoch := w.epoch
		w.after(0, func() { w.deliverIf(epoch, core.Observation{Kind: core.ObsTick}) })
	case CancelByUser:
		epoch := w.epoch
		w.after(0, func() { w.deliverIf(epoch, core.Observation{Kind: core.ObsCancel}) })
	case HandOverFault:
		w.HandOver()
	case StuckResume:
		w.linkUntil = w.Clock.now.Add(LinkDownFor)
		w.stuckResume = true
	}
	return DispDeliver
}

// CrashServer kills the server (its in-memory state and in-flight calls are
// lost) and restarts it after d: it reloads the record from the store.
func (w *World) CrashServer(d time.Duration) {
	w.serverUp = false
	w.epoch++
	w.at(w.Clock.now.Add(d), w.RestartServer)
}

// RestartServer starts a server that loads the record from the store.
func (w *World) RestartServer() {
	if w.serverUp {
		return
	}
	w.serverUp = true
	w.epoch++
	w.rec = w.loadRecord()
	w.logf("server restarted: loaded %s", w.rec.State)
	w.deliver(core.Observation{Kind: core.ObsLoaded})
}

// CrashAgent takes side's agent down for d (its QEMUs live on).
func (w *World) CrashAgent(s core.Side, d time.Duration) {
	w.Agents[s].Up = false
	w.Agents[s].copyJob = nil // a copy's sender dies with its agent
	if d > 0 {
		w.after(d, func() { w.RestartAgent(s) })
	}
}

// RestartAgent brings side's agent back: it reattaches to its QEMUs from
// its small files, and the server hears of it.
func (w *World) RestartAgent(s core.Side) {
	ag := w.Agents[s]
	if ag.Up {
		return
	}
	ag.Up = true
	w.logf("agent %s restarted", s)
	if v := ag.vm; v != nil && v.diskInID != "" && !v.diskSynced {
		// Its receiver died with it: an unverified disk copy is removed
		// when the agent starts (the source's copy failed).
		w.logf("agent %s dropped the unverified disk copy of %s", s, v.diskInID)
		ag.end(v.diskInID)
		ag.vm = nil
	}
	ag.reconcile()
	epoch := w.epoch
	w.after(NetLatency, func() { w.deliverIf(epoch, core.Observation{Kind: core.ObsAgentRestarted, Side: s}) })
}

// KillQEMU kills side's QEMU of the VM, if any.
func (w *World) KillQEMU(s core.Side) {
	ag := w.Agents[s]
	if ag.alive() {
		w.kill(ag.vm.qemu)
		w.qemuKilled = true
	}
}

// Cut partitions the server from side's agent for d.
func (w *World) Cut(s core.Side, d time.Duration) { w.cutUntil[s] = w.Clock.now.Add(d) }
