package qemu

import (
	"bufio"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// ScopeCgroup runs each QEMU in a cgroup v2 of its own, made by the agent
// under Config.CgroupParent (no systemd needed): killing the agent's
// cgroup (cgroup.kill, or a service manager stopping it) leaves the VMs
// running.
const ScopeCgroup = "cgroup"

// cgroupPrefix starts the name of every per-QEMU cgroup; only cgroups so
// named are ever removed.
const cgroupPrefix = "ferry-vm-"

// cgroupRemoveTimeout bounds the wait for an exited QEMU's cgroup to
// become empty (the kernel updates it just after the exit).
const cgroupRemoveTimeout = 2 * time.Second

// ErrNoCgroup2 is returned (wrapped) when no cgroup v2 hierarchy is
// mounted.
var ErrNoCgroup2 = errors.New("no cgroup v2 hierarchy mounted")

// Cgroup2Mount returns where the cgroup v2 hierarchy is mounted
// (/sys/fs/cgroup on a unified host, /sys/fs/cgroup/unified on a hybrid
// one), from /proc/self/mountinfo.
func Cgroup2Mount() (string, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return "", fmt.Errorf("find the cgroup v2 mount: %w", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTS... - FSTYPE SOURCE SUPEROPTS
		pre, post, ok := strings.Cut(sc.Text(), " - ")
		if !ok {
			continue
		}
		pf, qf := strings.Fields(pre), strings.Fields(post)
		if len(pf) >= 5 && len(qf) >= 1 && qf[0] == "cgroup2" {
			return pf[4], nil
		}
	}
	if err := sc.Err(); err != nil {
		return "", fmt.Errorf("find the cgroup v2 mount: read mountinfo: %w", err)
	}
	return "", ErrNoCgroup2
}

// DefaultCgroupParent is the cgroup under which ScopeCgroup makes the
// QEMUs' cgroups when Config.CgroupParent is empty: ferry-vms at the root
// of the cgroup v2 hierarchy.
func DefaultCgroupParent() (string, error) {
	m, err := Cgroup2Mount()
	if err != nil {
		return "", err
	}
	return filepath.Join(m, "ferry-vms"), nil
}

// vmCgroup is the cgroup one QEMU is started in; fd is open on it for
// clone3's CLONE_INTO_CGROUP until close.
type vmCgroup struct {
	dir string
	fd  int
}

// newVMCgroup makes parent (if missing) and a new, uniquely named cgroup
// for vm under it, and opens it. The caller removes it (remove) if the
// process never starts.
func newVMCgroup(parent, vm string, now time.Time) (*vmCgroup, error) {
	if parent == "" {
		var err error
		if parent, err = DefaultCgroupParent(); err != nil {
			return nil, fmt.Errorf("qemu cgroup: %w (set the agent's --qemu-cgroup, or --qemu-scope none)", err)
		}
	}
	if _, err := os.Stat(parent); errors.Is(err, fs.ErrNotExist) {
		// Make only the last level, inside an existing cgroup.
		if up := filepath.Dir(parent); !isCgroupDir(up) {
			return nil, fmt.Errorf("qemu cgroup: parent %s does not exist and %s is not a cgroup v2 directory (no cgroup.procs)", parent, up)
		}
		if err := os.Mkdir(parent, 0o755); err != nil && !errors.Is(err, fs.ErrExist) {
			return nil, fmt.Errorf("qemu cgroup: create parent: %w", err)
		}
	}
	if !isCgroupDir(parent) {
		return nil, fmt.Errorf("qemu cgroup: parent %s is not a cgroup v2 directory (no cgroup.procs)", parent)
	}
	unit := strings.TrimSuffix(ScopeUnit(vm, now), ".scope") // ferry-vm-NAME-N
	dir := filepath.Join(parent, unit)
	if err := os.Mkdir(dir, 0o755); err != nil {
		return nil, fmt.Errorf("qemu cgroup: %w", err)
	}
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		_ = os.Remove(dir)
		return nil, fmt.Errorf("qemu cgroup: open %s: %w", dir, err)
	}
	return &vmCgroup{dir: dir, fd: fd}, nil
}

// isCgroupDir reports whether dir is a cgroup v2 directory.
func isCgroupDir(dir string) bool {
	_, err := os.Stat(filepath.Join(dir, "cgroup.procs"))
	return err == nil
}

// closeFD closes the descriptor used to start the process in the cgroup.
func (c *vmCgroup) closeFD() {
	if c.fd >= 0 {
		unix.Close(c.fd)
		c.fd = -1
	}
}

// removeCgroup deletes a per-QEMU cgroup once its process is gone,
// retrying while the kernel still counts the exited process (EBUSY). A
// directory not named ferry-vm-* is never touched.
func removeCgroup(dir string) error {
	if dir == "" || !strings.HasPrefix(filepath.Base(dir), cgroupPrefix) {
		return nil
	}
	deadline := time.Now().Add(cgroupRemoveTimeout)
	for {
		err := os.Remove(dir)
		if err == nil || errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		if !errors.Is(err, unix.EBUSY) || time.Now().After(deadline) {
			return fmt.Errorf("qemu cgroup: remove %s: %w", dir, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// procVMCgroup returns the per-QEMU cgroup directory pid runs in, or ""
// when it runs in any other cgroup (no scope, a systemd scope) or there is
// no cgroup v2 hierarchy.
func procVMCgroup(pid int) string {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", pid))
	if err != nil {
		return ""
	}
	for _, line := range strings.Split(string(data), "\n") {
		rel, ok := strings.CutPrefix(line, "0::")
		if !ok || !strings.HasPrefix(filepath.Base(rel), cgroupPrefix) {
			continue
		}
		m, err := Cgroup2Mount()
		if err != nil {
			return ""
		}
		return filepath.Join(m, rel)
	}
	return ""
}

// OwnCgroupOf returns the cgroup v2 directory pid runs in when it is not
// the calling process's own (a QEMU in its systemd scope or cgroup), else
// "": what a helper of that QEMU starts in to share its lifetime across a
// restart of the agent's unit.
func OwnCgroupOf(pid int) string {
	rel, ok := cgroupPath(fmt.Sprintf("/proc/%d/cgroup", pid))
	if !ok {
		return ""
	}
	if self, ok := cgroupPath("/proc/self/cgroup"); ok && self == rel {
		return ""
	}
	m, err := Cgroup2Mount()
	if err != nil {
		return ""
	}
	return filepath.Join(m, rel)
}

// cgroupPath is the cgroup v2 path a /proc/PID/cgroup file names.
func cgroupPath(file string) (string, bool) {
	data, err := os.ReadFile(file)
	if err != nil {
		return "", false
	}
	for _, line := range strings.Split(string(data), "\n") {
		if rel, ok := strings.CutPrefix(line, "0::"); ok && rel != "" {
			return rel, true
		}
	}
	return "", false
}
