package qemu

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// ErrNotRunning is returned (wrapped) by Attach when no live QEMU owns the
// VM's paths.
var ErrNotRunning = errors.New("qemu is not running")

// killTimeout bounds how long Kill waits for the process to disappear.
const killTimeout = 10 * time.Second

// exitGrace is how long a failed Start waits for QEMU to exit by itself.
const exitGrace = 2 * time.Second

// pollInterval is how often an attached (non-child) process is checked.
const pollInterval = 250 * time.Millisecond

// Process is a running QEMU: either a child started by Start or a process
// found by Attach after an agent restart.
type Process struct {
	pid        int
	paths      Paths
	startTicks uint64
	startedAt  time.Time
	cmd        *exec.Cmd // nil when attached
	exited     chan struct{}
	cgroup     string // the per-QEMU cgroup (ScopeCgroup), removed at exit; "" otherwise

	mu    sync.Mutex
	pidfd int // attached processes only; -1 when unavailable or closed
}

// Start launches QEMU for cfg and returns once it is initialized: its
// pidfile names it, its QMP socket exists and QMP answered a command
// (commands run in QEMU's main loop, which starts after machine and device
// setup, so option and device errors have surfaced by then; the greeting
// alone comes from the monitor thread and proves nothing). ctx bounds only this startup wait; the VM outlives it.
//
// QEMU runs in its own process group, so signals sent to the agent's group
// never reach it and it keeps running if the agent dies. Its stdout and
// stderr go to Paths.StderrLog (a file: a pipe would kill QEMU with SIGPIPE
// once the agent is gone). Stale socket and pidfile are removed first; Start
// refuses to run a second QEMU on paths owned by a live one. On failure the
// child is killed by PID and the error carries the tail of qemu.log.
func Start(ctx context.Context, binary string, cfg Config) (*Process, error) {
	argv, err := Args(cfg)
	if err != nil {
		return nil, err
	}
	paths, name := cfg.Paths, cfg.Spec.GetName()
	fail := func(format string, args ...any) (*Process, error) {
		return nil, fmt.Errorf("qemu: start %q: "+format, append([]any{name}, args...)...)
	}
	if paths.Dir != "" {
		if err := os.MkdirAll(paths.Dir, 0o750); err != nil {
			return fail("%w", err)
		}
	}
	if old, err := Attach(paths); err == nil {
		return fail("already running as pid %d (QMP socket %s)", old.PID(), paths.QMPSocket)
	} else if !errors.Is(err, ErrNotRunning) {
		return fail("check for a running QEMU: %w", err)
	}
	for _, f := range []string{paths.QMPSocket, paths.PIDFile} {
		if err := os.Remove(f); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fail("remove stale %s: %w", f, err)
		}
	}
	logf, err := os.OpenFile(paths.StderrLog, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o640)
	if err != nil {
		return fail("open log: %w", err)
	}
	fmt.Fprintf(logf, "--- %s ferry: starting %s %s\n", time.Now().Format(time.RFC3339), binary, strings.Join(argv, " "))
	logStart, err := logf.Seek(0, io.SeekEnd)
	if err != nil {
		logf.Close()
		return fail("seek log: %w", err)
	}

	prog, progArgs, err := scopedCommand(cfg.Scope, name, binary, argv, time.Now())
	if err != nil {
		logf.Close()
		return fail("%w", err)
	}
	cmd := exec.Command(prog, progArgs...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Dir = paths.Dir
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	var cg *vmCgroup
	if cfg.Scope == ScopeCgroup {
		if cg, err = newVMCgroup(cfg.CgroupParent, name, time.Now()); err != nil {
			logf.Close()
			return fail("%w", err)
		}
		// clone3 starts QEMU directly in its cgroup: it is never in the
		// agent's, not even for an instant.
		cmd.SysProcAttr.UseCgroupFD, cmd.SysProcAttr.CgroupFD = true, cg.fd
	}
	err = cmd.Start()
	logf.Close() // the child holds its own descriptor
	if cg != nil {
		cg.closeFD()
	}
	if err != nil {
		if cg != nil {
			_ = removeCgroup(cg.dir) // undo: the process never ran in it
		}
		return fail("%w", err)
	}
	p := &Process{pid: cmd.Process.Pid, paths: paths, cmd: cmd, exited: make(chan struct{}), pidfd: -1}
	if cg != nil {
		p.cgroup = cg.dir
	}
	if st, err := readProcStat(p.pid); err == nil {
		p.startTicks = st.startTicks
		p.startedAt = startTime(st.startTicks)
	}
	var waitErr error
	go func() {
		waitErr = cmd.Wait() // reaps the child: no zombie remains
		p.dropCgroup()
		close(p.exited)
	}()

	if err := p.waitReady(ctx); err != nil {
		// A QMP connection reset usually means QEMU is exiting on a bad
		// option: give it a moment so the error reports the exit.
		grace := exitGrace
		if ctx.Err() != nil {
			grace = 0
		}
		select {
		case <-p.exited:
			err = fmt.Errorf("qemu exited: %w", waitErr)
		case <-time.After(grace):
		}
		_ = p.Kill()
		p.removeRuntimeFiles()
		tail := tailFile(paths.StderrLog, logStart, 10)
		if tail == "" {
			tail = "(no output in " + paths.StderrLog + ")"
		}
		return fail("%w: %s", err, tail)
	}
	return p, nil
}

