package agent

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"

	"connectrpc.com/connect"
	agentv1 "github.com/ferryvm/ferry/gen/ferry/agent/v1"
	"github.com/ferryvm/ferry/internal/failpoint"
	"github.com/ferryvm/ferry/internal/migration"
	"github.com/ferryvm/ferry/internal/qemutls"
	"github.com/ferryvm/ferry/internal/qmp"
	"github.com/ferryvm/ferry/internal/revert"
	"github.com/ferryvm/ferry/internal/spec"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// incoming is the destination side of a live migration.
type incoming struct {
	id  string
	uri string
	nbd string // host:port of the NBD server exporting the local disks ("" without)
	// relayPeer is the source host when the stream is relayed
	// (streamrelay.go; persisted), "" when QEMU speaks TLS or plaintext.
	relayPeer string

	mu        sync.Mutex
	state     migration.IncomingState
	sub       *qmp.Subscription
	armed     bool // ArmResume accepted (persisted)
	ran       bool // the QEMU has run (persisted)
	loaded    bool // QEMU reported the incoming migration completed
	contSent  bool // cont sent after arming
	adopted   bool // FinishIncoming adopted it (persisted)
	loadedAt  time.Time
	resumedAt time.Time
	err       string
}

// adoptable reports whether the VM is still only arriving (it never ran here).
func (in *incoming) adoptable() bool {
	in.mu.Lock()
	defer in.mu.Unlock()
	return !in.ran && (in.state == migration.InListening || in.state == migration.InArmed || in.state == migration.InNone)
}

// abortedUnran reports an arrival that was aborted before it ever ran.
func (in *incoming) abortedUnran() bool {
	in.mu.Lock()
	defer in.mu.Unlock()
	return !in.ran && in.state == migration.InAborted
}

func (in *incoming) record() incomingRecord {
	in.mu.Lock()
	defer in.mu.Unlock()
	return incomingRecord{ID: in.id, URI: in.uri, NBD: in.nbd, RelayPeer: in.relayPeer, Armed: in.armed, Ran: in.ran, Adopted: in.adopted, LoadedAt: in.loadedAt, ResumedAt: in.resumedAt}
}

// saveIncoming persists the arrival's facts in the VM's directory. Writers
// are serialised and each writes the whole current record, so a slower
// writer never puts back an older one.
func (v *vm) saveIncoming(in *incoming) error {
	v.recMu.Lock()
	defer v.recMu.Unlock()
	return writeRecord(filepath.Join(v.dir, incomingMarker), in.record())
}

func failedPrecondition(format string, args ...any) error {
	return connect.NewError(connect.CodeFailedPrecondition, fmt.Errorf(format, args...))
}

func notFound(format string, args ...any) error {
	return connect.NewError(connect.CodeNotFound, fmt.Errorf(format, args...))
}

func ts(t time.Time) *timestamppb.Timestamp {
	if t.IsZero() {
		return nil
	}
	return timestamppb.New(t)
}

// Failpoints of the destination side.
const (
	// fpBeforeResumeIncoming sits between an armed destination's state
	// having arrived and its resume (cont): a test kills the destination
	// QEMU there, after migrate-continue and before it ever ran.
	fpBeforeResumeIncoming = "agent/before-resume-incoming"
	// fpAfterPrepareIncoming sits after the destination QEMU listens and
	// before PrepareIncoming answers (a lost reply when it errors).
	fpAfterPrepareIncoming = "agent/after-prepare-incoming"
)

