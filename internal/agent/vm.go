package agent

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"connectrpc.com/connect"
	ferryv1 "github.com/ferryvm/ferry/gen/ferry/v1"
	"github.com/ferryvm/ferry/internal/qemu"
	"github.com/ferryvm/ferry/internal/qmp"
	"github.com/ferryvm/ferry/internal/revert"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// Files in a VM's directory besides those of qemu.Paths.
const (
	specFile      = "spec.json"
	runningMarker = "should-run" // present while the VM is meant to run
	disksDir      = "disks"
)

// vm is one VM of this host and its QEMU, if running.
type vm struct {
	a     *Agent
	name  string
	dir   string
	paths qemu.Paths

	mu       sync.Mutex // serialises lifecycle operations
	recMu    sync.Mutex // serialises writes of the migration records
	spec     *ferryv1.VMSpec
	proc     QEMUProcess
	mon      *qmp.Monitor
	accel    string
	state    string // running, stopped, failed
	message  string
	stopping bool

	// Live migration, at most one direction at a time (see incoming.go and
	// outgoing.go).
	out        *outgoing
	in         *incoming
	arrived    string    // id of the migration this VM arrived by, once adopted
	arrivedIn  *incoming // that arrival, when this agent adopted it
	recoverURI string    // where a paused post-copy destination listens again
	relay      *relays   // the current migration's stream relays (streamrelay.go), nil without
	started    time.Time // when this agent started or found the VM's QEMU (reaper grace)

	qgaMu sync.Mutex // one session at a time on the guest agent channel (QEMU serves one client)

	probeMu sync.Mutex
	probe   *aliveProbe // the guest-alive probe of the last arrival (see liveness.go)

	copy *copyJob // the cold migration's copy of the local disks from here (diskcopy_send.go)
}

func (a *Agent) newVM(name string) *vm {
	dir := filepath.Join(a.vmsDir(), name)
	return &vm{a: a, name: name, dir: dir, paths: qemu.PathsFor(dir), state: "stopped"}
}

// getOrCreate returns the VM handle for name, creating an idle one.
func (a *Agent) getOrCreate(name string) *vm {
	a.mu.Lock()
	defer a.mu.Unlock()
	v, ok := a.vms[name]
	if !ok {
		v = a.newVM(name)
		a.vms[name] = v
	}
	return v
}

func invalid(field, format string, args ...any) error {
	return connect.NewError(connect.CodeInvalidArgument, fmt.Errorf("%s: %s", field, fmt.Sprintf(format, args...)))
}

// start boots the VM's QEMU. Every step registers its undo, so a failure
// leaves no QEMU, tap, disk or directory it created behind.
func (v *vm) start(ctx context.Context, sp *ferryv1.VMSpec) (*ferryv1.VMStatus, error) {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.proc != nil && v.proc.Alive() {
		if v.in != nil {
			return nil, connect.NewError(connect.CodeFailedPrecondition, fmt.Errorf("VM %s is arriving here by migration %s", v.name, v.in.id))
		}
		return v.statusLocked(), nil
	}
	v.stopCopy() // from now on the disks change: a copy of them cannot be used
	r := revert.New()
	defer r.Fail()
	proc, mon, accel, err := v.launch(ctx, sp, "", r)
	if err != nil {
		return nil, err
	}
	st, err := mon.QueryStatus(ctx)
	if err != nil {
		return nil, fmt.Errorf("query status of VM %s: %w", v.name, err)
	}
	if st.Status != "running" {
		return nil, fmt.Errorf("VM %s: QEMU started but is %q, not running", v.name, st.Status)
	}
	if err := os.WriteFile(filepath.Join(v.dir, runningMarker), nil, 0o644); err != nil {
		return nil, fmt.Errorf("mark VM running: %w", err)
	}
	r.Success()
	v.adopt(sp, proc, mon, accel)
	v.a.log.Info("VM started", "vm", v.name, "pid", proc.PID(), "accel", accel)
	return v.statusLocked(), nil
}

