package agent

import (
	"context"
	"fmt"
	"os"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	ferryv1 "github.com/ferryvm/ferry/gen/ferry/v1"
)

// DefaultOrphanGrace is how long a QEMU no record names may run before the
// agent removes it.
const DefaultOrphanGrace = 2 * time.Minute

// OrphanGraceEnv, when set to a duration, replaces DefaultOrphanGrace as
// the --orphan-grace default (tests that start agents through `ferry dev
// cluster up` shorten it this way).
const OrphanGraceEnv = "FERRY_ORPHAN_GRACE"

// OrphanGraceDefault returns the --orphan-grace default: OrphanGraceEnv
// when it holds a positive duration, else DefaultOrphanGrace.
func OrphanGraceDefault() time.Duration {
	if d, err := time.ParseDuration(os.Getenv(OrphanGraceEnv)); err == nil && d > 0 {
		return d
	}
	return DefaultOrphanGrace
}

// expectation is what the control plane's heartbeat reply says should be
// on this host.
type expectation struct {
	authoritative bool
	vms           map[string]bool // VM names whose records place them here
	migrations    map[string]bool // ids of in-flight migrations touching this host
}

func expectationOf(resp *ferryv1.HeartbeatResponse) expectation {
	e := expectation{authoritative: resp.GetAuthoritative(), vms: map[string]bool{}, migrations: map[string]bool{}}
	for _, n := range resp.GetExpectedVms() {
		e.vms[n] = true
	}
	for _, id := range resp.GetInflightMigrations() {
		e.migrations[id] = true
	}
	return e
}

// vmFacts is what the reaper needs to know of one VM of this host.
type vmFacts struct {
	name       string
	qemu       bool      // a live QEMU runs for it
	started    time.Time // when this agent started or found that QEMU
	migrations []string  // ids of the migrations it is arriving or leaving by
	ran        bool      // it arrives by migration and has run here
	arriving   string    // id of the migration it arrives by, not adopted yet
}

// reaper decides which QEMUs no record names. It is a pure core fed by the
// heartbeat loop (observe) and acted on by reapOrphans.
type reaper struct {
	busy        atomic.Bool // a reapOrphans pass runs
	mu          sync.Mutex
	orphanSince map[string]time.Time // first authoritative reply that did not name the VM
	warned      map[string]bool
}

// observe folds one heartbeat reply into the reaper and returns the VMs to
// remove now: those with a live QEMU that no record names and no in-flight
// migration touches, whose QEMU appeared at least grace ago and that every
// authoritative reply for at least grace has left unnamed. A destination
// that has run is never chosen (it is reported in warn instead), and a
// reply that is not authoritative chooses nothing.
func (r *reaper) observe(now time.Time, grace time.Duration, exp expectation, vms []vmFacts) (reap, warn []string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.orphanSince == nil {
		r.orphanSince, r.warned = map[string]time.Time{}, map[string]bool{}
	}
	if !exp.authoritative {
		return nil, nil
	}
	seen := map[string]bool{}
	for _, f := range vms {
		seen[f.name] = true
		if !f.qemu || exp.vms[f.name] || anyIn(f.migrations, exp.migrations) {
			delete(r.orphanSince, f.name)
			delete(r.warned, f.name)
			continue
		}
		since, ok := r.orphanSince[f.name]
		if !ok {
			since = now
			r.orphanSince[f.name] = now
		}
		if now.Sub(since) < grace || now.Sub(f.started) < grace {
			continue
		}
		if f.ran {
			if !r.warned[f.name] {
				r.warned[f.name] = true
				warn = append(warn, f.name)
			}
			continue
		}
		reap = append(reap, f.name)
	}
	for name := range r.orphanSince {
		if !seen[name] {
			delete(r.orphanSince, name)
			delete(r.warned, name)
		}
	}
	sort.Strings(reap)
	return reap, warn
}