// prepareIncoming starts a paused QEMU for sp that waits for a migration
// stream on this host's migration address, and returns its tcp: URI. A
// repeated call for the same migration returns the same URI.
func (a *Agent) prepareIncoming(ctx context.Context, req *agentv1.PrepareIncomingRequest) (uri, nbd string, err error) {
	uri, err = a.prepareIncomingQEMU(ctx, req)
	if err != nil {
		return "", "", err
	}
	if v, ok := a.find(req.GetSpec().GetName()); ok {
		v.mu.Lock()
		if v.in != nil && v.in.id == req.MigrationId {
			nbd = v.in.nbd
		}
		v.mu.Unlock()
	}
	if len(req.LocalDisks) > 0 && nbd == "" {
		// Never answer a URI without the disks' export: the source would
		// send RAM to a destination whose disks are empty.
		return "", "", failedPrecondition("the arrival of VM %s by migration %s on host %s has no NBD export of its local disks: start a new migration", req.GetSpec().GetName(), req.MigrationId, a.cfg.Name)
	}
	return uri, nbd, nil
}

// prepareIncomingQEMU is prepareIncoming without the NBD address.
func (a *Agent) prepareIncomingQEMU(ctx context.Context, req *agentv1.PrepareIncomingRequest) (string, error) {
	sp := req.GetSpec()
	if sp == nil {
		return "", connect.NewError(connect.CodeInvalidArgument, errors.New("spec: required"))
	}
	if req.MigrationId == "" {
		return "", connect.NewError(connect.CodeInvalidArgument, errors.New("migration_id: required"))
	}
	spec.Default(sp)
	if err := spec.Validate(sp); err != nil {
		return "", connect.NewError(connect.CodeInvalidArgument, err)
	}
	if a.cfg.MigrationIP == "" {
		return "", failedPrecondition("host %s has no migration address: start the agent with --migration-ip or a --bridge that has an IPv4 address", a.cfg.Name)
	}
	if err := a.checkTuning(req.Tuning, false); err != nil {
		return "", err
	}
	if st, ok := a.ended.get(req.MigrationId); ok {
		return "", failedPrecondition("migration %s of VM %s already ended on host %s (%s): start a new migration", req.MigrationId, sp.Name, a.cfg.Name, st.State)
	}
	v := a.getOrCreate(sp.Name)
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.in != nil && v.in.id == req.MigrationId && v.proc != nil {
		return v.in.uri, nil // a retried step
	}
	if v.arrived == req.MigrationId && v.arrived != "" {
		return "", failedPrecondition("VM %s already arrived on host %s by migration %s", sp.Name, a.cfg.Name, req.MigrationId)
	}
	if v.proc != nil || v.in != nil || v.out != nil {
		return "", failedPrecondition("VM %s already exists on host %s", sp.Name, a.cfg.Name)
	}
	if _, err := os.Stat(v.dir); err == nil {
		var rec incomingRecord
		if ok, _ := readRecord(filepath.Join(v.dir, incomingMarker), &rec); !ok || rec.Adopted {
			return "", failedPrecondition("VM %s has a directory on host %s (%s): it is not arriving by migration; delete the VM there first", sp.Name, a.cfg.Name, v.dir)
		}
		_ = os.RemoveAll(v.dir) // the remains of an earlier, failed arrival
	}

	if req.Postcopy && a.postcopyProblem != "" {
		return "", connect.NewError(connect.CodeFailedPrecondition, fmt.Errorf("%w: %s", ErrNoPostcopy, a.postcopyProblem))
	}
	r := revert.New()
	defer r.Fail()
	if len(req.LocalDisks) > 0 {
		if err := os.MkdirAll(v.dir, 0o755); err != nil {
			return "", fmt.Errorf("create VM dir: %w", err)
		}
		r.Add(func() { _ = os.RemoveAll(v.dir) })
		if err := v.createArrivingDisks(ctx, sp, req.LocalDisks, r); err != nil {
			return "", err
		}
	}
	proc, mon, accel, err := v.launch(ctx, sp, "defer", r)
	if err != nil {
		return "", err
	}
	in := &incoming{id: req.MigrationId, state: migration.InNone}
	if err := v.saveIncoming(in); err != nil {
		return "", err
	}
	in.sub = mon.Subscribe(qmp.EventMigration, qmp.EventResume)
	r.Add(in.sub.Close)
	caps := []qmp.CapabilityState{{Capability: qmp.CapEvents, State: true}}
	if req.Postcopy {
		caps = append(caps, qmp.CapabilityState{Capability: qmp.CapPostcopyRAM, State: true})
	}
	if req.MultifdChannels > 1 {
		caps = append(caps, qmp.CapabilityState{Capability: qmp.CapMultifd, State: true})
	}
	caps = append(caps, tuningCaps(req.Tuning, false)...) // a fresh QEMU: nothing stale
	if err := mon.MigrateSetCapabilities(ctx, caps); err != nil {
		return "", fmt.Errorf("destination capabilities: %w", err)
	}
	var params qmp.MigrationParameters
	if req.MultifdChannels > 1 {
		params.MultifdChannels = qmp.Ptr(int64(req.MultifdChannels))
		tuneParams(req.Tuning, false, true, &params)
	}
	relayed := a.relayed(req.InsecureTransport)
	var creds qemutls.Creds
	if !req.InsecureTransport && (!relayed || len(req.LocalDisks) > 0) {
		// QEMU's own TLS: for its stream, or only for its disks' export.
		if creds, err = v.streamTLS(ctx, mon, req.SourceHost, qemutls.Server); err != nil {
			return "", err
		}
	}
	streamParams(&params, creds, req.InsecureTransport || relayed)
	if err := mon.MigrateSetParameters(ctx, params); err != nil {
		return "", fmt.Errorf("destination parameters: %w", err)
	}
	if relayed {
		sock, err := v.relaySocket(relayInSocket)
		if err != nil {
			return "", err
		}
		if err := mon.MigrateIncoming(ctx, "unix:"+sock); err != nil {
			return "", fmt.Errorf("migrate-incoming: %w", err)
		}
		if in.uri, err = v.startInboundRelayLocked(req.SourceHost, "source_host", sock, proc.PID()); err != nil {
			return "", err
		}
		r.Add(v.closeRelaysLocked) // v.mu is held until r runs
		in.relayPeer = req.SourceHost
	} else {
		if err := mon.MigrateIncoming(ctx, "tcp:"+a.cfg.MigrationIP+":0"); err != nil {
			return "", fmt.Errorf("migrate-incoming: %w", err)
		}
		info, err := mon.QueryMigrate(ctx)
		if err != nil {
			return "", fmt.Errorf("read incoming port: %w", err)
		}
		in.uri = listenURI(a.cfg.MigrationIP, info)
		if in.uri == "" {
			return "", fmt.Errorf("destination QEMU reports no listening port (query-migrate: %+v)", info.SocketAddress)
		}
	}
	if len(req.LocalDisks) > 0 {
		var tls *qemutls.Creds
		if !req.InsecureTransport {
			tls = &creds
		}
		if in.nbd, err = exportDisks(ctx, mon, a.cfg.MigrationIP, req.LocalDisks, tls); err != nil {
			return "", err
		}
	}
	if in.state, err = migration.StepIncoming(in.state, migration.InEvListen); err != nil {
		return "", err
	}
	if err := v.saveIncoming(in); err != nil {
		return "", err
	}
	r.Success()
	v.spec, v.proc, v.mon, v.accel, v.started = sp, proc, mon, accel, time.Now()
	v.state, v.message, v.stopping = "incoming", "", false
	v.in = in
	go v.watch(proc, mon)
	go v.watchIncoming(in)
	a.log.Info("incoming migration listening", "vm", v.name, "migration", in.id, "uri", in.uri, "nbd", in.nbd, "pid", proc.PID(), "transport", a.streamTransport(req.InsecureTransport))
	if err := failpoint.Inject(fpAfterPrepareIncoming); err != nil {
		return "", connect.NewError(connect.CodeUnavailable, err)
	}
	return in.uri, nil
}

