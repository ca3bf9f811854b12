package agent

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"time"

	agentv1 "github.com/ferryvm/ferry/gen/ferry/agent/v1"
	"github.com/ferryvm/ferry/internal/failpoint"
	"github.com/ferryvm/ferry/internal/migration"
	"github.com/ferryvm/ferry/internal/qmp"
)

// maxFinishWait bounds how long FinishIncoming waits for the destination
// to run when the caller set no shorter deadline.
const maxFinishWait = 2 * time.Minute

// arrival returns the VM arriving by migration id, or the error the step
// answers with: a VM adopted by id yields adopted=true and no error.
func (a *Agent) arrival(name, id string) (v *vm, adopted bool, err error) {
	v, ok := a.find(name)
	if !ok {
		if st, ok := a.ended.get(id); ok {
			return nil, false, failedPrecondition("VM %s's arrival by migration %s on host %s ended (%s)", name, id, a.cfg.Name, st.State)
		}
		return nil, false, failedPrecondition("VM %s is not arriving on host %s by migration %s", name, a.cfg.Name, id)
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	switch {
	case v.in != nil && v.in.id == id:
		return v, false, nil
	case v.in == nil && v.arrived == id && id != "":
		return v, true, nil
	}
	return nil, false, failedPrecondition("VM %s is not arriving on host %s by migration %s", name, a.cfg.Name, id)
}

// armResume authorises the destination to run (the owner CAS succeeded)
// and, normally, sends cont at once: while QEMU is still loading
// (inmigrate) cont only sets autostart, so the destination starts the
// instant its state is complete — in pre-copy after the device state, in
// post-copy as soon as the device state arrived — and never before it was
// armed. The arming is persisted first, so an agent restarted in between
// resumes the destination itself (see reattachIncoming).
func (a *Agent) armResume(ctx context.Context, name, id string) (*agentv1.IncomingStatus, error) {
	v, adopted, err := a.arrival(name, id)
	if err != nil {
		return nil, err
	}
	if adopted {
		return v.incomingStatus(), nil
	}
	v.mu.Lock()
	in, mon := v.in, v.mon
	v.mu.Unlock()
	if mon == nil {
		return nil, failedPrecondition("the destination QEMU of VM %s on host %s is gone", name, a.cfg.Name)
	}
	in.mu.Lock()
	if in.state != migration.InArmed && in.state != migration.InRunning {
		next, err := migration.StepIncoming(in.state, migration.InEvArm)
		if err != nil {
			in.mu.Unlock()
			return nil, failedPrecondition("%v", err)
		}
		in.state = next
	}
	in.armed = true
	in.mu.Unlock()
	if err := v.saveIncoming(in); err != nil {
		return nil, err
	}
	if err := v.resumeArmed(ctx, in, mon); err != nil {
		return nil, err
	}
	return v.incomingStatus(), nil
}

// resumeArmed sends cont to an armed destination, once. While the
// fpBeforeResumeIncoming failpoint is armed, cont waits (in the
// background) until the incoming state arrived, so the point sits after
// migrate-continue and before the destination ever ran.
func (v *vm) resumeArmed(ctx context.Context, in *incoming, mon *qmp.Monitor) error {
	in.mu.Lock()
	send := !in.contSent && !in.ran
	in.contSent = true
	in.mu.Unlock()
	if !send {
		return nil
	}
	if failpoint.Armed(fpBeforeResumeIncoming) {
		go v.resumeWhenLoaded(in, mon)
		return nil
	}
	if err := mon.Cont(ctx); err != nil {
		in.mu.Lock()
		in.contSent = false
		in.mu.Unlock()
		return fmt.Errorf("arm destination resume (cont): %w", err)
	}
	return nil
}

// resumeWhenLoaded is resumeArmed's path while fpBeforeResumeIncoming is
// armed: it waits (bounded) until the incoming state is complete, fires
// the point, then sends cont.
func (v *vm) resumeWhenLoaded(in *incoming, mon *qmp.Monitor) {
	deadline := time.Now().Add(10 * time.Minute)
	for {
		in.mu.Lock()
		loaded, state := in.loaded, in.state
		in.mu.Unlock()
		if loaded {
			break
		}
		if state == migration.InAborted || time.Now().After(deadline) {
			return
		}
		time.Sleep(5 * time.Millisecond)
	}
	if err := failpoint.Inject(fpBeforeResumeIncoming); err != nil {
		v.a.log.Warn("failpoint", "vm", v.name, "err", err)
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := mon.Cont(ctx); err != nil {
		v.a.log.Warn("resume the arrived destination (cont)", "vm", v.name, "err", err)
	}
}

func (v *vm) incomingStatus() *agentv1.IncomingStatus {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.incomingStatusLocked()
}

// finishIncoming waits (bounded) until the destination runs, announces it
// on the network and adopts it as an ordinary VM of this host.
func (a *Agent) finishIncoming(ctx context.Context, name, id string) (*agentv1.IncomingStatus, error) {
	v, adopted, err := a.arrival(name, id)
	if err != nil {
		return nil, err
	}
	if adopted {
		return v.incomingStatus(), nil // a retried step
	}
	v.mu.Lock()
	in, mon := v.in, v.mon
	v.mu.Unlock()
	if mon == nil {
		return nil, failedPrecondition("the destination QEMU of VM %s on host %s is gone", name, a.cfg.Name)
	}
	ctx, cancel := context.WithTimeout(ctx, maxFinishWait)
	defer cancel()
	lastPoll := time.Time{}
	for {
		in.mu.Lock()
		state, ran, errMsg := in.state, in.ran, in.err
		in.mu.Unlock()
		if ran && state == migration.InRunning {
			break
		}
		if errMsg != "" {
			return nil, failedPrecondition("destination of VM %s: %s", name, errMsg)
		}
		if state == migration.InAborted {
			return nil, failedPrecondition("the arrival of VM %s by migration %s was aborted", name, id)
		}
		if time.Since(lastPoll) > 200*time.Millisecond { // in case the RESUME event was missed
			lastPoll = time.Now()
			if st, err := mon.QueryStatus(ctx); err == nil && st.Running {
				v.markRan(in, time.Now())
				continue
			}
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("destination of VM %s did not resume (state %s): %w", name, state, ctx.Err())
		case <-time.After(5 * time.Millisecond):
		}
	}
	if in.nbd != "" {
		// The source's mirrors completed (and it closed its NBD
		// connections) at pre-switchover, before this QEMU got the device
		// state: the export has no client left; end it. (Not at the arm:
		// the engine arms before the owner switch, while the mirrors run.)
		sctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		if err := stopExports(sctx, mon); err != nil {
			a.log.Warn("stop the NBD export of the arrived disks", "vm", name, "err", err)
		}
		cancel()
	}
	// Tell the segment where the guest's MAC lives now (RARP/GARP,
	// repeated). Asynchronously: in post-copy the destination's main loop
	// can wait on missing pages, and adopting the VM must not wait for it.
	go func() {
		actx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := mon.AnnounceSelf(actx, qmp.AnnounceParameters{Initial: 50, Max: 550, Rounds: 5, Step: 100}); err != nil {
			a.log.Warn("announce-self", "vm", name, "err", err)
		}
	}()
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.in != in {
		return nil, failedPrecondition("the arrival of VM %s by migration %s ended meanwhile", name, id)
	}
	if err := os.WriteFile(filepath.Join(v.dir, runningMarker), nil, 0o644); err != nil {
		return nil, fmt.Errorf("mark VM running: %w", err)
	}
	in.mu.Lock()
	in.adopted = true
	in.mu.Unlock()
	if err := v.saveIncoming(in); err != nil {
		in.mu.Lock()
		in.adopted = false
		in.mu.Unlock()
		return nil, err
	}
	in.mu.Lock()
	in.state, _ = migration.StepIncoming(in.state, migration.InEvAdopt)
	in.sub.Close()
	in.mu.Unlock()
	v.in, v.arrived, v.arrivedIn, v.state = nil, id, in, "running"
	if v.relay != nil {
		go v.relayUntilEnded(mon, v.relay) // the event watcher just stopped
	}
	st := v.incomingStatusLocked()
	a.log.Info("VM arrived by migration", "vm", name, "migration", id, "pid", v.proc.PID())
	return st, nil
}

// abortIncoming removes an arriving VM: QEMU, taps, directory. It refuses
// once the VM has run here. Unknown VMs and arrivals already aborted are
// not an error (idempotent).
func (a *Agent) abortIncoming(ctx context.Context, name, id string) error {
	v, ok := a.find(name)
	if !ok {
		return nil
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.in == nil {
		if v.arrived != "" && (v.arrived == id || id == "") {
			return failedPrecondition("VM %s arrived on host %s by migration %s and ran: it is never aborted", name, a.cfg.Name, v.arrived)
		}
		if v.proc != nil || v.out != nil {
			return failedPrecondition("VM %s runs on host %s: not aborting an arrival that is over", name, a.cfg.Name)
		}
		return nil
	}
	in := v.in
	if in.id != id && id != "" {
		return failedPrecondition("VM %s is arriving by migration %s, not %s", name, in.id, id)
	}
	if v.mon != nil && !in.isRan() {
		// Trust QEMU over a missed event: a destination that runs has run.
		qctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		if st, err := v.mon.QueryStatus(qctx); err == nil && st.Running {
			cancel()
			v.markRan(in, time.Now())
			return failedPrecondition("the destination of VM %s on host %s has run: it is never aborted", name, a.cfg.Name)
		}
		cancel()
	}
	// An arrival already aborted (its QEMU died before it ran and the agent
	// removed it) aborts again as a no-op: the contract's idempotence, and
	// the engine's proof that the destination never ran.
	if !in.adoptable() && !in.abortedUnran() {
		return failedPrecondition("the destination of VM %s on host %s has run: it is never aborted", name, a.cfg.Name)
	}
	if v.proc != nil {
		v.stopping = true
		if err := v.proc.Kill(); err != nil {
			return fmt.Errorf("kill destination QEMU of VM %s: %w", name, err)
		}
		if v.mon != nil {
			_ = v.mon.Close()
		}
		v.proc, v.mon = nil, nil
	}
	v.discardIncomingLocked("aborted")
	return nil
}

func (in *incoming) isRan() bool {
	in.mu.Lock()
	defer in.mu.Unlock()
	return in.ran
}

// discardIncomingLocked removes an arrival's taps, directory and handle,
// and remembers how it ended.
func (v *vm) discardIncomingLocked(why string) {
	a := v.a
	if in := v.in; in != nil {
		in.mu.Lock()
		in.state = migration.InAborted
		if in.sub != nil {
			in.sub.Close()
		}
		in.mu.Unlock()
		st := v.incomingStatusLocked()
		st.State = string(migration.InAborted)
		if why != "aborted" {
			st.State = "failed"
		}
		a.ended.put(in.id, st)
	}
	v.deleteTaps(v.spec)
	v.archiveLogs("arrival-" + why)
	if err := v.removeDir(false, "arrival-"+why); err != nil {
		a.log.Warn("remove arrival dir", "vm", v.name, "err", err)
	}
	a.mu.Lock()
	if a.vms[v.name] == v {
		delete(a.vms, v.name)
	}
	a.mu.Unlock()
	a.log.Info("incoming migration removed", "vm", v.name, "why", why)
}