// waitReady waits for the pidfile, the QMP socket and the QMP greeting.
func (p *Process) waitReady(ctx context.Context) error {
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for !p.filesReady() {
		select {
		case <-p.exited:
			return errors.New("qemu exited")
		case <-ctx.Done():
			return fmt.Errorf("waiting for pidfile %s and QMP socket %s: %w", p.paths.PIDFile, p.paths.QMPSocket, ctx.Err())
		case <-tick.C:
		}
	}
	return p.waitGreeting(ctx)
}

// filesReady reports whether the pidfile names p and the QMP socket exists.
func (p *Process) filesReady() bool {
	data, err := os.ReadFile(p.paths.PIDFile)
	if err != nil {
		return false
	}
	if pid, err := strconv.Atoi(strings.TrimSpace(string(data))); err != nil || pid != p.pid {
		return false
	}
	st, err := os.Stat(p.paths.QMPSocket)
	return err == nil && st.Mode()&fs.ModeSocket != 0
}

// waitGreeting connects to the QMP socket, reads the greeting and waits
// for the answer to qmp_capabilities.
func (p *Process) waitGreeting(ctx context.Context) error {
	var d net.Dialer
	var conn net.Conn
	for {
		var err error
		conn, err = d.DialContext(ctx, "unix", p.paths.QMPSocket)
		if err == nil {
			break
		}
		// QEMU binds the socket file before it listens: retry a refusal.
		if !errors.Is(err, syscall.ECONNREFUSED) {
			return fmt.Errorf("connect to QMP socket: %w", err)
		}
		select {
		case <-p.exited:
			return errors.New("qemu exited")
		case <-ctx.Done():
			return fmt.Errorf("connect to QMP socket %s: %w", p.paths.QMPSocket, ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
	defer conn.Close()
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	r := bufio.NewReader(conn)
	readErr := func(what string, err error) error {
		if ctx.Err() != nil {
			return fmt.Errorf("waiting for QMP %s: %w", what, ctx.Err())
		}
		return fmt.Errorf("read QMP %s: %w", what, err)
	}
	line, err := r.ReadString('\n')
	if err != nil {
		return readErr("greeting", err)
	}
	if !strings.HasPrefix(strings.TrimSpace(line), `{"QMP"`) {
		return fmt.Errorf("unexpected QMP greeting %q", strings.TrimSpace(line))
	}
	// The greeting comes from the monitor I/O thread, possibly before
	// machine init is done; commands run in the main loop, so an answer
	// to qmp_capabilities proves QEMU is fully up.
	if _, err := io.WriteString(conn, `{"execute":"qmp_capabilities","id":"ferry-start"}`+"\n"); err != nil {
		return fmt.Errorf("write QMP qmp_capabilities: %w", err)
	}
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			return readErr("qmp_capabilities reply", err)
		}
		switch {
		case strings.Contains(line, `"return"`):
			return nil
		case strings.Contains(line, `"error"`):
			return fmt.Errorf("QMP qmp_capabilities failed: %s", strings.TrimSpace(line))
		}
		// anything else is an event: keep reading
	}
}

// Attach finds the QEMU that owns paths after an agent restart. It reads
// the pidfile and checks that /proc/PID/cmdline has paths.QMPSocket (a
// reused PID is not mistaken for the VM). It returns an error wrapping
// ErrNotRunning when no live QEMU owns paths.
func Attach(paths Paths) (*Process, error) {
	notRunning := func(format string, args ...any) (*Process, error) {
		return nil, fmt.Errorf("qemu: attach %s: %s: %w", paths.Dir, fmt.Sprintf(format, args...), ErrNotRunning)
	}
	data, err := os.ReadFile(paths.PIDFile)
	if errors.Is(err, fs.ErrNotExist) {
		return notRunning("no pidfile %s", paths.PIDFile)
	}
	if err != nil {
		return nil, fmt.Errorf("qemu: attach %s: %w", paths.Dir, err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(data)))
	if err != nil || pid <= 0 {
		return nil, fmt.Errorf("qemu: attach %s: pidfile %s holds %q, not a PID", paths.Dir, paths.PIDFile, strings.TrimSpace(string(data)))
	}
	// Open the pidfd before verifying, so it refers to the verified process.
	pidfd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		pidfd = -1
		if errors.Is(err, unix.ESRCH) {
			return notRunning("pid %d from %s does not exist", pid, paths.PIDFile)
		}
	}
	closeFD := func() {
		if pidfd >= 0 {
			unix.Close(pidfd)
		}
	}
	st, err := readProcStat(pid)
	if err != nil || !st.live() {
		closeFD()
		return notRunning("pid %d from %s is gone", pid, paths.PIDFile)
	}
	ok, err := cmdlineHasSocket(pid, paths.QMPSocket)
	if err != nil || !ok {
		closeFD()
		return notRunning("pid %d from %s is not a QEMU with QMP socket %s (PID reused?)", pid, paths.PIDFile, paths.QMPSocket)
	}
	p := &Process{pid: pid, paths: paths, startTicks: st.startTicks, startedAt: startTime(st.startTicks),
		exited: make(chan struct{}), pidfd: pidfd, cgroup: procVMCgroup(pid)}
	go p.watch()
	return p, nil
}

