package agent

import (
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

func TestLookupQEMUUser(t *testing.T) {
	for _, name := range []string{"", QEMURoot} {
		u, err := lookupQEMUUser(name, nil)
		if u != nil || err != nil {
			t.Errorf("lookupQEMUUser(%q) = %v, %v; want QEMU kept as the agent's user", name, u, err)
		}
	}
	_, err := lookupQEMUUser("ferry-no-such-user", nil)
	if err == nil || !strings.Contains(err.Error(), "config key qemu-user") || !strings.Contains(err.Error(), "qemu-user.sh") {
		t.Errorf("missing user: %v; want an error naming the config key and the fix", err)
	}
	u, err := lookupQEMUUser("nobody", nil)
	if err != nil || u.uid == 0 || len(u.groups) == 0 {
		t.Errorf("nobody: %+v, %v", u, err)
	}
}

func TestQEMUUserCanOpen(t *testing.T) {
	u := &qemuUser{name: "q", uid: 995, gid: 995, groups: []int{995, 30}}
	for _, c := range []struct {
		uid, gid, mode uint32
		want           uint32
		ok             bool
	}{
		{0, 0, 0o600, 6, false},  // root's device
		{0, 995, 0o660, 6, true}, // its group's
		{0, 30, 0o640, 6, false}, // group may only read
		{0, 30, 0o640, 4, true},
		{995, 0, 0o600, 6, true}, // its own
		{0, 0, 0o666, 6, true},   // anyone's
		{0, 0, 0o711, 1, true},   // a searchable directory
		{0, 0, 0o700, 1, false},
	} {
		st := &syscall.Stat_t{Uid: c.uid, Gid: c.gid, Mode: c.mode}
		if got := u.canOpen(st, c.want); got != c.ok {
			t.Errorf("uid %d gid %d mode %o want %o: %v, want %v", c.uid, c.gid, c.mode, c.want, got, c.ok)
		}
	}
}

func TestPostcopyProblem(t *testing.T) {
	dir := t.TempDir()
	dev, sysctl := filepath.Join(dir, "uffd"), filepath.Join(dir, "sysctl")
	u := &qemuUser{name: "q", uid: 995, gid: 995, groups: []int{995}}
	if p := (*qemuUser)(nil).postcopyProblem(dev, sysctl); p != "" {
		t.Errorf("QEMU as root: %q", p)
	}
	if p := u.postcopyProblem(dev, sysctl); !strings.Contains(p, "missing") {
		t.Errorf("no device, no sysctl: %q", p)
	}
	if err := os.WriteFile(dev, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if p := u.postcopyProblem(dev, sysctl); !strings.Contains(p, "cannot open") || !strings.Contains(p, "chgrp q") {
		t.Errorf("root's device: %q; want the fix named", p)
	}
	if err := os.WriteFile(sysctl, []byte("1\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if p := u.postcopyProblem(dev, sysctl); p != "" {
		t.Errorf("vm.unprivileged_userfaultfd=1: %q", p)
	}
	if err := os.WriteFile(sysctl, []byte("0\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dev, 0o666); err != nil {
		t.Fatal(err)
	}
	if p := u.postcopyProblem(dev, sysctl); p != "" {
		t.Errorf("a device anyone opens: %q", p)
	}
}

func TestCheckDataDir(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root (chmod of directories above as another user's view)")
	}
	top := t.TempDir()
	closed := filepath.Join(top, "closed")
	data := filepath.Join(closed, "agent")
	if err := os.MkdirAll(data, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(closed, 0o700); err != nil {
		t.Fatal(err)
	}
	for _, d := range []string{top, filepath.Dir(top)} { // the test's own directories
		if err := os.Chmod(d, 0o711); err != nil {
			t.Fatal(err)
		}
	}
	u := &qemuUser{name: "q", uid: 995, gid: 995, groups: []int{995}}
	err := u.checkDataDir(data)
	if err == nil || !strings.Contains(err.Error(), "chmod o+x "+closed) {
		t.Errorf("a 0700 directory above: %v; want the fix naming %s", err, closed)
	}
	if fi, _ := os.Stat(data); fi.Mode().Perm() != 0o711 {
		t.Errorf("data dir mode %o, want 0711 (searchable, not listable)", fi.Mode().Perm())
	}
	if err := os.Chmod(closed, 0o711); err != nil {
		t.Fatal(err)
	}
	if err := u.checkDataDir(data); err != nil {
		t.Errorf("after chmod: %v", err)
	}
}
