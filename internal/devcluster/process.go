package devcluster

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// StopTimeout is how long Down waits after SIGTERM before sending SIGKILL.
const StopTimeout = 5 * time.Second

// StartProcess starts argv as a long-running daemon inside namespace
// nsName (one of c.Namespaces(), or "" for the root namespace) with `ip netns exec`, in a new session so
// it survives the caller, stdin from /dev/null and stdout and stderr
// appended to logPath (default DIR/logs/NS-PROGRAM.log). It records the
// process in the state file so that Down stops it, and returns its PID.
func (c *Cluster) StartProcess(nsName, logPath string, argv []string) (int, error) {
	if len(argv) == 0 || argv[0] == "" {
		return 0, errors.New("start process: empty argv")
	}
	if nsName != "" && !slices.Contains(c.Namespaces(), nsName) {
		return 0, fmt.Errorf("start %s: %q is not a namespace of dev cluster %q (one of %s)",
			argv[0], nsName, c.Config.Prefix, strings.Join(c.Namespaces(), ", "))
	}
	if logPath == "" {
		logPath = filepath.Join(c.Config.Dir, "logs", cmp.Or(nsName, "root")+"-"+filepath.Base(argv[0])+".log")
	}
	if err := os.MkdirAll(filepath.Dir(logPath), 0o755); err != nil {
		return 0, fmt.Errorf("start %s: create log directory: %w", argv[0], err)
	}
	logFile, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return 0, fmt.Errorf("start %s: open log: %w", argv[0], err)
	}
	defer logFile.Close()

	c.mu.Lock()
	defer c.mu.Unlock()
	unlock, err := lockDir(c.Config.Dir)
	if err != nil {
		return 0, err
	}
	defer unlock()
	st, err := readState(c.Config.Dir)
	if err != nil {
		return 0, fmt.Errorf("start %s: %w", argv[0], err)
	}

	cmd := exec.Command("ip", append([]string{"netns", "exec", nsName}, argv...)...)
	if nsName == "" { // the root namespace, e.g. a server reached over a unix socket
		cmd = exec.Command(argv[0], argv[1:]...)
	}
	cmd.Stdout = logFile
	cmd.Stderr = logFile
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return 0, fmt.Errorf("start %s in %s: %w", argv[0], nsName, err)
	}
	pid := cmd.Process.Pid
	// Reap it if it exits while we live; after we exit, init does.
	go func() { _ = cmd.Wait() }()

	info, _ := readProc(pid) // zero StartTime if it already exited
	st.Processes = append(st.Processes, Process{
		PID:       pid,
		StartTime: info.startTime,
		Netns:     nsName,
		Argv:      slices.Clone(argv),
		Log:       logPath,
		StartedAt: time.Now().UTC(),
	})
	if err := writeState(c.Config.Dir, st); err != nil {
		_ = syscall.Kill(pid, syscall.SIGKILL) // the child we just started
		return 0, fmt.Errorf("start %s: record it: %w", argv[0], err)
	}
	return pid, nil
}

// procInfo is what /proc/PID/stat tells about a process.
type procInfo struct {
	state     byte // R, S, D, Z, ...
	pgrp      int
	startTime uint64
}

// readProc parses /proc/PID/stat; the command name may contain spaces and
// parentheses, so fields are counted after its last ')'.
func readProc(pid int) (procInfo, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return procInfo{}, err
	}
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return procInfo{}, fmt.Errorf("parse /proc/%d/stat", pid)
	}
	f := strings.Fields(string(b[i+1:]))
	// f[0] is field 3 (state), f[2] field 5 (pgrp), f[19] field 22.
	if len(f) < 20 {
		return procInfo{}, fmt.Errorf("parse /proc/%d/stat: %d fields", pid, len(f))
	}
	pgrp, _ := strconv.Atoi(f[2])
	start, err := strconv.ParseUint(f[19], 10, 64)
	if err != nil {
		return procInfo{}, fmt.Errorf("parse /proc/%d/stat start time: %w", pid, err)
	}
	return procInfo{state: f[0][0], pgrp: pgrp, startTime: start}, nil
}

// alive reports whether pid exists and is not a zombie.
func alive(pid int) bool {
	info, err := readProc(pid)
	return err == nil && info.state != 'Z'
}

func readCmdline(pid int) ([]string, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cmdline")
	if err != nil {
		return nil, err
	}
	b = bytes.TrimSuffix(b, []byte{0})
	if len(b) == 0 {
		return nil, nil
	}
	return strings.Split(string(b), "\x00"), nil
}

// isRecorded reports whether the live process pid is still the one p
// describes: same start time (if recorded) and a command line equal to
// p.Argv, or to `ip netns exec NS argv...` if it has not exec'd yet. An
// argv that starts with `env VAR=VALUE...` (a daemon restarted with extra
// environment, e.g. failpoints) also matches the command env exec'd into:
// without that, Down took such a daemon for a reused PID and left it running.
func isRecorded(p Process) bool {
	info, err := readProc(p.PID)
	if err != nil || info.state == 'Z' {
		return false
	}
	if p.StartTime != 0 && info.startTime != p.StartTime {
		return false
	}
	cmdline, err := readCmdline(p.PID)
	if err != nil {
		return false
	}
	wrapped := append([]string{"ip", "netns", "exec", p.Netns}, p.Argv...)
	if slices.Equal(cmdline, p.Argv) || slices.Equal(cmdline, wrapped) {
		return true
	}
	execd := AfterEnv(p.Argv)
	return execd != nil && slices.Equal(cmdline, execd)
}

// AfterEnv returns the command `env [VAR=VALUE...] cmd args...` runs once
// env has exec'd it (nil if argv is not such an env invocation).
func AfterEnv(argv []string) []string {
	if len(argv) == 0 || filepath.Base(argv[0]) != "env" {
		return nil
	}
	i := 1
	for i < len(argv) && strings.Contains(argv[i], "=") && !strings.HasPrefix(argv[i], "-") {
		i++
	}
	if i == len(argv) {
		return nil
	}
	return argv[i:]
}

// stopPIDs sends SIGTERM to every pid (and to the process group of each
// pid in groups), waits up to StopTimeout for them to exit, then SIGKILLs
// the rest and waits a little longer. It returns the PIDs still alive.
func stopPIDs(ctx context.Context, pids []int, groups map[int]bool) []int {
	signal := func(sig syscall.Signal) {
		for _, pid := range pids {
			if groups[pid] {
				_ = syscall.Kill(-pid, sig)
			}
			_ = syscall.Kill(pid, sig)
		}
	}
	living := func() []int {
		var left []int
		for _, pid := range pids {
			if alive(pid) {
				left = append(left, pid)
			}
		}
		return left
	}
	wait := func(d time.Duration) []int {
		deadline := time.Now().Add(d)
		for {
			left := living()
			if len(left) == 0 || time.Now().After(deadline) || ctx.Err() != nil {
				return left
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	if len(pids) == 0 {
		return nil
	}
	signal(syscall.SIGTERM)
	if pids = wait(StopTimeout); len(pids) == 0 {
		return nil
	}
	signal(syscall.SIGKILL)
	return wait(2 * time.Second)
}