// adopt makes a launched QEMU the VM's running process.
func (v *vm) adopt(sp *ferryv1.VMSpec, proc QEMUProcess, mon *qmp.Monitor, accel string) {
	v.spec, v.proc, v.mon, v.accel, v.started = sp, proc, mon, accel, time.Now()
	v.state, v.message, v.stopping = "running", "", false
	if v.out != nil { // a migration of the previous QEMU: over with it
		v.out.sub.Close()
		v.out = nil
		_ = os.Remove(filepath.Join(v.dir, outgoingFile))
	}
	go v.watch(proc, mon)
}

// launch creates the VM's directory, spec file, disks and taps, starts its
// QEMU (with -incoming defer when incoming is "defer") and connects to its
// QMP socket. Each step registers its undo on r.
func (v *vm) launch(ctx context.Context, sp *ferryv1.VMSpec, incoming string, r *revert.Reverter) (QEMUProcess, *qmp.Monitor, string, error) {
	a := v.a
	if _, err := os.Stat(v.dir); os.IsNotExist(err) {
		if err := os.MkdirAll(v.dir, 0o755); err != nil {
			return nil, nil, "", fmt.Errorf("create VM dir: %w", err)
		}
		r.Add(func() { _ = os.RemoveAll(v.dir) })
	}
	if err := writeSpec(filepath.Join(v.dir, specFile), sp); err != nil {
		return nil, nil, "", err
	}
	if err := v.checkHostPaths(sp); err != nil {
		return nil, nil, "", err
	}
	disks, err := v.prepareDisks(ctx, sp, r)
	if err != nil {
		return nil, nil, "", err
	}
	accel, err := a.resolveAccel(ctx, sp.GetAccel(), sp.GetBoot().GetKernel())
	if err != nil {
		return nil, nil, "", connect.NewError(connect.CodeFailedPrecondition, err)
	}
	nics, err := v.prepareTaps(sp, r)
	if err != nil {
		return nil, nil, "", err
	}
	for _, p := range []string{v.paths.QMPSocket, v.paths.PIDFile, v.paths.GuestAgentSocket} {
		_ = os.Remove(p)
	}
	proc, err := a.qemu.Start(ctx, a.cfg.QEMUBinary, qemu.Config{Spec: sp, Accel: accel, Paths: v.paths, Disks: disks, NICs: nics, Incoming: incoming, Scope: a.cfg.QEMUScope, CgroupParent: a.cfg.QEMUCgroup,
		RunAs: a.runAs(), Sandbox: a.qemuUser != nil})
	if err != nil {
		return nil, nil, "", fmt.Errorf("start QEMU for VM %s: %w", v.name, err)
	}
	r.Add(func() { _ = proc.Kill() })
	mon, err := qmp.Connect(ctx, v.paths.QMPSocket, qmp.WithLogFile(v.paths.QMPLog), qmp.WithName(v.name))
	if err != nil {
		return nil, nil, "", fmt.Errorf("connect QMP of VM %s: %w", v.name, err)
	}
	r.Add(func() { _ = mon.Close() })
	return proc, mon, accel, nil
}

// watch records the end of a QEMU process.
func (v *vm) watch(proc QEMUProcess, mon *qmp.Monitor) {
	<-proc.Exited()
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.proc != proc {
		return
	}
	_ = mon.Close()
	v.proc, v.mon = nil, nil
	v.closeRelaysLocked()
	if v.in != nil && v.in.adoptable() {
		// An arriving VM whose QEMU ended (the source cancelled, or it was
		// killed) was never this host's: remove every trace of it.
		v.a.log.Warn("incoming migration ended before the VM ran here; removing it", "vm", v.name, "migration", v.in.id, "detail", logTail(v.paths.StderrLog))
		v.discardIncomingLocked("ended")
		return
	}
	if v.stopping {
		v.state, v.message = "stopped", ""
	} else {
		v.state = "failed"
		v.message = "QEMU exited unexpectedly" + logTail(v.paths.StderrLog)
		v.a.log.Warn("VM's QEMU exited unexpectedly", "vm", v.name, "detail", v.message)
	}
	v.deleteTaps(v.spec)
}

func logTail(path string) string {
	b, err := os.ReadFile(path)
	if err != nil || len(b) == 0 {
		return ""
	}
	s := strings.TrimSpace(string(b))
	if len(s) > 300 {
		s = s[len(s)-300:]
	}
	return ": " + s
}

