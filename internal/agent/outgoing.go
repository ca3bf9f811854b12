package agent

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sync"
	"time"

	"connectrpc.com/connect"
	agentv1 "github.com/ferryvm/ferry/gen/ferry/agent/v1"
	"github.com/ferryvm/ferry/internal/migration"
	"github.com/ferryvm/ferry/internal/qemucaps"
	"github.com/ferryvm/ferry/internal/qemutls"
	"github.com/ferryvm/ferry/internal/qmp"
)

// outgoing is the source side of a live migration.
type outgoing struct {
	id  string
	uri string
	// qemuURI is what QEMU migrates to: uri, or the relay's unix: socket
	// when relayPeer (the destination host of a relayed stream,
	// streamrelay.go; persisted) is set.
	qemuURI   string
	relayPeer string

	mu    sync.Mutex // guards the fields below (updated by the event watcher)
	state migration.SourceState
	sub   *qmp.Subscription

	stoppedAt, preSwitchoverAt, continuedAt, completedAt time.Time
	postcopyAt                                           time.Time
	postcopyRequested                                    bool          // migrate-start-postcopy sent
	changed                                              chan struct{} // closed and replaced at each status event
	status                                               string        // QEMU's migration status from the last event
	downtimeLimitMs                                      int64         // the downtime-limit last given to QEMU (0: StartOutgoing's)
	// maxBandwidth is the max-bandwidth last given to QEMU (0: unknown,
	// after an agent restart); postcopyBandwidth StartOutgoing's
	// max-postcopy-bandwidth, which a lower share lowers.
	maxBandwidth, postcopyBandwidth int64

	// warmup is StartOutgoing's post-copy warm-up (nil: none); warmupRestore
	// the max-postcopy-bandwidth to restore while it is on (persisted, so a
	// restarted agent restores it).
	warmup        *agentv1.MigrationTuning
	warmupRestore int64

	// mir is the local disks' mirrors (nil without local disks);
	// disksMirrored: they completed at the switchover (persisted), so the
	// destination holds the disks and the source's may go with it.
	mir           *mirrorSet
	disksMirrored bool
}

// setDowntimeLimit gives QEMU the downtime-limit a QueryOutgoing carries
// (the controller's stepped target) unless it already has it. It changes
// only a parameter of a running pre-copy; a migration that has stopped
// the guest or ended is left alone.
func (v *vm) setDowntimeLimit(ctx context.Context, out *outgoing, ms int64) error {
	out.mu.Lock()
	same, status := out.downtimeLimitMs == ms, out.status
	out.mu.Unlock()
	if ms <= 0 || same || (status != "" && status != string(qmp.MigrationStatusActive) && status != string(qmp.MigrationStatusSetup)) {
		return nil
	}
	v.mu.Lock()
	mon := v.mon
	v.mu.Unlock()
	if mon == nil {
		return nil
	}
	if err := mon.MigrateSetParameters(ctx, qmp.MigrationParameters{DowntimeLimit: qmp.Ptr(ms)}); err != nil {
		return fmt.Errorf("set downtime-limit %d ms: %w", ms, err)
	}
	out.mu.Lock()
	out.downtimeLimitMs = ms
	out.mu.Unlock()
	v.a.log.Info("downtime target set", "vm", v.name, "migration", out.id, "downtime_limit_ms", ms)
	return nil
}

// setMaxBandwidth gives QEMU the bandwidth cap a QueryOutgoing carries
// (the migration's share of the policy's bandwidthPerHost, re-shared by
// the leader as migrations start and finish) unless it already has it:
// max-bandwidth, and max-postcopy-bandwidth lowered to it when above. A
// migration that has ended or paused the guest is left alone.
func (v *vm) setMaxBandwidth(ctx context.Context, out *outgoing, b int64) error {
	out.mu.Lock()
	same, status, pc := out.maxBandwidth == b, out.status, out.postcopyBandwidth
	out.mu.Unlock()
	switch qmp.MigrationStatus(status) {
	case "", qmp.MigrationStatusActive, qmp.MigrationStatusSetup, qmp.MigrationStatusPostcopyActive:
	default:
		return nil
	}
	if b <= 0 || same {
		return nil
	}
	v.mu.Lock()
	mon := v.mon
	v.mu.Unlock()
	if mon == nil {
		return nil
	}
	p := qmp.MigrationParameters{MaxBandwidth: qmp.Ptr(b)}
	if pc <= 0 || pc > b {
		p.MaxPostcopyBandwidth = qmp.Ptr(b)
	}
	if err := mon.MigrateSetParameters(ctx, p); err != nil {
		return fmt.Errorf("set max-bandwidth %d B/s: %w", b, err)
	}
	out.mu.Lock()
	out.maxBandwidth = b
	out.mu.Unlock()
	v.a.log.Info("bandwidth share set", "vm", v.name, "migration", out.id, "max_bandwidth", b)
	return nil
}

