package agent

import (
	"cmp"
	"context"
	"fmt"
	agentv1 "github.com/ferryvm/ferry/gen/ferry/agent/v1"
	"os"
	"time"

	ferryv1 "github.com/ferryvm/ferry/gen/ferry/v1"
	"github.com/ferryvm/ferry/internal/migration"
	"github.com/ferryvm/ferry/internal/qmp"
)

// running returns the VM if its QEMU runs here as this host's own VM.
func (a *Agent) running(name string) (*vm, error) {
	v, err := a.lookup(name)
	if err != nil {
		return nil, err
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.proc == nil || v.mon == nil || v.in != nil {
		return nil, failedPrecondition("VM %s does not run on host %s", name, a.cfg.Name)
	}
	return v, nil
}

// startOutgoing configures the source QEMU and starts sending to uri. The
// source pauses at pre-switchover and waits for ContinueOutgoing.
func (a *Agent) startOutgoing(ctx context.Context, req *agentv1.StartOutgoingRequest) (*agentv1.OutgoingStatus, error) {
	v, err := a.running(req.Name)
	if err != nil {
		return nil, err
	}
	v.mu.Lock()
	if v.out != nil && v.out.id == req.MigrationId {
		v.mu.Unlock()
		return v.outgoingStatus(ctx) // a retried step
	}
	if v.out != nil {
		v.out.mu.Lock()
		busy := v.out.state != migration.SrcCancelled
		v.out.mu.Unlock()
		if busy {
			v.mu.Unlock()
			return nil, failedPrecondition("VM %s is already migrating (%s)", req.Name, v.out.id)
		}
	}
	mon := v.mon
	out := &outgoing{id: req.MigrationId, state: migration.SrcIdle, changed: make(chan struct{})}
	out.sub = mon.Subscribe(qmp.EventMigration, qmp.EventStop)
	v.out = out
	v.mu.Unlock()

	fail := func(err error) (*agentv1.OutgoingStatus, error) {
		out.sub.Close()
		v.mu.Lock()
		if v.out == out {
			v.out = nil
		}
		v.mu.Unlock()
		return nil, err
	}
	caps := []qmp.CapabilityState{
		{Capability: qmp.CapEvents, State: true},
		{Capability: qmp.CapPauseBeforeSwitchover, State: true},
		{Capability: qmp.CapMultifd, State: req.MultifdChannels > 1},
		{Capability: qmp.CapPostcopyRAM, State: req.Postcopy},
		{Capability: qmp.CapAutoConverge, State: req.AutoConverge},
	}
	if err := mon.MigrateSetCapabilities(ctx, caps); err != nil {
		return fail(fmt.Errorf("source capabilities: %w", err))
	}
	params := qmp.MigrationParameters{
		MaxBandwidth:  qmp.Ptr(req.MaxBandwidthBytes),
		DowntimeLimit: qmp.Ptr(req.DowntimeLimitMs),
		// The cap applies to the post-copy phase too (QEMU's default there
		// is unlimited).
		MaxPostcopyBandwidth: qmp.Ptr(cmp.Or(req.MaxPostcopyBandwidthBytes, req.MaxBandwidthBytes)),
	}
	if req.MultifdChannels > 1 {
		params.MultifdChannels = qmp.Ptr(int64(req.MultifdChannels))
	}
	if req.AutoConverge {
		if req.ThrottleInitial > 0 {
			params.CPUThrottleInitial = qmp.Ptr(int64(req.ThrottleInitial))
		}
		if req.ThrottleIncrement > 0 {
			params.CPUThrottleIncrement = qmp.Ptr(int64(req.ThrottleIncrement))
		}
	}
	if err := mon.MigrateSetParameters(ctx, params); err != nil {
		return fail(fmt.Errorf("source parameters: %w", err))
	}
	go v.watchOutgoing(out)
	out.mu.Lock()
	out.state, _ = migration.StepSource(out.state, migration.SrcEvStart)
	out.mu.Unlock()
	if err := mon.Migrate(ctx, req.Uri, qmp.MigrateOptions{}); err != nil {
		return fail(fmt.Errorf("migrate to %s: %w", req.Uri, err))
	}
	a.log.Info("outgoing migration started", "vm", req.Name, "migration", req.MigrationId, "uri", req.Uri,
		"max_bandwidth", req.MaxBandwidthBytes, "downtime_limit_ms", req.DowntimeLimitMs, "multifd", req.MultifdChannels)
	return v.outgoingStatus(ctx)
}

// watchOutgoing records the source's QMP event times.
func (v *vm) watchOutgoing(out *outgoing) {
	for ev := range out.sub.C() {
		out.mu.Lock()
		switch ev.Name {
		case qmp.EventStop:
			out.stoppedAt = ev.Timestamp
		case qmp.EventMigration:
			close(out.changed) // wake long polls: the status moved
			out.changed = make(chan struct{})
			if me, err := ev.AsMigration(); err == nil {
				out.status = string(me.Status)
				switch me.Status {
				case qmp.MigrationStatusPreSwitchover:
					out.preSwitchoverAt = ev.Timestamp
					if next, err := migration.StepSource(out.state, migration.SrcEvPaused); err == nil {
						out.state = next
					}
				case qmp.MigrationStatusPostcopyActive:
					if out.postcopyAt.IsZero() {
						out.postcopyAt = ev.Timestamp
					}
				case qmp.MigrationStatusCompleted:
					out.completedAt = ev.Timestamp
					if next, err := migration.StepSource(out.state, migration.SrcEvCompleted); err == nil {
						out.state = next
					}
				}
			}
		}
		out.mu.Unlock()
	}
}

// waitChange waits up to d for QEMU's migration status to differ from
// known (the status the caller saw last).
func (out *outgoing) waitChange(ctx context.Context, known string, d time.Duration) {
	out.mu.Lock()
	ch, cur := out.changed, out.status
	out.mu.Unlock()
	if cur != known {
		return
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ch:
	case <-t.C:
	case <-ctx.Done():
	}
}

// outgoingStatus reads query-migrate and the recorded event times.
func (v *vm) outgoingStatus(ctx context.Context) (*agentv1.OutgoingStatus, error) {
	v.mu.Lock()
	mon, out := v.mon, v.out
	v.mu.Unlock()
	if mon == nil || out == nil {
		return nil, failedPrecondition("VM %s has no outgoing migration", v.name)
	}
	info, err := mon.QueryMigrate(ctx)
	if err != nil {
		return nil, fmt.Errorf("query-migrate: %w", err)
	}
	st := &agentv1.OutgoingStatus{Status: string(info.CurrentStatus()), Error: info.ErrorDesc}
	if r := info.RAM; r != nil {
		st.TransferredBytes, st.RemainingBytes, st.TotalBytes = r.Transferred, r.Remaining, r.Total
		st.DirtyPagesRate, st.PageSize, st.Mbps, st.DirtySyncCount = float64(r.DirtyPagesRate), r.PageSize, r.Mbps, r.DirtySyncCount
		st.DowntimeBytes = int64(r.DowntimeBytes)
		st.PostcopyRequests = r.PostcopyRequests
	}
	deref := func(p *int64) int64 {
		if p == nil {
			return 0
		}
		return *p
	}
	st.SetupMs, st.TotalMs, st.DowntimeMs, st.ExpectedDowntimeMs = deref(info.SetupTime), deref(info.TotalTime), deref(info.Downtime), deref(info.ExpectedDowntime)
	st.ThrottlePercent = deref(info.CPUThrottlePercentage)
	if s, err := mon.QueryStatus(ctx); err == nil {
		st.QemuStatus = string(s.Status)
	}
	out.mu.Lock()
	st.StoppedAt, st.PreSwitchoverAt, st.ContinuedAt, st.CompletedAt = ts(out.stoppedAt), ts(out.preSwitchoverAt), ts(out.continuedAt), ts(out.completedAt)
	st.PostcopyStartedAt = ts(out.postcopyAt)
	out.mu.Unlock()
	return st, nil
}

// outgoingFor returns the VM leaving by migration id.
func (a *Agent) outgoingFor(name, id string) (*vm, *outgoing, error) {
	v, err := a.lookup(name)
	if err != nil {
		return nil, nil, err
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.out == nil || v.out.id != id {
		return nil, nil, failedPrecondition("VM %s has no outgoing migration %s on host %s", name, id, a.cfg.Name)
	}
	return v, v.out, nil
}

// continueOutgoing sends migrate-continue: the owner CAS succeeded, the
// device state may go.
func (a *Agent) continueOutgoing(ctx context.Context, name, id string) (*agentv1.OutgoingStatus, error) {
	v, out, err := a.outgoingFor(name, id)
	if err != nil {
		return nil, err
	}
	out.mu.Lock()
	if out.state == migration.SrcContinued || out.state == migration.SrcCompleted {
		out.mu.Unlock()
		return v.outgoingStatus(ctx)
	}
	next, err := migration.StepSource(out.state, migration.SrcEvContinue)
	if err != nil {
		out.mu.Unlock()
		return nil, failedPrecondition("%v", err)
	}
	out.state, out.continuedAt = next, time.Now()
	out.mu.Unlock()
	if err := v.mon.MigrateContinue(ctx, qmp.MigrationStatusPreSwitchover); err != nil {
		return nil, fmt.Errorf("migrate-continue: %w", err)
	}
	return v.outgoingStatus(ctx)
}

// cancelOutgoing cancels the transfer and makes sure the source runs. A
// source whose migration completed is refused: it must never run again.
func (a *Agent) cancelOutgoing(ctx context.Context, name, id string) (*ferryv1.VMStatus, error) {
	v, err := a.lookup(name)
	if err != nil {
		return nil, err
	}
	v.mu.Lock()
	out, mon := v.out, v.mon
	v.mu.Unlock()
	if mon == nil {
		return nil, failedPrecondition("VM %s has no QEMU on host %s", name, a.cfg.Name)
	}
	if out != nil && out.id == id {
		out.mu.Lock()
		next, err := migration.StepSource(out.state, migration.SrcEvCancel)
		if err != nil && out.state != migration.SrcCancelled {
			out.mu.Unlock()
			return nil, failedPrecondition("%v", err)
		}
		if err == nil {
			out.state = next
		}
		out.mu.Unlock()
	}
	info, err := mon.QueryMigrate(ctx)
	if err != nil {
		return nil, fmt.Errorf("query-migrate: %w", err)
	}
	if s := info.CurrentStatus(); s == qmp.MigrationStatusCompleted {
		return nil, failedPrecondition("VM %s's migration already completed: the source must not run again", name)
	} else if !s.Finished() && s != qmp.MigrationStatusNone {
		if err := mon.MigrateCancel(ctx); err != nil {
			return nil, fmt.Errorf("migrate_cancel: %w", err)
		}
		deadline := time.Now().Add(15 * time.Second)
		for {
			info, err := mon.QueryMigrate(ctx)
			if err == nil && info.CurrentStatus().Finished() {
				break
			}
			if time.Now().After(deadline) {
				return nil, fmt.Errorf("migration of VM %s did not stop within 15s of migrate_cancel", name)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	st, err := mon.QueryStatus(ctx)
	if err != nil {
		return nil, fmt.Errorf("query-status: %w", err)
	}
	if !st.Running {
		if err := mon.Cont(ctx); err != nil {
			return nil, fmt.Errorf("resume source: %w", err)
		}
	}
	v.mu.Lock()
	if v.out == out && out != nil {
		out.sub.Close()
		v.out = nil
	}
	v.mu.Unlock()
	a.log.Info("outgoing migration cancelled; source runs", "vm", name, "migration", id)
	return v.status(), nil
}

// finishOutgoing quits the source QEMU after a completed migration and
// removes its taps and directory. Unknown VMs are not an error.
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
	}
	out.mu.Lock()
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
	if err := os.RemoveAll(v.dir); err != nil {
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