// stop ends the VM's QEMU: a guest power-off request first (unless force),
// then QMP quit, then SIGKILL. Its taps are removed; disks stay.
func (v *vm) stop(ctx context.Context, force bool) (*ferryv1.VMStatus, error) {
	v.mu.Lock()
	proc, mon := v.proc, v.mon
	_ = os.Remove(filepath.Join(v.dir, runningMarker))
	if proc == nil {
		v.state = "stopped"
		st := v.statusLocked()
		v.mu.Unlock()
		return st, nil
	}
	v.stopping = true
	v.mu.Unlock()
	v.a.telemetry().forget(v.name) // no sample while its QEMU goes away

	wait := func(d time.Duration) bool {
		select {
		case <-proc.Exited():
			return true
		case <-time.After(d):
			return false
		case <-ctx.Done():
			return false
		}
	}
	exited := false
	if !force && mon != nil {
		if err := mon.SystemPowerdown(ctx); err == nil {
			exited = wait(10 * time.Second)
		}
	}
	if !exited && mon != nil {
		qctx, cancel := context.WithTimeout(ctx, 3*time.Second)
		_ = mon.Quit(qctx)
		cancel()
		exited = wait(5 * time.Second)
	}
	if !exited {
		if err := proc.Kill(); err != nil {
			return nil, fmt.Errorf("kill QEMU of VM %s (pid %d): %w", v.name, proc.PID(), err)
		}
	}
	<-proc.Exited()
	// watch() records the stop; make sure it ran before reporting.
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.proc == proc {
		v.proc, v.mon = nil, nil
		if mon != nil {
			_ = mon.Close()
		}
		v.deleteTaps(v.spec)
	}
	v.state, v.message = "stopped", ""
	v.a.log.Info("VM stopped", "vm", v.name, "force", force)
	return v.statusLocked(), nil
}

// archiveLogs keeps the VM's QMP, QEMU and serial logs under
// DATA/logs/<vm>/<time>-<why>/ before its directory is removed, so every
// QMP exchange stays on record after a VM leaves the host.
func (v *vm) archiveLogs(why string) {
	dst := filepath.Join(v.a.cfg.DataDir, "logs", v.name, time.Now().UTC().Format("20060102T150405.000")+"-"+why)
	if err := os.MkdirAll(dst, 0o755); err != nil {
		v.a.log.Warn("archive logs", "vm", v.name, "err", err)
		return
	}
	for _, f := range []string{v.paths.QMPLog, v.paths.StderrLog, v.paths.SerialLog} {
		if err := os.Rename(f, filepath.Join(dst, filepath.Base(f))); err != nil && !os.IsNotExist(err) {
			v.a.log.Warn("archive log", "vm", v.name, "file", f, "err", err)
		}
	}
}

// detach lets go of the QEMU without stopping it (agent shutdown).
func (v *vm) detach() {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.mon != nil {
		_ = v.mon.Close()
	}
}

func (v *vm) status() *ferryv1.VMStatus {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.statusLocked()
}

func (v *vm) statusLocked() *ferryv1.VMStatus {
	st := &ferryv1.VMStatus{Name: v.name, State: v.state, Message: v.message, Accel: v.accel, ConsolePath: v.paths.SerialLog}
	if v.spec != nil {
		st.Vcpus = v.spec.GetVcpus()
		st.MemoryMib = v.spec.GetMemoryMib()
	}
	if v.proc != nil {
		st.Pid = int64(v.proc.PID())
		st.StartedAt = timestamppb.New(v.proc.StartedAt())
		st.RssBytes = v.proc.RSSBytes()
		if st.Pid > 0 {
			st.CpuSeconds = cpuSeconds(int(st.Pid))
		}
	}
	if v.mon != nil {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		if s, err := v.mon.QueryStatus(ctx); err == nil {
			st.QemuStatus = string(s.Status)
			if st.State == "running" && s.Status != qmp.RunStateRunning {
				st.State = "paused" // the record must say what QEMU does
			}
		}
		cancel()
	}
	return st
}
