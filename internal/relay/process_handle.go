package relay

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// ReadyTimeout bounds a relay process's start: its ready line must come
// by then.
const ReadyTimeout = 10 * time.Second

// closeWait is how long Close waits for the process to end after the
// close request before it kills it.
const closeWait = 2 * time.Second

// Process is the agent's handle on a relay process it started or adopted.
// Its methods are those of Outbound and Inbound.
type Process struct {
	control  string
	endpoint string
	pid      int
	pidfd    int           // the process, whatever reuses its pid later (-1: none)
	exited   chan struct{} // closed once a started process was reaped (nil: adopted)
}

// StartProcess runs argv (the ferry binary and its stream-relay command)
// in a session of its own, so that it outlives the agent, hands it spec
// and waits for its ready line. Its output goes to logPath. cgroup, when
// not empty, is the cgroup v2 directory it starts in (the QEMU's, so that
// restarting the agent's unit, which ends the processes of the agent's
// cgroup, leaves it running as it leaves QEMU). A process that fails to
// start or to become ready is killed.
func StartProcess(ctx context.Context, argv []string, spec ProcessSpec, logPath, cgroup string) (*Process, error) {
	if len(argv) == 0 {
		return nil, errors.New("relay process: no command")
	}
	if err := spec.Check(); err != nil {
		return nil, err
	}
	in, err := json.Marshal(spec)
	if err != nil {
		return nil, fmt.Errorf("relay process spec: %w", err)
	}
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, fmt.Errorf("relay process log: %w", err)
	}
	defer func() { _ = logf.Close() }()
	rd, wr, err := os.Pipe()
	if err != nil {
		return nil, fmt.Errorf("relay process: %w", err)
	}
	defer func() { _ = rd.Close() }()
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdin = bytes.NewReader(in)
	cmd.Stdout, cmd.Stderr = wr, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if cgroup != "" {
		fd, err := unix.Open(cgroup, unix.O_DIRECTORY|unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			_ = wr.Close()
			return nil, fmt.Errorf("relay process: open cgroup %s: %w", cgroup, err)
		}
		defer func() { _ = unix.Close(fd) }()
		cmd.SysProcAttr.UseCgroupFD, cmd.SysProcAttr.CgroupFD = true, fd
	}
	if err := cmd.Start(); err != nil {
		_ = wr.Close()
		return nil, fmt.Errorf("start the relay process %s: %w", argv[0], err)
	}
	_ = wr.Close()
	p := &Process{control: spec.Control, pid: cmd.Process.Pid, pidfd: -1, exited: make(chan struct{})}
	if fd, err := unix.PidfdOpen(p.pid, 0); err == nil {
		p.pidfd = fd
	}
	go func() {
		_ = cmd.Wait()
		close(p.exited)
	}()
	type ready struct {
		rep controlReply
		err error
	}
	got := make(chan ready, 1)
	go func() {
		rep, err := readReady(rd)
		got <- ready{rep, err}
	}()
	t := time.NewTimer(ReadyTimeout)
	defer t.Stop()
	var r ready
	select {
	case r = <-got:
	case <-t.C:
		r.err = fmt.Errorf("no ready line within %v", ReadyTimeout)
	case <-ctx.Done():
		r.err = ctx.Err()
	}
	if r.err != nil {
		p.kill()
		return nil, fmt.Errorf("relay process (log %s): %w", logPath, r.err)
	}
	p.endpoint = r.rep.Endpoint
	return p, nil
}

// AdoptProcess finds the relay process listening on control (an agent
// restarted while it ran); os.ErrNotExist when there is none.
func AdoptProcess(control string) (*Process, error) {
	if _, err := os.Stat(control); err != nil {
		return nil, err
	}
	rep, err := request(control, controlRequest{Op: "info"})
	if err != nil {
		if errors.Is(err, syscall.ECONNREFUSED) {
			_ = os.Remove(control) // nobody listens: a relay that died
			return nil, fmt.Errorf("relay control %s: %w (%w)", control, err, os.ErrNotExist)
		}
		return nil, err
	}
	p := &Process{control: control, endpoint: rep.Endpoint, pid: rep.PID, pidfd: -1}
	if fd, err := unix.PidfdOpen(p.pid, 0); err == nil {
		p.pidfd = fd
	}
	return p, nil
}

// request sends one control request and returns the reply.
func request(control string, req controlRequest) (controlReply, error) {
	var rep controlReply
	c, err := net.DialTimeout("unix", control, time.Second)
	if err != nil {
		return rep, err
	}
	defer func() { _ = c.Close() }()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	if err := json.NewEncoder(c).Encode(req); err != nil {
		return rep, fmt.Errorf("relay control %s: %w", control, err)
	}
	if err := json.NewDecoder(c).Decode(&rep); err != nil {
		return rep, fmt.Errorf("relay control %s: %s: %w", control, req.Op, err)
	}
	if rep.Error != "" {
		return rep, fmt.Errorf("relay control %s: %s: %s", control, req.Op, rep.Error)
	}
	return rep, nil
}

// Endpoint is what QEMU (out: "unix:PATH") or the peer host (in:
// "IP:PORT") is given.
func (p *Process) Endpoint() string { return p.endpoint }

// PID is the relay process's.
func (p *Process) PID() int { return p.pid }

// Retarget sends the channels opened from now on to target.
func (p *Process) Retarget(target string) error {
	_, err := request(p.control, controlRequest{Op: "retarget", Target: target})
	return err
}

// StopAccepting makes the process accept no new channel and end once its
// open ones did.
func (p *Process) StopAccepting() {
	_, _ = request(p.control, controlRequest{Op: "stop"})
}

// Stats are the process's counters (zero when it cannot be asked).
func (p *Process) Stats() Stats {
	rep, _ := request(p.control, controlRequest{Op: "info"})
	return rep.Stats
}

// Close ends the process and its channels: asked first, killed when it
// has not ended within closeWait.
func (p *Process) Close() error {
	_, err := request(p.control, controlRequest{Op: "close"})
	if err == nil && p.wait(closeWait) {
		p.release()
		return nil
	}
	p.kill()
	return nil
}

// wait reports whether the process ended within d.
func (p *Process) wait(d time.Duration) bool {
	if p.exited != nil {
		select {
		case <-p.exited:
			return true
		case <-time.After(d):
			return false
		}
	}
	if p.pidfd < 0 {
		return false
	}
	exited, err := pidfdExited(p.pidfd, d)
	return err == nil && exited
}

// kill ends the process by its pidfd (never a pid some other process may
// have taken since) and releases the handle.
func (p *Process) kill() {
	if p.pidfd >= 0 {
		_ = unix.PidfdSendSignal(p.pidfd, unix.SIGKILL, nil, 0)
		p.wait(closeWait)
	}
	p.release()
}

func (p *Process) release() {
	if p.pidfd >= 0 {
		_ = unix.Close(p.pidfd)
		p.pidfd = -1
	}
}
