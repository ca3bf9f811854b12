package agent

import (
	"fmt"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
)

// Least privilege for QEMU: with --qemu-user NAME every QEMU this agent
// starts drops to that user once it has opened what its command line names
// (disks, taps, kernel, sockets, logs: all opened as the agent's user,
// root) and runs under QEMU's seccomp sandbox. What QEMU opens later, the
// stream TLS credentials, the agent hands to that user.

// QEMUUserEnv, when set, is the --qemu-user default (tests that start
// agents through `ferry dev cluster up` set it this way).
const QEMUUserEnv = "FERRY_QEMU_USER"

// QEMUUserDefault returns the --qemu-user default: QEMUUserEnv, else ""
// (QEMU keeps the agent's user).
func QEMUUserDefault() string { return os.Getenv(QEMUUserEnv) }

// qemuUser is the resolved --qemu-user.
type qemuUser struct {
	name     string
	uid, gid int
}

// lookupQEMUUser resolves name ("" = none): a user that exists and is not
// root.
func lookupQEMUUser(name string) (*qemuUser, error) {
	if name == "" {
		return nil, nil
	}
	u, err := user.Lookup(name)
	if err != nil {
		return nil, fmt.Errorf("--qemu-user %q: %w (create it, e.g. useradd --system --no-create-home --shell /usr/sbin/nologin %s)", name, err, name)
	}
	uid, err1 := strconv.Atoi(u.Uid)
	gid, err2 := strconv.Atoi(u.Gid)
	if err1 != nil || err2 != nil {
		return nil, fmt.Errorf("--qemu-user %q: uid %q gid %q are not numbers", name, u.Uid, u.Gid)
	}
	if uid == 0 {
		return nil, fmt.Errorf("--qemu-user %q: is root (uid 0): name an unprivileged user", name)
	}
	return &qemuUser{name: name, uid: uid, gid: gid}, nil
}

// chownQEMU gives dir and the files in it to the QEMU user (nothing
// without --qemu-user), so that QEMU, no longer root, can read them.
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