// strandedArrivals returns the VMs that arrived by a migration, have run
// here, are named here by the records and that no in-flight migration
// touches any more: the engine is done with them but never adopted them
// (its FinishIncoming was lost), so the agent adopts them itself.
func strandedArrivals(exp expectation, vms []vmFacts) []vmFacts {
	if !exp.authoritative {
		return nil
	}
	var out []vmFacts
	for _, f := range vms {
		if f.arriving != "" && f.ran && f.qemu && exp.vms[f.name] && !exp.migrations[f.arriving] {
			out = append(out, f)
		}
	}
	return out
}

func anyIn(ids []string, set map[string]bool) bool {
	for _, id := range ids {
		if set[id] {
			return true
		}
	}
	return false
}

// facts describes every VM of the host for the reaper.
func (a *Agent) facts() []vmFacts {
	a.mu.Lock()
	vms := make([]*vm, 0, len(a.vms))
	for _, v := range a.vms {
		vms = append(vms, v)
	}
	a.mu.Unlock()
	out := make([]vmFacts, 0, len(vms))
	for _, v := range vms {
		v.mu.Lock()
		f := vmFacts{name: v.name, qemu: v.proc != nil && v.proc.Alive(), started: v.started}
		if v.in != nil {
			f.migrations = append(f.migrations, v.in.id)
			f.ran, f.arriving = v.in.isRan(), v.in.id
		}
		if v.out != nil {
			f.migrations = append(f.migrations, v.out.id)
		}
		if v.arrived != "" {
			f.migrations = append(f.migrations, v.arrived)
		}
		v.mu.Unlock()
		out = append(out, f)
	}
	return out
}

// reapOrphans applies one heartbeat reply: it adopts stranded arrivals,
// and stops and removes each QEMU the reaper chooses, logging each.
func (a *Agent) reapOrphans(ctx context.Context, resp *ferryv1.HeartbeatResponse) {
	exp, facts := expectationOf(resp), a.facts()
	for _, f := range strandedArrivals(exp, facts) {
		actx, cancel := context.WithTimeout(ctx, 30*time.Second)
		if _, err := a.finishIncoming(actx, f.name, f.arriving); err != nil {
			a.log.Warn("adopt an arrival the control plane is done with", "vm", f.name, "migration", f.arriving, "err", err)
		} else {
			a.log.Info("adopted an arrival the control plane is done with", "vm", f.name, "migration", f.arriving)
		}
		cancel()
	}
	a.reapArrivals(time.Now(), a.cfg.OrphanGrace, exp)
	reap, warn := a.reaper.observe(time.Now(), a.cfg.OrphanGrace, exp, facts)
	for _, name := range warn {
		a.log.Warn("no record names this VM, but it arrived by migration and ran here: leaving it running", "vm", name)
	}
	for _, name := range reap {
		if err := a.reap(ctx, name); err != nil {
			a.log.Error("remove orphan QEMU", "vm", name, "err", err)
		}
	}
}

// reap stops and removes a VM no record names: its QEMU, taps and
// directory (logs are archived).
func (a *Agent) reap(ctx context.Context, name string) error {
	v, ok := a.find(name)
	if !ok {
		return nil
	}
	v.mu.Lock()
	pid, arriving := 0, v.in
	if v.proc != nil {
		pid = v.proc.PID()
	}
	v.mu.Unlock()
	a.log.Warn("removing orphan QEMU: no record names this VM and no migration touches it", "vm", name, "pid", pid, "grace", a.cfg.OrphanGrace)
	if arriving != nil {
		return a.abortIncoming(ctx, name, arriving.id)
	}
	sctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if _, err := v.stop(sctx, true); err != nil {
		return err
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.proc != nil {
		return fmt.Errorf("VM %s was started again meanwhile", name)
	}
	v.archiveLogs("orphan")
	if err := v.removeDir(true, "orphan"); err != nil {
		return err
	}
	a.mu.Lock()
	if a.vms[name] == v {
		delete(a.vms, name)
	}
	a.mu.Unlock()
	a.log.Warn("orphan QEMU removed", "vm", name, "pid", pid)
	return nil
}
