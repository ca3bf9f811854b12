package agent

import (
	"context"
	"errors"
	"fmt"
	"time"

	agentv1 "github.com/ferryvm/ferry/gen/ferry/agent/v1"
	ferryv1 "github.com/ferryvm/ferry/gen/ferry/v1"
	"github.com/ferryvm/ferry/internal/failpoint"
	"github.com/ferryvm/ferry/internal/migration"
	"github.com/ferryvm/ferry/internal/qmp"
)

// Failpoints of the source side.
const (
	// fpBeforeMigrateContinue sits before migrate-continue is sent.
	fpBeforeMigrateContinue = "agent/before-migrate-continue"
	// fpAfterMigrateContinue sits after migrate-continue was sent and
	// before ContinueOutgoing answers (a lost reply when it errors).
	fpAfterMigrateContinue = "agent/after-migrate-continue"
	// fpBeforeResumeSource sits before a cancelled source is resumed.
	fpBeforeResumeSource = "agent/before-resume-source"
)

// cancelWait bounds how long CancelOutgoing waits for QEMU to end a
// cancelled transfer.
const cancelWait = 15 * time.Second

// yankAfter is how long a migration may stay running after migrate_cancel
// before its channels are yanked. A healthy link ends a cancel in
// milliseconds.
const yankAfter = 2 * time.Second

// postcopyStarted reports whether s says post-copy began: from then on the
// destination holds pages the source lacks.
func postcopyStarted(s qmp.MigrationStatus) bool {
	switch s {
	case qmp.MigrationStatusPostcopyActive, qmp.MigrationStatusPostcopyPaused, qmp.MigrationStatusPostcopyRecover:
		return true
	}
	return false
}

// continueOutgoing sends migrate-continue: the owner CAS succeeded, the
// device state may go. It acts on QEMU's status, so it also works after an
// agent restart, and is idempotent once the migration moved past
// pre-switchover.
func (a *Agent) continueOutgoing(ctx context.Context, name, id string) (*agentv1.OutgoingStatus, error) {
	v, out, mon, err := a.outgoingMonitor(name, id)
	if err != nil {
		return nil, err
	}
	info, err := mon.QueryMigrate(ctx)
	if err != nil {
		return nil, fmt.Errorf("query-migrate: %w", err)
	}
	switch s := info.CurrentStatus(); {
	case s == qmp.MigrationStatusDevice || s == qmp.MigrationStatusCompleted || postcopyStarted(s):
		return v.outgoingStatus(ctx) // already continued
	case s != qmp.MigrationStatusPreSwitchover:
		return nil, failedPrecondition("VM %s's migration is %s, not pre-switchover: nothing to continue", name, s)
	}
	out.mu.Lock()
	if out.state == migration.SrcMigrating {
		out.state = migration.SrcPreSwitchover // the event may not be processed yet
	}
	if out.state != migration.SrcContinued {
		next, err := migration.StepSource(out.state, migration.SrcEvContinue)
		if err != nil {
			out.mu.Unlock()
			return nil, failedPrecondition("%v", err)
		}
		out.state = next
	}
	if out.continuedAt.IsZero() {
		out.continuedAt = time.Now()
	}
	out.mu.Unlock()
	if err := v.saveOutgoing(out); err != nil {
		return nil, err
	}
	if err := failpoint.Inject(fpBeforeMigrateContinue); err != nil {
		return nil, err
	}
	if err := mon.MigrateContinue(ctx, qmp.MigrationStatusPreSwitchover); err != nil {
		return nil, fmt.Errorf("migrate-continue: %w", err)
	}
	if err := failpoint.Inject(fpAfterMigrateContinue); err != nil {
		return nil, err
	}
	return v.outgoingStatus(ctx)
}

