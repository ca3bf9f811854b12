package qemu

import (
	"strings"
	"testing"
	"time"
)

func TestScopedCommand(t *testing.T) {
	now := time.Unix(1, 5)
	bin, args, err := scopedCommand(ScopeNone, "web", "qemu-system-x86_64", []string{"-S"}, now)
	if err != nil || bin != "qemu-system-x86_64" || strings.Join(args, " ") != "-S" {
		t.Fatalf("none: %s %v %v", bin, args, err)
	}
	bin, args, err = scopedCommand(ScopeSystemd, "web/1", "/usr/bin/qemu", []string{"-S", "-name", "x"}, now)
	if err != nil || bin != "systemd-run" {
		t.Fatalf("systemd: %s %v %v", bin, args, err)
	}
	got := strings.Join(args, " ")
	want := "--scope --quiet --collect --slice=machine.slice --unit=ferry-vm-web_1-1000000005.scope --description=ferry VM web/1 -- /usr/bin/qemu -S -name x"
	if got != want {
		t.Fatalf("systemd args:\n%s\nwant\n%s", got, want)
	}
	if _, _, err := scopedCommand("cgroups", "web", "q", nil, now); err == nil || !strings.Contains(err.Error(), "auto, systemd, cgroup or none") {
		t.Fatalf("bad mode: %v", err)
	}
	bin, _, err = scopedCommand(ScopeAuto, "web", "q", nil, now)
	if err != nil || (bin == "systemd-run") != (systemdBooted() && hasSystemdRun()) {
		t.Fatalf("auto chose %s (systemd booted %v): %v", bin, systemdBooted(), err)
	}
}
