package agent

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	ferryv1 "github.com/ferryvm/ferry/gen/ferry/v1"
	"github.com/ferryvm/ferry/internal/migration"
	"github.com/ferryvm/ferry/internal/qemu"
	"github.com/ferryvm/ferry/internal/qmp"
	"google.golang.org/protobuf/encoding/protojson"
)

// reattachAll adopts the VMs found in the data dir: a live QEMU is
// reattached (never restarted), a dead one is reported. Migrations in
// flight are rebuilt from QEMU (query-status, query-migrate) and the
// records in each VM's directory, so every migration step keeps working.
func (a *Agent) reattachAll(ctx context.Context) error {
	entries, err := os.ReadDir(a.vmsDir())
	if err != nil {
		return fmt.Errorf("read VMs dir: %w", err)
	}
	for _, e := range entries {
		if !e.IsDir() {
			continue
		}
		v := a.newVM(e.Name())
		sp, err := readSpec(filepath.Join(v.dir, specFile))
		if err != nil {
			a.log.Warn("skipping VM dir without a readable spec", "dir", v.dir, "err", err)
			continue
		}
		v.spec = sp
		a.mu.Lock()
		a.vms[v.name] = v
		a.mu.Unlock()
		v.mu.Lock()
		a.reattach(ctx, v)
		v.mu.Unlock()
	}
	return nil
}

// reattach finds v's QEMU and rebuilds its state (v.mu held).
func (a *Agent) reattach(ctx context.Context, v *vm) {
	var inRec incomingRecord
	hasIn, ierr := readRecord(filepath.Join(v.dir, incomingMarker), &inRec)
	if ierr != nil {
		a.log.Warn("reattach: unreadable incoming record", "vm", v.name, "err", ierr)
	}
	arriving := hasIn && !inRec.Adopted
	if hasIn && inRec.Adopted {
		v.arrived = inRec.ID
		v.arrivedIn = &incoming{id: inRec.ID, uri: inRec.URI, state: migration.InAdopted, armed: true, ran: true, adopted: true,
			loadedAt: inRec.LoadedAt, resumedAt: inRec.ResumedAt}
	}
	proc, err := a.qemu.Attach(v.paths)
	if err != nil {
		if arriving {
			// The arrival's QEMU is gone while the agent was away.
			v.in = &incoming{id: inRec.ID, uri: inRec.URI, state: migration.InListening, armed: inRec.Armed, ran: inRec.Ran}
			if inRec.Ran {
				v.in.state = migration.InRunning
				v.state, v.message = "failed", "the arrived QEMU exited while the agent was not running"+logTail(v.paths.StderrLog)
				return
			}
			v.discardIncomingLocked("ended")
			return
		}
		if _, serr := os.Stat(filepath.Join(v.dir, runningMarker)); serr == nil {
			v.state, v.message = "failed", "QEMU exited while the agent was not running"+logTail(v.paths.StderrLog)
			v.deleteTaps(v.spec)
		}
		if !errors.Is(err, qemu.ErrNotRunning) {
			a.log.Warn("reattach", "vm", v.name, "err", err)
		}
		return
	}
	mon, err := qmp.Connect(ctx, v.paths.QMPSocket, qmp.WithLogFile(v.paths.QMPLog), qmp.WithName(v.name))
	if err != nil {
		// The QEMU runs but its monitor is unusable: leave it alone and say so.
		v.proc, v.started = proc, time.Now()
		v.state, v.message = "failed", fmt.Sprintf("QEMU pid %d runs but its QMP socket is unusable: %v", proc.PID(), err)
		a.log.Error("reattach QMP", "vm", v.name, "pid", proc.PID(), "err", err)
		return
	}
	v.proc, v.mon, v.state, v.started = proc, mon, "running", time.Now()
	v.accel = accelOf(proc.PID())
	if arriving {
		v.reattachIncoming(ctx, inRec)
	} else {
		v.reattachOutgoing(ctx)
	}
	go v.watch(proc, mon)
	a.log.Info("reattached VM", "vm", v.name, "pid", proc.PID(), "arriving", arriving, "leaving", v.out != nil)
}

// reattachIncoming rebuilds the destination side after an agent restart.
// A QEMU found running has run (kept: it is never aborted) and waits for
// FinishIncoming; a paused one keeps waiting for the control plane to arm
// or abort it (its state may be the only copy once the source completed).
// An armed one whose resume was not sent yet is resumed now: the owner CAS
// is done.
func (v *vm) reattachIncoming(ctx context.Context, rec incomingRecord) {
	in := &incoming{id: rec.ID, uri: rec.URI, nbd: rec.NBD, relayPeer: rec.RelayPeer, state: migration.InListening, armed: rec.Armed, ran: rec.Ran,
		loadedAt: rec.LoadedAt, resumedAt: rec.ResumedAt}
	if rec.RelayPeer != "" {
		v.adoptRelaysLocked() // a relay process carries on across the restart (v.mu is held)
	}
	if rec.Armed {
		in.state = migration.InArmed
	}
	info, qerr := v.mon.QueryMigrate(ctx)
	if qerr == nil {
		if in.uri == "" {
			in.uri = listenURI(v.a.cfg.MigrationIP, info)
		}
		switch s := info.CurrentStatus(); {
		case s == qmp.MigrationStatusCompleted:
			in.loaded = true
			if in.loadedAt.IsZero() {
				in.loadedAt = time.Now()
			}
		case postcopyStarted(s):
			in.loaded = true
		case s == qmp.MigrationStatusFailed:
			in.err = "incoming migration failed on the destination"
		}
	}
	st, err := v.mon.QueryStatus(ctx)
	if err == nil && st.Running {
		in.ran = true
	}
	if in.ran {
		in.state = migration.InRunning
		in.contSent = true
		if in.resumedAt.IsZero() {
			in.resumedAt = time.Now()
		}
	}
	in.sub = v.mon.Subscribe(qmp.EventMigration, qmp.EventResume)
	v.in, v.state = in, "incoming"
	if err := v.saveIncoming(in); err != nil {
		v.a.log.Warn("reattach: persist incoming record", "vm", v.name, "err", err)
	}
	go v.watchIncoming(in)
	if in.armed && !in.ran {
		// cont while inmigrate only sets autostart and is harmless twice.
		if err := v.resumeArmed(ctx, in, v.mon); err != nil {
			v.a.log.Warn("reattach: resume the armed destination", "vm", v.name, "err", err)
		}
	}
}

