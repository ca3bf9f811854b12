package agent

import (
	"io"
	"log/slog"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ferryvm/ferry/internal/qemu"
)

// --qemu-scope: cgroup defaults its parent to ferry-vms at the root of the
// cgroup v2 mount, keeps one given, and an unknown value is refused with
// the valid ones.
func TestQEMUScopeConfig(t *testing.T) {
	cfg := func(scope, parent string) Config {
		return Config{Name: "h1", Listen: "127.0.0.1:0", Server: "unix:///nonexistent", DataDir: t.TempDir(), Accel: "tcg",
			QEMUScope: scope, QEMUCgroup: parent, Log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	}
	a, err := New(cfg(qemu.ScopeCgroup, ""))
	mount, merr := qemu.Cgroup2Mount()
	switch {
	case merr != nil:
		if err == nil || !strings.Contains(err.Error(), "--qemu-cgroup") {
			t.Fatalf("no cgroup v2 mount (%v): New = %v, want an error naming --qemu-cgroup", merr, err)
		}
	case err != nil:
		t.Fatalf("New with --qemu-scope cgroup: %v", err)
	case a.cfg.QEMUCgroup != filepath.Join(mount, "ferry-vms"):
		t.Fatalf("default --qemu-cgroup = %q, want %s/ferry-vms", a.cfg.QEMUCgroup, mount)
	}
	if a, err := New(cfg(qemu.ScopeCgroup, "/sys/fs/cgroup/mine")); err != nil {
		t.Fatalf("New with --qemu-cgroup /sys/fs/cgroup/mine: %v", err)
	} else if a.cfg.QEMUCgroup != "/sys/fs/cgroup/mine" {
		t.Fatalf("--qemu-cgroup /sys/fs/cgroup/mine became %q", a.cfg.QEMUCgroup)
	}
	if _, err := New(cfg("cgroups", "")); err == nil || !strings.Contains(err.Error(), "--qemu-scope: auto, systemd, cgroup or none") {
		t.Fatalf("New with --qemu-scope cgroups: %v, want the valid values", err)
	}
}
