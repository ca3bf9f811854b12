package server

import (
	"context"
	"fmt"
	agentv1 "github.com/ferryvm/ferry/gen/ferry/agent/v1"
	"time"

	"connectrpc.com/connect"
	ferryv1 "github.com/ferryvm/ferry/gen/ferry/v1"
	"github.com/ferryvm/ferry/internal/migration"
)

// forward finishes a live migration past the point of no return: the owner
// record names the destination, so the destination must end up running.
// Only if it provably never ran is the owner moved back (unswitch).
func (d *driver) forward(ctx context.Context) {
	m := d.r.snapshot(false)
	armed := retry(ctx, 30*time.Second, func(c context.Context) error {
		_, err := d.dst.mig.ArmResume(c, d.stepReq())
		return err
	})
	if armed != nil {
		// Never armed: the destination cannot have run.
		d.unswitch(ctx, fmt.Errorf("arm the destination's resume: %w", armed))
		return
	}
	err := retry(ctx, 30*time.Second, func(c context.Context) error {
		_, err := d.src.mig.ContinueOutgoing(c, d.stepReq())
		return err
	})
	d.save(false) // the switchover and commit steps, now that the guest's pause is over
	if err != nil {
		if d.destNeverRan(ctx) {
			d.unswitch(ctx, fmt.Errorf("send the device state (migrate-continue): %w", err))
			return
		}
	}
	var inc *agentv1.IncomingStatus
	err = retry(ctx, 2*time.Minute, func(c context.Context) error {
		resp, err := d.dst.mig.FinishIncoming(c, d.stepReq())
		if err == nil {
			inc = resp.Msg.Status
			return nil
		}
		if d.destNeverRan(ctx) {
			return connect.NewError(connect.CodeFailedPrecondition, err) // stop retrying
		}
		return err
	})
	if err != nil {
		if d.destNeverRan(ctx) {
			d.unswitch(ctx, fmt.Errorf("destination did not resume: %w", err))
			return
		}
		d.fail(fmt.Errorf("destination %s did not confirm it runs after the switchover: %w; the owner record names %s — check it with ferry host list and retry", m.To, err, m.To))
		return
	}
	if err := d.step(migration.EvResumed, "destination runs and announced itself"); err != nil {
		return
	}
	if d.postcopyActive {
		if err := d.finishPostcopy(ctx); err != nil {
			d.fail(err)
			return
		}
	}
	out := d.finalSource(ctx)
	d.report(out, inc)
	if fin := d.r.snapshot(false); fin.Options.GetBandwidthMibps() == 0 && !d.postcopyActive {
		// Learn what QEMU really reaches between these hosts (and anywhere):
		// the planner's bandwidth for the next migration.
		d.s.bw.observe(fin.From, fin.To, fin.BandwidthMibps)
		d.s.bw.observe("*", "*", fin.BandwidthMibps)
	}
	if err := retry(ctx, 30*time.Second, func(c context.Context) error {
		_, err := d.src.mig.FinishOutgoing(c, d.stepReq())
		return err
	}); err != nil {
		d.s.log.Error("remove source QEMU after migration", "id", d.id(), "err", err)
		d.note(fmt.Sprintf("source cleanup failed: %v (the source QEMU is paused and never resumed)", err))
	}
	if _, err := d.s.store.UpdateVM(ctx, d.name(), true, func(cur *ferryv1.VM) error {
		cur.State, cur.MigrationId, cur.Message = "running", "", ""
		if inc != nil && inc.Vm != nil {
			cur.Pid = inc.Vm.Pid
		}
		return nil
	}); err != nil {
		d.s.log.Error("record arrival", "id", d.id(), "err", err)
	}
	_ = d.step(migration.EvCleaned, "source QEMU and taps removed")
}

// destNeverRan reports whether the destination provably never ran: it is
// gone, or its incoming migration failed before resuming.
func (d *driver) destNeverRan(ctx context.Context) bool {
	qctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	resp, err := d.dst.mig.QueryIncoming(qctx, d.stepReq())
	if err != nil {
		return connect.CodeOf(err) == connect.CodeNotFound
	}
	st := resp.Msg.Status
	return st.ResumedAt == nil && (st.Error != "" || st.Vm.GetPid() == 0)
}