// reattachOutgoing rebuilds the source side of a migration from its record
// and QEMU's query-migrate, so QueryOutgoing, ContinueOutgoing,
// CancelOutgoing and FinishOutgoing keep working after an agent restart.
func (v *vm) reattachOutgoing(ctx context.Context) {
	var rec outgoingRecord
	ok, err := readRecord(filepath.Join(v.dir, outgoingFile), &rec)
	if err != nil {
		v.a.log.Warn("reattach: unreadable outgoing record", "vm", v.name, "err", err)
	}
	if !ok || err != nil {
		return
	}
	info, err := v.mon.QueryMigrate(ctx)
	if err != nil {
		v.a.log.Warn("reattach: query-migrate", "vm", v.name, "err", err)
		return
	}
	// A relayed stream's relay process carries on across the restart and
	// is adopted; a relay that ran inside the agent did not survive it (a
	// resume opens a new one, resumeRelayed). QEMU is never pointed at the
	// tcp: URI.
	qemuURI := rec.URI
	if rec.RelayPeer != "" {
		qemuURI = ""
		v.adoptRelaysLocked() // v.mu is held
		if r := v.relay; r != nil && r.out != nil {
			qemuURI = r.out.Endpoint()
		}
	}
	out := &outgoing{id: rec.ID, uri: rec.URI, qemuURI: qemuURI, relayPeer: rec.RelayPeer, changed: make(chan struct{}),
		stoppedAt: rec.StoppedAt, preSwitchoverAt: rec.PreSwitchoverAt, continuedAt: rec.ContinuedAt, completedAt: rec.CompletedAt, postcopyAt: rec.PostcopyAt, disksMirrored: rec.DisksMirrored}
	s := info.CurrentStatus()
	out.status = string(s)
	switch {
	case s == qmp.MigrationStatusNone:
		// The agent died between recording the migration and starting it.
		_ = os.Remove(filepath.Join(v.dir, outgoingFile))
		return
	case rec.Cancelled || s == qmp.MigrationStatusCancelled || s == qmp.MigrationStatusFailed || s == qmp.MigrationStatusCancelling:
		out.state = migration.SrcCancelled
	case s == qmp.MigrationStatusCompleted:
		out.state = migration.SrcCompleted
	case s == qmp.MigrationStatusDevice || postcopyStarted(s):
		out.state = migration.SrcContinued
		if postcopyStarted(s) && out.postcopyAt.IsZero() {
			out.postcopyAt = time.Now()
		}
	case s == qmp.MigrationStatusPreSwitchover:
		out.state = migration.SrcPreSwitchover // continue again if it was lost
	default:
		out.state = migration.SrcMigrating
	}
	if rec.Continued && out.continuedAt.IsZero() {
		out.continuedAt = time.Now()
	}
	if len(rec.MirrorDisks) > 0 {
		// The RAM transfer runs, so every mirror was ready: complete them
		// at pre-switchover as the agent that started them would have.
		set := &mirrorSet{nbd: rec.MirrorNBD, stop: make(chan struct{}), migrateSent: true, completed: rec.DisksMirrored}
		for _, name := range rec.MirrorDisks {
			d := &diskMirror{name: name, job: blockJobID(name), target: nbdNode(name), state: mirrorReady}
			if rec.DisksMirrored {
				d.state = mirrorCompleted
			}
			set.pending = append(set.pending, d)
			set.disks = append(set.disks, d)
		}
		out.mir = set
	}
	out.sub = v.mon.Subscribe(qmp.EventMigration, qmp.EventStop)
	v.out = out
	if rec.WarmupRestoreBytes > 0 && postcopyStarted(s) {
		// The agent that lowered the background stream died before it
		// restored it: restore it now rather than leave it low.
		out.warmupRestore = rec.WarmupRestoreBytes
		go v.endWarmup(out)
	}
	go v.watchOutgoing(out)
}

// accelOf reads the accelerator from a QEMU's command line.
func accelOf(pid int) string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil {
		return ""
	}
	args := strings.Split(string(b), "\x00")
	for i, s := range args {
		if s == "-accel" && i+1 < len(args) {
			return strings.SplitN(args[i+1], ",", 2)[0]
		}
	}
	return ""
}

func writeSpec(path string, sp *ferryv1.VMSpec) error {
	b, err := protojson.MarshalOptions{Indent: "  "}.Marshal(sp)
	if err != nil {
		return fmt.Errorf("encode spec: %w", err)
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, b, 0o644); err != nil {
		return fmt.Errorf("write spec: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("write spec: %w", err)
	}
	return nil
}

func readSpec(path string) (*ferryv1.VMSpec, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	sp := &ferryv1.VMSpec{}
	if err := protojson.Unmarshal(b, sp); err != nil {
		return nil, fmt.Errorf("decode %s: %w", path, err)
	}
	return sp, nil
}