// cancelOutgoing cancels the transfer and makes sure the source runs.
// A source whose migration completed (or whose post-copy started) is
// resumed only with resumeCompleted — the caller's proof that the
// destination never ran; otherwise it is refused: the VM may live on the
// destination. Idempotent: a source that runs again answers OK.
func (a *Agent) cancelOutgoing(ctx context.Context, name, id string, resumeCompleted bool) (*ferryv1.VMStatus, error) {
	v, err := a.lookup(name)
	if err != nil {
		return nil, err
	}
	v.mu.Lock()
	out, mon := v.out, v.mon
	v.mu.Unlock()
	if mon == nil {
		// Not found, not a refusal: the engine then asks for the VM's
		// state (its QEMU died) instead of retrying the cancel forever.
		return nil, notFound("VM %s has no QEMU on host %s", name, a.cfg.Name)
	}
	other := ""
	if out != nil && out.id != id {
		other = out.id
		out = nil // another migration: only make sure the source runs
	}
	if out != nil {
		out.mu.Lock()
		set := out.mir
		out.mu.Unlock()
		if set != nil {
			// The source keeps its disks; the destination's copies go with it.
			if err := cancelMirrors(ctx, mon, set); err != nil {
				a.log.Warn("disk mirrors not cleanly stopped (the destination's copies are removed with it)", "vm", name, "migration", id, "err", err)
			}
		}
	}
	info, err := mon.QueryMigrate(ctx)
	if err != nil {
		return nil, fmt.Errorf("query-migrate: %w", err)
	}
	s := info.CurrentStatus()
	if other != "" && !s.Finished() && s != qmp.MigrationStatusNone {
		// A late cancel of an earlier attempt must not cancel (or resume
		// the source of) the attempt that runs now.
		return nil, failedPrecondition("VM %s is migrating by %s (%s), not %s: not cancelled", name, other, s, id)
	}
	if !s.Finished() && s != qmp.MigrationStatusNone && !postcopyStarted(s) {
		if err := mon.MigrateCancel(ctx); err != nil {
			return nil, fmt.Errorf("migrate_cancel: %w", err)
		}
		if out != nil && out.relayPeer != "" {
			// A relayed channel may be blocked in a send to its relay,
			// which waits on a cut link itself: closing the relay fails
			// every channel's socket at once (the next attempt opens a
			// relay of its own).
			v.mu.Lock()
			v.closeRelaysLocked()
			v.mu.Unlock()
		}
		if s, err = a.waitMigrationEnd(ctx, mon, name); err != nil {
			return nil, err
		}
	}
	if s == qmp.MigrationStatusCompleted || postcopyStarted(s) {
		if !resumeCompleted {
			return nil, failedPrecondition("VM %s's migration %s is %s: the source must not run again unless the destination provably never ran (resume_completed)", name, id, s)
		}
		if postcopyStarted(s) {
			if err := mon.MigrateCancel(ctx); err != nil {
				return nil, fmt.Errorf("migrate_cancel of a post-copy: %w", err)
			}
		}
		a.log.Warn("resuming a source whose migration completed: the destination never ran", "vm", name, "migration", id, "status", s)
	}
	st, err := mon.QueryStatus(ctx)
	if err != nil {
		return nil, fmt.Errorf("query-status: %w", err)
	}
	if !st.Running {
		if err := failpoint.Inject(fpBeforeResumeSource); err != nil {
			return nil, err
		}
		if err := mon.Cont(ctx); err != nil {
			return nil, fmt.Errorf("resume source: %w", err)
		}
	}
	if out != nil {
		out.mu.Lock()
		out.state = migration.SrcCancelled
		out.mu.Unlock()
		if err := v.saveOutgoing(out); err != nil {
			return nil, err
		}
	}
	a.log.Info("outgoing migration cancelled; source runs", "vm", name, "migration", id)
	return v.status(), nil
}

