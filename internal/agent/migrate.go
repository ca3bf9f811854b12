package agent

import (
	"context"
	"errors"
	"fmt"
	agentv1 "github.com/ferryvm/ferry/gen/ferry/agent/v1"
	"os"
	"path/filepath"
	"sync"
	"time"

	"connectrpc.com/connect"
	"github.com/ferryvm/ferry/internal/migration"
	"github.com/ferryvm/ferry/internal/qmp"
	"github.com/ferryvm/ferry/internal/revert"
	"github.com/ferryvm/ferry/internal/spec"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// incomingMarker marks a VM directory whose VM is arriving by migration and
// is not (yet) this host's; it holds the migration id.
const incomingMarker = "incoming"

// outgoing is the source side of a live migration.
type outgoing struct {
	id string

	mu    sync.Mutex // guards the fields below (updated by the event watcher)
	state migration.SourceState
	sub   *qmp.Subscription

	stoppedAt, preSwitchoverAt, continuedAt, completedAt time.Time
	postcopyAt                                           time.Time
	changed                                              chan struct{} // closed and replaced at each status event
	status                                               string        // QEMU's migration status from the last event
}

// incoming is the destination side of a live migration.
type incoming struct {
	id  string
	uri string

	mu        sync.Mutex
	state     migration.IncomingState
	sub       *qmp.Subscription
	loaded    bool // QEMU reported the incoming migration completed
	contSent  bool // cont sent after arming
	loadedAt  time.Time
	resumedAt time.Time
	err       string
}

// adoptable reports whether the VM is still only arriving (not running here).
func (in *incoming) adoptable() bool {
	in.mu.Lock()
	defer in.mu.Unlock()
	return in.state == migration.InListening || in.state == migration.InArmed || in.state == migration.InNone
}

func failedPrecondition(format string, args ...any) error {
	return connect.NewError(connect.CodeFailedPrecondition, fmt.Errorf(format, args...))
}

func ts(t time.Time) *timestamppb.Timestamp {
	if t.IsZero() {
		return nil
	}
	return timestamppb.New(t)
}

// prepareIncoming starts a paused QEMU for sp that waits for a migration
// stream on this host's migration address, and returns its tcp: URI.
func (a *Agent) prepareIncoming(ctx context.Context, req *agentv1.PrepareIncomingRequest) (string, error) {
	sp := req.GetSpec()
	if sp == nil {
		return "", connect.NewError(connect.CodeInvalidArgument, errors.New("spec: required"))
	}
	spec.Default(sp)
	if err := spec.Validate(sp); err != nil {
		return "", connect.NewError(connect.CodeInvalidArgument, err)
	}
	if a.cfg.MigrationIP == "" {
		return "", failedPrecondition("host %s has no migration address: start the agent with --migration-ip or a --bridge that has an IPv4 address", a.cfg.Name)
	}
	v := a.getOrCreate(sp.Name)
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.in != nil && v.in.id == req.MigrationId && v.proc != nil {
		return v.in.uri, nil // a retried step
	}
	if v.proc != nil || v.in != nil || v.out != nil {
		return "", failedPrecondition("VM %s already exists on host %s", sp.Name, a.cfg.Name)
	}
	if _, err := os.Stat(v.dir); err == nil {
		if _, ierr := os.Stat(filepath.Join(v.dir, incomingMarker)); ierr != nil {
			return "", failedPrecondition("VM %s has a directory on host %s (%s): it is not arriving by migration; delete the VM there first", sp.Name, a.cfg.Name, v.dir)
		}
		_ = os.RemoveAll(v.dir) // the remains of an earlier, failed arrival
	}

	r := revert.New()
	defer r.Fail()
	proc, mon, accel, err := v.launch(ctx, sp, "defer", r)
	if err != nil {
		return "", err
	}
	if err := os.WriteFile(filepath.Join(v.dir, incomingMarker), []byte(req.MigrationId), 0o644); err != nil {
		return "", fmt.Errorf("mark incoming: %w", err)
	}
	in := &incoming{id: req.MigrationId, state: migration.InNone}
	in.sub = mon.Subscribe(qmp.EventMigration, qmp.EventResume)
	r.Add(in.sub.Close)
	caps := []qmp.CapabilityState{{Capability: qmp.CapEvents, State: true}}
	if req.Postcopy {
		caps = append(caps, qmp.CapabilityState{Capability: qmp.CapPostcopyRAM, State: true})
	}
	if req.MultifdChannels > 1 {
		caps = append(caps, qmp.CapabilityState{Capability: qmp.CapMultifd, State: true})
	}
	if err := mon.MigrateSetCapabilities(ctx, caps); err != nil {
		return "", fmt.Errorf("destination capabilities: %w", err)
	}
	if req.MultifdChannels > 1 {
		if err := mon.MigrateSetParameters(ctx, qmp.MigrationParameters{MultifdChannels: qmp.Ptr(int64(req.MultifdChannels))}); err != nil {
			return "", fmt.Errorf("destination multifd channels: %w", err)
		}
	}
	if err := mon.MigrateIncoming(ctx, "tcp:"+a.cfg.MigrationIP+":0"); err != nil {
		return "", fmt.Errorf("migrate-incoming: %w", err)
	}
	info, err := mon.QueryMigrate(ctx)
	if err != nil {
		return "", fmt.Errorf("read incoming port: %w", err)
	}
	for _, sa := range info.SocketAddress {
		if sa.Type == "inet" && sa.Port != "" && sa.Port != "0" {
			in.uri = "tcp:" + a.cfg.MigrationIP + ":" + sa.Port
		}
	}
	if in.uri == "" {
		return "", fmt.Errorf("destination QEMU reports no listening port (query-migrate: %+v)", info.SocketAddress)
	}
	if in.state, err = migration.StepIncoming(in.state, migration.InEvListen); err != nil {
		return "", err
	}
	r.Success()
	v.spec, v.proc, v.mon, v.accel = sp, proc, mon, accel
	v.state, v.message, v.stopping = "incoming", "", false
	v.in = in
	go v.watch(proc, mon)
	go v.watchIncoming(in)
	a.log.Info("incoming migration listening", "vm", v.name, "migration", in.id, "uri", in.uri, "pid", proc.PID())
	return in.uri, nil
}

// watchIncoming records the destination's QMP event times and its move to
// running.
func (v *vm) watchIncoming(in *incoming) {
	for ev := range in.sub.C() {
		switch ev.Name {
		case qmp.EventMigration:
			me, err := ev.AsMigration()
			if err != nil {
				continue
			}
			in.mu.Lock()
			switch me.Status {
			case qmp.MigrationStatusCompleted:
				in.loaded, in.loadedAt = true, ev.Timestamp
			case qmp.MigrationStatusFailed:
				in.err = "incoming migration failed on the destination"
			}
			in.mu.Unlock()
		case qmp.EventResume:
			in.mu.Lock()
			if in.resumedAt.IsZero() {
				in.resumedAt = ev.Timestamp
			}
			if next, err := migration.StepIncoming(in.state, migration.InEvResumed); err == nil {
				in.state = next
			}
			in.mu.Unlock()
		}
	}
}

func (v *vm) incomingStatus() *agentv1.IncomingStatus {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.incomingStatusLocked()
}

func (v *vm) incomingStatusLocked() *agentv1.IncomingStatus {
	st := &agentv1.IncomingStatus{Vm: v.statusLocked()}
	st.QemuStatus = st.Vm.QemuStatus
	if in := v.in; in != nil {
		in.mu.Lock()
		st.State = string(in.state)
		st.LoadedAt, st.ResumedAt, st.Error = ts(in.loadedAt), ts(in.resumedAt), in.err
		in.mu.Unlock()
	} else if v.proc != nil {
		st.State = string(migration.InAdopted)
	}
	return st
}

// incomingFor returns the VM arriving by migration id.
func (a *Agent) incomingFor(name, id string) (*vm, error) {
	v, err := a.lookup(name)
	if err != nil {
		return nil, err
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.in == nil || v.in.id != id {
		return nil, failedPrecondition("VM %s is not arriving on host %s by migration %s", name, a.cfg.Name, id)
	}
	return v, nil
}

// armResume authorises the destination to run (the owner CAS succeeded)
// and sends cont at once: while QEMU is still loading (inmigrate) cont only
// sets autostart, so the destination starts the instant its state is
// complete — in pre-copy after the device state, in post-copy as soon as
// the device state arrived — and never before it was armed.
func (a *Agent) armResume(ctx context.Context, name, id string) (*agentv1.IncomingStatus, error) {
	v, err := a.incomingFor(name, id)
	if err != nil {
		return nil, err
	}
	v.mu.Lock()
	in, mon := v.in, v.mon
	v.mu.Unlock()
	in.mu.Lock()
	if in.state != migration.InArmed && in.state != migration.InRunning {
		next, err := migration.StepIncoming(in.state, migration.InEvArm)
		if err != nil {
			in.mu.Unlock()
			return nil, connect.NewError(connect.CodeFailedPrecondition, err)
		}
		in.state = next
	}
	send := !in.contSent
	in.contSent = true
	in.mu.Unlock()
	if send && mon != nil {
		if err := mon.Cont(ctx); err != nil {
			in.mu.Lock()
			in.contSent = false
			in.mu.Unlock()
			return nil, fmt.Errorf("arm destination resume (cont): %w", err)
		}
	}
	return v.incomingStatus(), nil
}

// finishIncoming waits until the destination runs, announces it on the
// network and adopts it as an ordinary VM of this host.
func (a *Agent) finishIncoming(ctx context.Context, name, id string) (*agentv1.IncomingStatus, error) {
	v, err := a.lookup(name)
	if err != nil {
		return nil, err
	}
	v.mu.Lock()
	if v.in == nil && v.proc != nil && v.state == "running" {
		st := v.incomingStatusLocked() // already adopted: a retried step
		v.mu.Unlock()
		return st, nil
	}
	in, mon := v.in, v.mon
	v.mu.Unlock()
	if in == nil || in.id != id || mon == nil {
		return nil, failedPrecondition("VM %s is not arriving on host %s by migration %s", name, a.cfg.Name, id)
	}
	for {
		in.mu.Lock()
		state, errMsg := in.state, in.err
		in.mu.Unlock()
		if state == migration.InRunning {
			break
		}
		if errMsg != "" {
			return nil, fmt.Errorf("destination of VM %s: %s", name, errMsg)
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("destination of VM %s did not resume (state %s): %w", name, state, ctx.Err())
		case <-time.After(5 * time.Millisecond):
		}
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
	in.mu.Lock()
	in.state, _ = migration.StepIncoming(in.state, migration.InEvAdopt)
	in.sub.Close()
	in.mu.Unlock()
	if err := os.WriteFile(filepath.Join(v.dir, runningMarker), nil, 0o644); err != nil {
		return nil, fmt.Errorf("mark VM running: %w", err)
	}
	_ = os.Remove(filepath.Join(v.dir, incomingMarker))
	st := v.incomingStatusLocked()
	v.in = nil
	v.state = "running"
	a.log.Info("VM arrived by migration", "vm", name, "migration", id, "pid", v.proc.PID())
	return st, nil
}

// abortIncoming removes an arriving VM: QEMU, taps, directory. It refuses
// once the VM runs here. Unknown VMs are not an error (idempotent).
func (a *Agent) abortIncoming(name, id string) error {
	v, ok := a.find(name)
	if !ok {
		return nil
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.in == nil {
		if v.proc != nil || v.out != nil {
			return failedPrecondition("VM %s runs on host %s: not aborting an arrival that is over", name, a.cfg.Name)
		}
		return nil
	}
	if v.in.id != id && id != "" {
		return failedPrecondition("VM %s is arriving by migration %s, not %s", name, v.in.id, id)
	}
	if !v.in.adoptable() {
		return failedPrecondition("VM %s already runs on host %s: it cannot be aborted", name, a.cfg.Name)
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
	v.discardIncomingLocked()
	return nil
}

// discardIncomingLocked removes an arrival's taps, directory and handle.
func (v *vm) discardIncomingLocked() {
	a := v.a
	if v.in != nil {
		v.in.mu.Lock()
		v.in.state = migration.InAborted
		if v.in.sub != nil {
			v.in.sub.Close()
		}
		v.in.mu.Unlock()
	}
	v.deleteTaps(v.spec)
	v.archiveLogs("arrival-aborted")
	if err := os.RemoveAll(v.dir); err != nil {
		a.log.Warn("remove arrival dir", "vm", v.name, "err", err)
	}
	a.mu.Lock()
	if a.vms[v.name] == v {
		delete(a.vms, v.name)
	}
	a.mu.Unlock()
	a.log.Info("incoming migration aborted", "vm", v.name)
}

// reattachIncoming rebuilds the destination side after an agent restart.
// A QEMU that already runs was resumed after the owner CAS: it is this
// host's VM now. A paused one keeps waiting for the control plane to arm or
// abort it (its state may be the only copy once the source completed).
func (v *vm) reattachIncoming(ctx context.Context, id string) {
	st, err := v.mon.QueryStatus(ctx)
	if err == nil && st.Running {
		_ = os.Remove(filepath.Join(v.dir, incomingMarker))
		_ = os.WriteFile(filepath.Join(v.dir, runningMarker), nil, 0o644)
		return
	}
	in := &incoming{id: id, state: migration.InListening}
	in.sub = v.mon.Subscribe(qmp.EventMigration, qmp.EventResume)
	if info, err := v.mon.QueryMigrate(ctx); err == nil && info.CurrentStatus() == qmp.MigrationStatusCompleted {
		in.loaded, in.loadedAt = true, time.Now()
	}
	v.in, v.state = in, "incoming"
	go v.watchIncoming(in)
}