// watch closes p.exited when an attached process is gone: pidfd becomes
// readable at exit; without a pidfd /proc is polled every 250ms.
func (p *Process) watch() {
	for {
		if p.pidfd >= 0 {
			fds := []unix.PollFd{{Fd: int32(p.pidfd), Events: unix.POLLIN}}
			if n, err := unix.Poll(fds, int(pollInterval/time.Millisecond)); err == nil && n > 0 {
				break
			} else if err != nil && !errors.Is(err, unix.EINTR) {
				time.Sleep(pollInterval)
			}
		} else {
			time.Sleep(pollInterval)
		}
		if !procAlive(p.pid, p.startTicks) {
			break
		}
	}
	p.mu.Lock()
	if p.pidfd >= 0 {
		unix.Close(p.pidfd)
		p.pidfd = -1
	}
	p.mu.Unlock()
	p.dropCgroup()
	close(p.exited)
}

// dropCgroup removes the exited process's own cgroup (ScopeCgroup); a
// failure is noted in the VM's QEMU log, the only place this package
// reports to once the VM is gone.
func (p *Process) dropCgroup() {
	err := removeCgroup(p.cgroup)
	if err == nil {
		return
	}
	if f, ferr := os.OpenFile(p.paths.StderrLog, os.O_WRONLY|os.O_APPEND, 0); ferr == nil {
		fmt.Fprintf(f, "--- %s ferry: %v\n", time.Now().Format(time.RFC3339), err)
		f.Close()
	}
}

// PID returns the QEMU process ID.
func (p *Process) PID() int { return p.pid }

// Paths returns the VM files the process was started or attached with.
func (p *Process) Paths() Paths { return p.paths }

// StartedAt returns when the process started, from /proc/PID/stat
// starttime and the boot time (about one second of precision). It is the
// same for a child and for a later Attach to it.
func (p *Process) StartedAt() time.Time { return p.startedAt }

// Alive reports whether the process is running; an exited, reaped or
// zombie process is not alive.
func (p *Process) Alive() bool {
	select {
	case <-p.exited:
		return false
	default:
	}
	return procAlive(p.pid, p.startTicks)
}

// Exited returns a channel closed once the process is gone.
func (p *Process) Exited() <-chan struct{} { return p.exited }

// Kill sends SIGKILL to the process by PID (never to its group) and waits
// up to 10s for it to exit; then it removes the stale pidfile and QMP
// socket. Killing an exited process succeeds.
func (p *Process) Kill() error {
	select {
	case <-p.exited:
		p.removeRuntimeFiles()
		return nil
	default:
	}
	var err error
	if p.cmd != nil {
		err = p.cmd.Process.Signal(syscall.SIGKILL) // uses a pidfd internally
	} else {
		p.mu.Lock()
		switch {
		case p.pidfd >= 0:
			err = unix.PidfdSendSignal(p.pidfd, unix.SIGKILL, nil, 0)
		case procAlive(p.pid, p.startTicks):
			err = syscall.Kill(p.pid, syscall.SIGKILL)
		}
		p.mu.Unlock()
	}
	if err != nil && !errors.Is(err, os.ErrProcessDone) && !errors.Is(err, unix.ESRCH) {
		return fmt.Errorf("qemu: kill pid %d: %w", p.pid, err)
	}
	select {
	case <-p.exited:
	case <-time.After(killTimeout):
		return fmt.Errorf("qemu: kill pid %d: still running %s after SIGKILL", p.pid, killTimeout)
	}
	p.removeRuntimeFiles()
	return nil
}

// removeRuntimeFiles deletes the pidfile and QMP socket left by a killed
// QEMU, unless the pidfile names another process.
func (p *Process) removeRuntimeFiles() {
	data, err := os.ReadFile(p.paths.PIDFile)
	if err == nil {
		if pid, _ := strconv.Atoi(strings.TrimSpace(string(data))); pid != p.pid {
			return // a new QEMU owns the paths now
		}
	} else if !errors.Is(err, fs.ErrNotExist) {
		return
	}
	_ = os.Remove(p.paths.PIDFile)
	_ = os.Remove(p.paths.QMPSocket)
}

// RSSBytes returns the resident memory of the process, or 0 when it is not
// alive.
func (p *Process) RSSBytes() int64 {
	if !p.Alive() {
		return 0
	}
	return readRSS(p.pid)
}