// waitMigrationEnd waits (bounded) until QEMU's migration status is final.
// A migration still running yankAfter after migrate_cancel has a channel
// blocked in a send to a peer that does not answer (a cut link: multifd
// channels are not shut down by migrate_cancel); it is yanked once, which
// shuts every migration channel down.
func (a *Agent) waitMigrationEnd(ctx context.Context, mon *qmp.Monitor, name string) (qmp.MigrationStatus, error) {
	start := time.Now()
	deadline := start.Add(cancelWait)
	yanked := false
	var last qmp.MigrationStatus
	for {
		info, err := mon.QueryMigrate(ctx)
		if err == nil {
			last = info.CurrentStatus()
			if last.Finished() {
				return last, nil
			}
		}
		if !yanked && time.Since(start) >= yankAfter {
			yanked = true
			switch yerr := mon.YankMigration(ctx); {
			case yerr == nil:
				a.log.Warn("migration still running after migrate_cancel: yanked its channels", "vm", name, "status", last, "after", time.Since(start).Round(time.Millisecond))
			case errors.Is(yerr, qmp.ErrDeviceNotFound):
				// No channel registered: the migration is ending on its own.
			default:
				a.log.Warn("yank of the migration channels failed", "vm", name, "err", yerr)
			}
		}
		if time.Now().After(deadline) {
			return "", fmt.Errorf("migration of VM %s still %q %s after migrate_cancel (channels yanked: %v)", name, last, cancelWait, yanked)
		}
		select {
		case <-ctx.Done():
			return "", fmt.Errorf("migration of VM %s: waiting for migrate_cancel: %w", name, ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// finishOutgoing quits the source QEMU after a completed migration (or a
// finished post-copy) and removes its taps and directory. Nothing left is
// not an error.
func (a *Agent) finishOutgoing(ctx context.Context, name, id string) error {
	v, ok := a.find(name)
	if !ok {
		return nil
	}
	v.mu.Lock()
	out, mon, proc := v.out, v.mon, v.proc
	v.mu.Unlock()
	if out == nil || out.id != id {
		return failedPrecondition("VM %s has no outgoing migration %s on host %s", name, id, a.cfg.Name)
	}
	if mon != nil {
		info, err := mon.QueryMigrate(ctx)
		if err != nil {
			return fmt.Errorf("query-migrate: %w", err)
		}
		if info.CurrentStatus() != qmp.MigrationStatusCompleted {
			return failedPrecondition("VM %s's migration is %s, not completed: not removing the source", name, info.CurrentStatus())
		}
	} else {
		out.mu.Lock()
		done := out.state == migration.SrcCompleted || out.state == migration.SrcFinished
		out.mu.Unlock()
		if !done {
			return failedPrecondition("VM %s's source QEMU is gone but its migration %s never completed: not removing its files", name, id)
		}
	}
	out.mu.Lock()
	if out.state != migration.SrcCompleted {
		out.state = migration.SrcCompleted
	}
	out.state, _ = migration.StepSource(out.state, migration.SrcEvFinish)
	out.sub.Close()
	out.mu.Unlock()
	if proc != nil {
		v.mu.Lock()
		v.stopping = true
		v.mu.Unlock()
		if mon != nil {
			qctx, cancel := context.WithTimeout(ctx, 3*time.Second)
			_ = mon.Quit(qctx)
			cancel()
		}
		select {
		case <-proc.Exited():
		case <-time.After(5 * time.Second):
			if err := proc.Kill(); err != nil {
				return fmt.Errorf("kill source QEMU of VM %s: %w", name, err)
			}
		}
		<-proc.Exited()
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.mon != nil {
		_ = v.mon.Close()
	}
	v.proc, v.mon, v.out = nil, nil, nil
	v.deleteTaps(v.spec)
	v.archiveLogs("migrated-" + id)
	// The local disks go only when the destination holds whole copies.
	out.mu.Lock()
	keepLocal := !out.disksMirrored
	out.mu.Unlock()
	if err := v.removeDir(keepLocal, "migrated-"+id); err != nil {
		return fmt.Errorf("remove source dir of VM %s: %w", name, err)
	}
	a.mu.Lock()
	if a.vms[name] == v {
		delete(a.vms, name)
	}
	a.mu.Unlock()
	a.log.Info("VM left by migration; source removed", "vm", name, "migration", id)
	return nil
}
