package agent

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
)

// Least privilege for QEMU: every QEMU this agent starts drops to the
// --qemu-user (default DefaultQEMUUser, a system user hack/deps.sh and the
// Debian package create) once it has opened what its command line names
// (disks, taps, kernel, sockets, logs: all opened as the agent's user,
// root) and runs under QEMU's seccomp sandbox. What QEMU opens later (the
// stream TLS credentials, /dev/userfaultfd for post-copy) the agent hands
// to that user or checks that user can open. QEMU keeps root only with
// the explicit --qemu-user root, which the agent warns about.

// DefaultQEMUUser is the --qemu-user default: the system user the Debian
// package's postinst and hack/deps.sh create (packaging/qemu-user.sh).
const DefaultQEMUUser = "ferry-qemu"

// QEMURoot is the --qemu-user value that keeps QEMU as root (warned).
const QEMURoot = "root"

// QEMUUserEnv, when set, is the --qemu-user default instead of
// DefaultQEMUUser (tests that start agents through `ferry dev cluster up`).
const QEMUUserEnv = "FERRY_QEMU_USER"

// userfaultfdDev is the device QEMU ≥ 8.1 opens for post-copy's
// userfaultfd (kernel ≥ 6.1) before it tries the syscall.
const userfaultfdDev = "/dev/userfaultfd"

// unprivilegedUFFDSysctl lets any user call userfaultfd(2) when 1.
const unprivilegedUFFDSysctl = "/proc/sys/vm/unprivileged_userfaultfd"

// ErrNoPostcopy marks a post-copy arrival this host cannot take: its QEMU
// user cannot open userfaultfd.
var ErrNoPostcopy = errors.New("post-copy unavailable on this host")

// QEMUUserDefault returns the --qemu-user default: QEMUUserEnv, else
// DefaultQEMUUser.
func QEMUUserDefault() string {
	if u := os.Getenv(QEMUUserEnv); u != "" {
		return u
	}
	return DefaultQEMUUser
}

// qemuUser is the resolved --qemu-user.
type qemuUser struct {
	name     string
	uid, gid int
	// groups are the user's group ids (primary and supplementary: QEMU's
	// -run-with user= calls initgroups).
	groups []int
}

// fixQEMUUser is how to create the QEMU user.
const fixQEMUUser = "create it with packaging/qemu-user.sh (run by hack/deps.sh and the Debian package), or set --qemu-user (config key qemu-user) to an existing unprivileged user, or to root to keep QEMU privileged"

// lookupQEMUUser resolves name: "" (a Config built in code) and QEMURoot
// keep QEMU as the agent's user, logged as a warning; any other name must
// be an existing user that is not root.
func lookupQEMUUser(name string, log *slog.Logger) (*qemuUser, error) {
	if name == "" || name == QEMURoot {
		if log != nil && os.Geteuid() == 0 {
			log.Warn("QEMU runs as root: a compromised guest's QEMU owns the host; set --qemu-user (config key qemu-user) to an unprivileged user, default "+DefaultQEMUUser, "qemu_user", name)
		}
		return nil, nil
	}
	u, err := user.Lookup(name)
	if err != nil {
		return nil, fmt.Errorf("--qemu-user (config key qemu-user) %q: %w: %s", name, err, fixQEMUUser)
	}
	uid, err1 := strconv.Atoi(u.Uid)
	gid, err2 := strconv.Atoi(u.Gid)
	if err1 != nil || err2 != nil {
		return nil, fmt.Errorf("--qemu-user (config key qemu-user) %q: uid %q gid %q are not numbers", name, u.Uid, u.Gid)
	}
	if uid == 0 {
		return nil, fmt.Errorf("--qemu-user (config key qemu-user) %q: is uid 0; name an unprivileged user, or %q to keep QEMU privileged knowingly", name, QEMURoot)
	}
	qu := &qemuUser{name: name, uid: uid, gid: gid, groups: []int{gid}}
	if ids, err := u.GroupIds(); err == nil {
		for _, s := range ids {
			if g, err := strconv.Atoi(s); err == nil && !slices.Contains(qu.groups, g) {
				qu.groups = append(qu.groups, g)
			}
		}
	}
	return qu, nil
}