func (out *outgoing) record() outgoingRecord {
	out.mu.Lock()
	defer out.mu.Unlock()
	var nbd string
	var disks []string
	if out.mir != nil {
		nbd = out.mir.nbd
		for _, d := range out.mir.pending {
			disks = append(disks, d.name)
		}
	}
	return outgoingRecord{ID: out.id, URI: out.uri, RelayPeer: out.relayPeer, MirrorNBD: nbd, MirrorDisks: disks, Continued: !out.continuedAt.IsZero() || out.state == migration.SrcContinued || out.state == migration.SrcCompleted,
		Cancelled: out.state == migration.SrcCancelled, DisksMirrored: out.disksMirrored,
		StoppedAt: out.stoppedAt, PreSwitchoverAt: out.preSwitchoverAt, ContinuedAt: out.continuedAt, CompletedAt: out.completedAt, PostcopyAt: out.postcopyAt,
		WarmupRestoreBytes: out.warmupRestore}
}

// saveOutgoing persists the departure's facts in the VM's directory.
func (v *vm) saveOutgoing(out *outgoing) error {
	v.recMu.Lock()
	defer v.recMu.Unlock()
	return writeRecord(filepath.Join(v.dir, outgoingFile), out.record())
}

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
	if req.MigrationId == "" {
		return nil, connect.NewError(connect.CodeInvalidArgument, errors.New("migration_id: required"))
	}
	if err := a.checkTuning(req.Tuning, true); err != nil {
		return nil, err
	}
	v.mu.Lock()
	if v.out != nil && v.out.id == req.MigrationId {
		out := v.out
		v.mu.Unlock()
		out.mu.Lock()
		cancelled := out.state == migration.SrcCancelled
		out.mu.Unlock()
		if cancelled {
			return nil, failedPrecondition("migration %s of VM %s was cancelled on host %s: start a new migration", req.MigrationId, req.Name, a.cfg.Name)
		}
		return v.outgoingStatus(ctx) // a retried step: never a second migrate
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
	relayed := a.relayed(req.InsecureTransport)
	qemuURI := req.Uri
	if relayed {
		var err error
		if qemuURI, err = v.startOutboundRelayLocked(req.DestHost, "dest_host", req.Uri); err != nil {
			v.mu.Unlock()
			return nil, err
		}
	}
	out := &outgoing{id: req.MigrationId, uri: req.Uri, qemuURI: qemuURI, state: migration.SrcIdle, changed: make(chan struct{}), downtimeLimitMs: req.DowntimeLimitMs,
		maxBandwidth: req.MaxBandwidthBytes, postcopyBandwidth: cmp.Or(req.MaxPostcopyBandwidthBytes, req.MaxBandwidthBytes), warmup: req.Tuning}
	out.sub = mon.Subscribe(qmp.EventMigration, qmp.EventStop)
	if relayed {
		out.relayPeer = req.DestHost
	}
	v.out = out
	v.mu.Unlock()

	sent := false // migrate was sent
	fail := func(err error) (*agentv1.OutgoingStatus, error) {
		if sent && migrationRuns(mon) {
			// The command took effect although its answer was lost: keep
			// the migration so a retried step finds it.
			return nil, connect.NewError(connect.CodeUnavailable, fmt.Errorf("%w (QEMU's migration runs: retry the step)", err))
		}
		out.sub.Close()
		v.mu.Lock()
		if v.out == out {
			v.out = nil
			_ = os.Remove(filepath.Join(v.dir, outgoingFile))
			if relayed {
				v.closeRelaysLocked()
			}
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
	caps = append(caps, tuningCaps(req.Tuning, a.hasFeature(qemucaps.PostcopyPreempt))...)
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
	tuneParams(req.Tuning, true, req.MultifdChannels > 1, &params)
	var creds qemutls.Creds
	if !req.InsecureTransport && (!relayed || len(req.MirrorDisks) > 0) {
		// QEMU's own TLS: for its stream, or only for its disks' mirrors.
		if creds, err = v.streamTLS(ctx, mon, req.DestHost, qemutls.Client); err != nil {
			return fail(err)
		}
	}
	streamParams(&params, creds, req.InsecureTransport || relayed)
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
	if err := v.saveOutgoing(out); err != nil {
		return fail(err)
	}
	if len(req.MirrorDisks) > 0 {
		// Local disks first: RAM follows when every mirror is ready.
		set, err := v.mirrorSet(ctx, req)
		if err != nil {
			return fail(err)
		}
		if !req.InsecureTransport {
			set.tls = &creds
		}
		out.mu.Lock()
		out.mir = set
		out.mu.Unlock()
		if err := v.saveOutgoing(out); err != nil {
			return fail(err)
		}
		if err := startMirrors(ctx, mon, set, set.pending); err != nil {
			return fail(err)
		}
		go v.runMirrors(out, mon, set)
		a.log.Info("disk mirrors started; RAM follows when they are ready", "vm", req.Name, "migration", req.MigrationId, "transport", a.streamTransport(req.InsecureTransport),
			"nbd", req.NbdAddress, "disks", req.MirrorDisks, "uri", req.Uri)
		return v.outgoingStatus(ctx)
	}
	sent = true
	if err := mon.Migrate(ctx, qemuURI, qmp.MigrateOptions{}); err != nil {
		return fail(fmt.Errorf("migrate to %s: %w", req.Uri, err))
	}
	a.log.Info("outgoing migration started", "vm", req.Name, "migration", req.MigrationId, "uri", req.Uri, "transport", a.streamTransport(req.InsecureTransport),
		"max_bandwidth", req.MaxBandwidthBytes, "downtime_limit_ms", req.DowntimeLimitMs, "multifd", req.MultifdChannels, "tuning", describeTuning(req.Tuning))
	return v.outgoingStatus(ctx)
}

// migrationRuns reports whether QEMU's migration is under way.
func migrationRuns(mon *qmp.Monitor) bool {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	info, err := mon.QueryMigrate(ctx)
	s := info.CurrentStatus()
	return err == nil && s != qmp.MigrationStatusNone && !s.Finished()
}

// watchOutgoing records the source's QMP event times.
func (v *vm) watchOutgoing(out *outgoing) {
	for ev := range out.sub.C() {
		out.mu.Lock()
		save := true // an event time to keep
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
					if set := out.mir; set != nil {
						go func() { v.completeMirrors(out, v.monitor(), set) }()
					}
					if next, err := migration.StepSource(out.state, migration.SrcEvPaused); err == nil {
						out.state = next
					}
				case qmp.MigrationStatusPostcopyActive:
					if out.postcopyAt.IsZero() {
						out.postcopyAt = ev.Timestamp
						go v.postcopyWarmup(out)
					}
				case qmp.MigrationStatusCompleted:
					go v.relayEnded()
					out.completedAt = ev.Timestamp
					if next, err := migration.StepSource(out.state, migration.SrcEvCompleted); err == nil {
						out.state = next
					}
				case qmp.MigrationStatusFailed, qmp.MigrationStatusCancelled:
					go v.relayEnded()
					save = false
				default:
					save = false
				}
			}
		default:
			save = false
		}
		out.mu.Unlock()
		if save {
			v.saveAfterEvent(v.saveOutgoing(out))
		}
	}
}