// finalSource waits briefly for the source to report completed and returns
// its last status (QEMU's downtime and totals).
func (d *driver) finalSource(ctx context.Context) *agentv1.OutgoingStatus {
	deadline := time.Now().Add(5 * time.Second)
	for {
		qctx, cancel := context.WithTimeout(ctx, 3*time.Second)
		resp, err := d.src.mig.QueryOutgoing(qctx, d.stepReq())
		cancel()
		if err == nil {
			d.lastOut = resp.Msg.Status
			if resp.Msg.Status.Status == "completed" {
				return resp.Msg.Status
			}
		}
		if time.Now().After(deadline) {
			return d.lastOut
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// report fills the final figures and the downtime phases from QMP event
// times of both QEMUs.
func (d *driver) report(out *agentv1.OutgoingStatus, inc *agentv1.IncomingStatus) {
	d.r.mu.Lock()
	defer d.r.mu.Unlock()
	m := d.r.m
	if out != nil {
		m.DowntimeMs, m.SetupMs = out.DowntimeMs, out.SetupMs
		m.TransferredBytes, m.RemainingBytes, m.TotalBytes, m.Rounds = out.TransferredBytes, out.RemainingBytes, out.TotalBytes, out.DirtySyncCount
		// The rate of the live phase: bytes sent before the pause over
		// the time until the pause (the final round is sent after it).
		if out.PreSwitchoverAt != nil && !d.transferStart.IsZero() {
			if el := out.PreSwitchoverAt.AsTime().Sub(d.transferStart).Seconds(); el > 0 {
				m.BandwidthMibps = float64(out.TransferredBytes-out.DowntimeBytes) / (1 << 20) / el
			}
		}
	}
	if out == nil || inc == nil {
		return
	}
	ms := func(a, b interface{ AsTime() time.Time }) int64 {
		return b.AsTime().Sub(a.AsTime()).Milliseconds()
	}
	p := &ferryv1.DowntimePhases{FinalRoundBytes: out.DowntimeBytes}
	if out.StoppedAt != nil && out.PreSwitchoverAt != nil {
		p.StopMs = ms(out.StoppedAt, out.PreSwitchoverAt)
	}
	if out.PreSwitchoverAt != nil && out.ContinuedAt != nil {
		p.SwitchoverMs = ms(out.PreSwitchoverAt, out.ContinuedAt)
	}
	if d.postcopyActive {
		// Post-copy: the destination runs as soon as the device state is
		// there; the rest of RAM follows while it runs.
		if out.ContinuedAt != nil && inc.ResumedAt != nil {
			p.DeviceStateMs = ms(out.ContinuedAt, inc.ResumedAt)
		}
		if out.PostcopyStartedAt != nil && out.CompletedAt != nil {
			m.PostcopyMs = ms(out.PostcopyStartedAt, out.CompletedAt)
		}
		p.FinalRoundBytes = 0
	} else if out.ContinuedAt != nil && inc.LoadedAt != nil {
		stream := ms(out.ContinuedAt, inc.LoadedAt)
		// QEMU sends the last RAM and the device state in one stream:
		// split it by the final round's bytes at the measured rate.
		if m.BandwidthMibps > 0 {
			p.FinalRoundMs = min(stream, int64(float64(out.DowntimeBytes)/(1<<20)/m.BandwidthMibps*1000))
		}
		p.DeviceStateMs = stream - p.FinalRoundMs
	}
	if inc.LoadedAt != nil && inc.ResumedAt != nil {
		p.ResumeMs = ms(inc.LoadedAt, inc.ResumedAt)
	}
	if out.StoppedAt != nil && inc.ResumedAt != nil {
		p.TotalMs = ms(out.StoppedAt, inc.ResumedAt)
	}
	m.DowntimePhases = p
}

// note appends a message to the history without changing state.
func (d *driver) note(msg string) {
	d.r.mu.Lock()
	d.r.event(d.r.m.State, msg)
	d.r.mu.Unlock()
}

// fail ends a migration that can neither finish nor roll back on its own;
// the error tells the operator what state the VM is in.
func (d *driver) fail(err error) {
	d.s.log.Error("migration stuck after switchover", "id", d.id(), "err", err)
	d.r.mu.Lock()
	d.r.m.Error = err.Error()
	d.r.m.Status = "failed"
	d.r.event(d.r.m.State, err.Error())
	d.r.mu.Unlock()
	d.save(true)
}

// unswitch moves the owner back to the source after the point of no
// return, when the destination provably never ran, and rolls back.
func (d *driver) unswitch(ctx context.Context, cause error) {
	if err := d.step(migration.EvDestNeverRan, cause.Error()); err != nil {
		return
	}
	m := d.r.snapshot(false)
	err := retry(ctx, 30*time.Second, func(c context.Context) error { return d.switchOwner(c, m.From) })
	if err != nil {
		d.fail(fmt.Errorf("%v; moving the owner back to %s failed too: %w", cause, m.From, err))
		return
	}
	if err := d.step(migration.EvUnswitched, "owner back to "+m.From); err != nil {
		return
	}
	d.undo(ctx, cause)
}