// canOpen reports whether u may open a file of mode m owned by uid:gid for
// the permission bits want (4 read, 2 write, 6 both), as the kernel's
// owner/group/other check decides (ACLs aside).
func (u *qemuUser) canOpen(st *syscall.Stat_t, want uint32) bool {
	m := st.Mode & 0o777
	switch {
	case int(st.Uid) == u.uid:
		return (m>>6)&want == want
	case slices.Contains(u.groups, int(st.Gid)):
		return (m>>3)&want == want
	default:
		return m&want == want
	}
}

// postcopyProblem says why u's QEMU cannot use userfaultfd, "" when it can:
// it can open /dev/userfaultfd read-write, or vm.unprivileged_userfaultfd
// is 1. dev and sysctl are the paths checked (tests pass others).
func (u *qemuUser) postcopyProblem(dev, sysctl string) string {
	if u == nil {
		return ""
	}
	if b, err := os.ReadFile(sysctl); err == nil && strings.TrimSpace(string(b)) == "1" {
		return ""
	}
	fi, err := os.Stat(dev)
	if err != nil {
		return fmt.Sprintf("QEMU user %s cannot use userfaultfd: %s is missing (kernel < 6.1?) and vm.unprivileged_userfaultfd is 0; fix: sysctl vm.unprivileged_userfaultfd=1, or a kernel with %s", u.name, dev, dev)
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if ok && u.canOpen(st, 6) {
		return ""
	}
	return fmt.Sprintf("QEMU user %s cannot open %s (mode %o) and vm.unprivileged_userfaultfd is 0; fix: packaging/qemu-user.sh (gives the device to group %s), or chgrp %s %s && chmod 0660 %s", u.name, dev, fi.Mode().Perm(), u.name, u.name, dev, dev)
}

// checkDataDir makes the agent's data dir searchable (not listable) by
// QEMU's user, which opens its stream credentials in the VM's directory
// below it, and checks every directory above it is too: an error names the
// directory and the fix.
func (u *qemuUser) checkDataDir(dir string) error {
	if u == nil {
		return nil
	}
	fi, err := os.Stat(dir)
	if err != nil {
		return fmt.Errorf("--data-dir: %w", err)
	}
	if fi.Mode().Perm()&0o001 == 0 {
		if err := os.Chmod(dir, fi.Mode().Perm()|0o011); err != nil {
			return fmt.Errorf("--data-dir %s: let QEMU's user %s search it: %w", dir, u.name, err)
		}
	}
	for d := filepath.Dir(dir); ; d = filepath.Dir(d) {
		fi, err := os.Stat(d)
		if err != nil {
			return fmt.Errorf("--data-dir: %w", err)
		}
		if st, ok := fi.Sys().(*syscall.Stat_t); ok && !u.canOpen(st, 1) {
			return fmt.Errorf("--data-dir %s: QEMU's user %s (--qemu-user, config key qemu-user) cannot search %s (mode %o), so cannot read its TLS credentials below it; fix: chmod o+x %s, or a --data-dir elsewhere", dir, u.name, d, fi.Mode().Perm(), d)
		}
		if d == filepath.Dir(d) {
			return nil
		}
	}
}

// chownQEMU gives dir and the files in it to the QEMU user (nothing when
// QEMU runs as root), so that QEMU, no longer root, can read them.
func (a *Agent) chownQEMU(dir string) error {
	u := a.qemuUser
	if u == nil {
		return nil
	}
	if err := os.Chown(dir, u.uid, u.gid); err != nil {
		return fmt.Errorf("give %s to QEMU's user %s: %w", dir, u.name, err)
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	for _, e := range entries {
		if err := os.Lchown(filepath.Join(dir, e.Name()), u.uid, u.gid); err != nil {
			return fmt.Errorf("give %s to QEMU's user %s: %w", e.Name(), u.name, err)
		}
	}
	return nil
}

// runAs is the user QEMU drops to ("" = none).
func (a *Agent) runAs() string {
	if a.qemuUser == nil {
		return ""
	}
	return a.qemuUser.name
}