// listenURI reads the port a destination QEMU listens on from query-migrate.
func listenURI(ip string, info qmp.MigrationInfo) string {
	for _, sa := range info.SocketAddress {
		if sa.Type == "inet" && sa.Port != "" && sa.Port != "0" {
			return "tcp:" + ip + ":" + sa.Port
		}
	}
	return ""
}

// watchIncoming records the destination's QMP event times and its move to
// running (persisted: a destination that ran is never aborted).
func (v *vm) watchIncoming(in *incoming) {
	for ev := range in.sub.C() {
		switch ev.Name {
		case qmp.EventMigration:
			me, err := ev.AsMigration()
			if err != nil {
				continue
			}
			in.mu.Lock()
			save := false
			switch me.Status {
			case qmp.MigrationStatusCompleted:
				in.loaded, in.loadedAt, save = true, ev.Timestamp, true
			case qmp.MigrationStatusPostcopyActive:
				in.loaded = true // the device state arrived; pages follow on demand
			case qmp.MigrationStatusFailed:
				in.err = "incoming migration failed on the destination"
			}
			in.mu.Unlock()
			if me.Status.Finished() {
				v.relayEnded()
			}
			if save {
				v.saveAfterEvent(v.saveIncoming(in))
			}
		case qmp.EventResume:
			v.markRan(in, ev.Timestamp)
		}
	}
}