// saveAfterEvent reports a record write that followed a QMP event; a VM
// whose directory is already gone (it left) has nothing to keep.
func (v *vm) saveAfterEvent(err error) {
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		v.a.log.Warn("persist a migration event time", "vm", v.name, "err", err)
	}
}

// waitChange waits up to d for QEMU's migration status to differ from
// known (the status the caller saw last).
func (out *outgoing) waitChange(ctx context.Context, known string, d time.Duration) {
	out.mu.Lock()
	ch, cur := out.changed, out.status
	mirroring := out.mir != nil && known == mirrorRunning
	out.mu.Unlock()
	if cur != known && !mirroring {
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
	set := out.mir
	out.mu.Unlock()
	if set != nil {
		if _, err := set.refresh(ctx, mon); err != nil {
			v.a.log.Debug("disk mirror status", "vm", v.name, "err", err)
		}
		if st.Status == string(qmp.MigrationStatusPreSwitchover) {
			go v.completeMirrors(out, mon, set) // (a no-op once started: the event may have been missed)
		}
		set.fill(st)
	}
	return st, nil
}

// noOutgoing is QueryOutgoing's answer for a VM that runs here without the
// asked-for outgoing migration: status "none" and its QEMU's run state. ok
// is false when the VM or its QEMU is not here.
func (a *Agent) noOutgoing(ctx context.Context, name string) (*agentv1.OutgoingStatus, bool) {
	v, found := a.find(name)
	if !found {
		return nil, false
	}
	v.mu.Lock()
	mon := v.mon
	v.mu.Unlock()
	if mon == nil {
		return nil, false
	}
	s, err := mon.QueryStatus(ctx)
	if err != nil {
		return nil, false
	}
	return &agentv1.OutgoingStatus{Status: string(qmp.MigrationStatusNone), QemuStatus: string(s.Status)}, true
}

// outgoingMonitor is outgoingFor plus the source QEMU's monitor, refused
// when that QEMU is gone.
func (a *Agent) outgoingMonitor(name, id string) (*vm, *outgoing, *qmp.Monitor, error) {
	v, out, err := a.outgoingFor(name, id)
	if err != nil {
		return nil, nil, nil, err
	}
	v.mu.Lock()
	mon := v.mon
	v.mu.Unlock()
	if mon == nil {
		return nil, nil, nil, failedPrecondition("the source QEMU of VM %s on host %s is gone", name, a.cfg.Name)
	}
	return v, out, mon, nil
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
		return nil, nil, notFound("VM %s has no outgoing migration %s on host %s", name, id, a.cfg.Name)
	}
	return v, v.out, nil
}
