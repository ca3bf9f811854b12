package sim

import (
	"time"

	"github.com/ferryvm/ferry/internal/migration/core"
)

// RetryScenarios are live migrations whose fault-free path already holds
// link flaps: the link between the hosts goes down (for LinkDownFor) at
// the first look at the transfer of the first Flaps attempts, so the
// stream fails, the attempt is cleaned up and retried (retry-wait) — the
// exploration then injects every fault at every step of that path (a
// server crash during the backoff, a fault during the second attempt, ...).
// The last scenario flaps once more than SimOptions allows attempts: the
// retries run out and the migration fails with the VM running on the source.
var RetryScenarios = []Scenario{
	{Name: "precopy-flap", Strategy: core.Precopy, Prev: core.VMRunning},
	{Name: "hybrid-flap2", Strategy: core.Hybrid, Prev: core.VMRunning},
	{Name: "precopy-flap-exhausted", Strategy: core.Precopy, Prev: core.VMRunning},
	// auto chose pre-copy, the guest outruns it: the controller's abort
	// retries it once as hybrid, which switches to post-copy.
	{Name: "auto-precopy-replan-hybrid", Strategy: core.Precopy, Prev: core.VMRunning, Stuck: true, Auto: true, ReplanAs: core.Hybrid},
}

// FlapFor is how long a scenario's link flap lasts: shorter than the
// retry backoff, so the next attempt finds the link back.
const FlapFor = time.Second

// scenarioFlaps is each retry scenario's number of flapped attempts.
var scenarioFlaps = map[string]int{"precopy-flap": 1, "hybrid-flap2": 2, "precopy-flap-exhausted": 3}

// flap takes the link down when a flapped attempt first looks at its
// transfer (part of the scenario, not an injected fault).
func (w *World) flap(a core.Action) {
	if w.flaps == 0 || a.Kind != core.ActQueryOutgoing || w.rec.State != core.Transferring || w.rec.Attempt <= w.flapped || !w.linkUp() {
		return
	}
	w.flaps--
	w.flapped = w.rec.Attempt
	w.linkUntil = w.Clock.now.Add(FlapFor)
	w.logf("LINK FLAP (attempt %d): agent ↔ agent down for %s", w.rec.Attempt, FlapFor)
}

// checkRetry is the retry's instant invariant: while a migration waits
// for its next attempt, the VM record is still locked by it and names the
// source, the source QEMU runs the guest, and nothing of the failed
// attempt runs on the destination.
func (w *World) checkRetry() {
	if w.rec.State != core.RetryWait || w.retrySeen || !w.serverUp {
		return
	}
	vm := w.Store.VM
	src, dst := w.Agents[core.Src], w.Agents[core.Dst]
	bad := ""
	switch {
	case vm.MigrationID != migID || vm.Host != "h1":
		bad = "the VM record is not held by the migration on h1"
	case (!src.alive() || src.vm.qemu.Run != "running") && !w.qemuKilled:
		// (A QEMU a fault killed is gone: the next attempt's first source
		// step finds it lost.)
		bad = "the source QEMU does not run the guest"
	case dst.alive() && !w.lateRequest:
		// (A request the fault delayed past its caller's deadline may
		// still start one: the agent's reaper removes it.)
		bad = "a destination QEMU of the failed attempt is left"
	}
	if bad != "" {
		w.retrySeen = true
		w.logf("VIOLATION: in retry-wait %s", bad)
		w.violate("in retry-wait %s (at %s)", bad, w.Clock.now.Sub(w.rec.StartedAt))
	}
}

// checkRetryEnd: no more attempts than the policy allows, and a migration
// whose scenario flapped within the policy and that no fault hit completes.
func (w *World) checkRetryEnd(r core.Record, faulted bool) {
	if r.Attempt > r.AttemptLimit() {
		w.violate("%d attempts, the policy allows %d", r.Attempt, r.AttemptLimit())
	}
	if !faulted && w.flapsAsked > 0 && w.flapsAsked < int(r.Options.MaxAttempts) && r.State != core.Completed {
		w.violate("%d link flap(s) within %d attempts but the migration ended %s: %s", w.flapsAsked, r.Options.MaxAttempts, r.State, r.Error)
	}
	if !faulted && w.flapsAsked >= int(r.Options.MaxAttempts) && (r.State != core.Failed || len(r.Retries) != int(r.Options.MaxAttempts)-1) {
		w.violate("%d link flaps with %d attempts: want failed after %d retries, got %s after %d", w.flapsAsked, r.Options.MaxAttempts,
			r.Options.MaxAttempts-1, r.State, len(r.Retries))
	}
}

// SetFlaps makes the first n attempts of the migration flap (see
// RetryScenarios).
func (w *World) SetFlaps(n int) { w.flaps, w.flapsAsked = n, n }