// markRan records that the destination QEMU runs, in memory and on disk.
func (v *vm) markRan(in *incoming, at time.Time) {
	in.mu.Lock()
	if in.resumedAt.IsZero() {
		in.resumedAt = at
	}
	first := !in.ran
	in.ran = true
	if next, err := migration.StepIncoming(in.state, migration.InEvResumed); err == nil {
		in.state = next
	}
	in.mu.Unlock()
	if first {
		if err := v.saveIncoming(in); err != nil {
			v.a.log.Error("persist that the destination ran", "vm", v.name, "migration", in.id, "err", err)
		}
		v.startAliveProbe(in.id, at) // the engine asks CheckGuestAlive next
	}
}

func (v *vm) incomingStatusLocked() *agentv1.IncomingStatus {
	st := &agentv1.IncomingStatus{Vm: v.statusLocked()}
	st.QemuStatus = st.Vm.QemuStatus
	switch in := v.in; {
	case in != nil:
		in.mu.Lock()
		st.State, st.Ran = string(in.state), in.ran
		st.LoadedAt, st.ResumedAt, st.Error = ts(in.loadedAt), ts(in.resumedAt), in.err
		in.mu.Unlock()
		if v.proc == nil && st.State != string(migration.InAborted) {
			st.State = "failed"
			if st.Error == "" {
				st.Error = "destination QEMU exited" + logTail(v.paths.StderrLog)
			}
		}
	case v.arrived != "":
		st.State, st.Ran = string(migration.InAdopted), true
		if in := v.arrivedIn; in != nil { // this agent adopted it: its event times
			in.mu.Lock()
			st.LoadedAt, st.ResumedAt = ts(in.loadedAt), ts(in.resumedAt)
			in.mu.Unlock()
		}
	case v.proc != nil:
		st.State = string(migration.InAdopted)
	}
	return st
}

// queryIncoming reports the arrival of VM name by migration id. It is
// NotFound when the agent knows nothing of that migration.
func (a *Agent) queryIncoming(name, id string) (*agentv1.IncomingStatus, error) {
	v, ok := a.find(name)
	if ok {
		v.mu.Lock()
		defer v.mu.Unlock()
		if id == "" || (v.in != nil && v.in.id == id) || (v.in == nil && v.arrived == id) {
			return v.incomingStatusLocked(), nil
		}
	}
	if st, ok := a.ended.get(id); ok {
		return st, nil
	}
	return nil, notFound("host %s knows no arrival of VM %s by migration %s", a.cfg.Name, name, id)
}
