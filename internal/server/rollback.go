package server

import (
	"context"
	"errors"
	"fmt"
	agentv1 "github.com/ferryvm/ferry/gen/ferry/agent/v1"
	"time"

	"connectrpc.com/connect"
	"github.com/ferryvm/ferry/internal/migration"
)

// rollback ends a migration before its point of no return: the source runs
// on, the destination is removed, the VM record is unlocked.
func (d *driver) rollback(ctx context.Context, cause error) {
	ev := migration.EvFail
	if errors.Is(cause, errCancelled) {
		ev = migration.EvCancel
	}
	if err := d.step(ev, cause.Error()); err != nil {
		return
	}
	d.undo(ctx, cause)
}

// undo does the rolling back (state RollingBack) and ends the migration.
func (d *driver) undo(ctx context.Context, cause error) {
	var problems []string
	if d.isCold() {
		if d.prevState == "running" {
			if err := d.startOn(ctx, d.src, "source"); err != nil {
				problems = append(problems, err.Error())
			}
		}
	} else {
		err := retry(ctx, 30*time.Second, func(c context.Context) error {
			_, err := d.src.mig.CancelOutgoing(c, d.stepReq())
			if connect.CodeOf(err) == connect.CodeFailedPrecondition && !d.outgoingStarted {
				return nil // nothing was started on the source
			}
			return err
		})
		if err != nil {
			problems = append(problems, fmt.Sprintf("resume the source: %v", err))
		}
	}
	if !d.isCold() {
		if err := retry(ctx, 10*time.Second, func(c context.Context) error {
			_, err := d.dst.mig.AbortIncoming(c, d.stepReq())
			return err
		}); err != nil {
			// The destination agent may be down: keep trying in the
			// background; an agent that restarts removes a dead arrival itself.
			d.note(fmt.Sprintf("destination cleanup pending: %v", err))
			go d.abortLater()
		}
	}
	d.s.unlockVMRecord(context.WithoutCancel(ctx), d.name(), d.id(), d.prevState)
	d.r.mu.Lock()
	if errors.Is(cause, errCancelled) {
		d.r.m.Error = ""
	} else {
		d.r.m.Error = cause.Error()
	}
	if len(problems) > 0 {
		d.r.m.Error += "; rollback: " + fmt.Sprint(problems)
	}
	d.r.mu.Unlock()
	if errors.Is(cause, errCancelled) {
		_ = d.step(migration.EvRolledBackByUser, "source runs; destination removed")
	} else {
		_ = d.step(migration.EvRolledBack, "source runs; destination removed")
	}
}

// abortLater retries removing the destination for a while.
func (d *driver) abortLater() {
	deadline := time.Now().Add(10 * time.Minute)
	for time.Now().Before(deadline) {
		time.Sleep(2 * time.Second)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		_, err := d.dst.mig.AbortIncoming(ctx, d.stepReq())
		cancel()
		if err == nil {
			d.s.log.Info("destination cleanup done", "id", d.id())
			return
		}
	}
	d.s.log.Error("destination cleanup gave up after 10 minutes", "id", d.id())
}

// startOn boots the VM on one side (cold migration and its undo).
func (d *driver) startOn(ctx context.Context, c *agentClients, side string) error {
	sctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	if _, err := c.StartVM(sctx, connect.NewRequest(&agentv1.AgentStartVMRequest{Spec: d.vm.Spec})); err != nil {
		return fmt.Errorf("start VM on the %s: %w", side, err)
	}
	return nil
}
