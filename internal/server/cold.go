package server

import (
	"context"
	"fmt"
	agentv1 "github.com/ferryvm/ferry/gen/ferry/agent/v1"
	"time"

	"connectrpc.com/connect"
	ferryv1 "github.com/ferryvm/ferry/gen/ferry/v1"
	"github.com/ferryvm/ferry/internal/migration"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// cold drives a cold migration: stop the guest on the source, move the
// owner, boot it on the destination, remove it from the source. The guest
// reboots; its downtime is stop → destination QEMU started.
func (d *driver) cold(ctx context.Context) {
	m := d.r.snapshot(false)
	if err := d.step(migration.EvBeginCold, "stopping the guest on "+m.From); err != nil {
		return
	}
	wasRunning := d.prevState == "running"
	stopAt := time.Now()
	if wasRunning {
		sctx, cancel := context.WithTimeout(ctx, time.Minute)
		_, err := d.src.StopVM(sctx, connect.NewRequest(&agentv1.AgentStopVMRequest{Name: d.name()}))
		cancel()
		if err != nil {
			d.rollback(ctx, fmt.Errorf("stop the guest on %s: %w", m.From, err))
			return
		}
	}
	if err := d.step(migration.EvStopped, "guest stopped"); err != nil {
		return
	}
	if d.r.cancelled() {
		d.rollback(ctx, errCancelled)
		return
	}
	if err := d.step(migration.EvCopied, "no local disks to copy (shared storage or none)"); err != nil {
		return
	}
	if err := d.switchOwner(ctx, m.To); err != nil {
		d.rollback(ctx, fmt.Errorf("ownership compare-and-swap: %w", err))
		return
	}
	if err := d.step(migration.EvCommitted, "owner is now "+m.To); err != nil {
		return
	}
	d.coldForward(ctx, stopAt)
}

// coldForward boots the guest on the destination (the owner) and removes
// it from the source.
func (d *driver) coldForward(ctx context.Context, stopAt time.Time) {
	m := d.r.snapshot(false)
	wasRunning := d.prevState == "running"
	var started *ferryv1.VMStatus
	if wasRunning {
		sctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
		resp, err := d.dst.StartVM(sctx, connect.NewRequest(&agentv1.AgentStartVMRequest{Spec: d.vm.Spec}))
		cancel()
		if err != nil {
			d.unswitch(ctx, fmt.Errorf("start the guest on %s: %w", m.To, err))
			return
		}
		started = resp.Msg.Status
	}
	if err := d.step(migration.EvResumed, "guest booted on "+m.To); err != nil {
		return
	}
	d.r.mu.Lock()
	if started != nil && started.StartedAt != nil {
		down := started.StartedAt.AsTime().Sub(stopAt).Milliseconds()
		if down < 0 {
			down = time.Since(stopAt).Milliseconds()
		}
		d.r.m.DowntimeMs = down
		d.r.m.DowntimePhases = &ferryv1.DowntimePhases{TotalMs: down}
	}
	d.r.mu.Unlock()
	if err := retry(ctx, 30*time.Second, func(c context.Context) error {
		_, err := d.src.DeleteVM(c, connect.NewRequest(&agentv1.AgentDeleteVMRequest{Name: d.name(), MigrationId: d.id()}))
		return err
	}); err != nil {
		d.note(fmt.Sprintf("source cleanup failed: %v", err))
	}
	if _, err := d.s.store.UpdateVM(ctx, d.name(), true, func(cur *ferryv1.VM) error {
		cur.MigrationId, cur.Message = "", ""
		cur.State = d.prevState
		if started != nil {
			cur.Pid, cur.StartedAt, cur.Accel = started.Pid, started.StartedAt, started.Accel
		} else {
			cur.Pid, cur.StartedAt = 0, (*timestamppb.Timestamp)(nil)
		}
		return nil
	}); err != nil {
		d.s.log.Error("record cold arrival", "id", d.id(), "err", err)
	}
	_ = d.step(migration.EvCleaned, "removed from "+m.From)
}
