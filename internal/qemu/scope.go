package qemu

import (
	"fmt"
	"os"
	"os/exec"
	"strings"
	"time"
)

// Scope values of Config.Scope (the agent's --qemu-scope flag).
const (
	// ScopeAuto runs QEMU in its own systemd scope when systemd is the
	// init system (and systemd-run exists), else as a plain child.
	ScopeAuto = "auto"
	// ScopeSystemd always runs QEMU through systemd-run --scope.
	ScopeSystemd = "systemd"
	// ScopeNone runs QEMU as a plain child in the agent's own cgroup.
	ScopeNone = "none"
)

// systemdBooted reports whether systemd is the running init system (the
// test sd_booted(3) makes).
func systemdBooted() bool {
	fi, err := os.Stat("/run/systemd/system")
	return err == nil && fi.IsDir()
}

// ScopeUnit is the transient scope unit a VM's QEMU runs in: unique per
// start (a scope's name cannot be reused while the old one is collected).
func ScopeUnit(vm string, now time.Time) string {
	var b strings.Builder
	for _, r := range vm {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9', r == '-', r == '_', r == '.':
			b.WriteRune(r)
		default:
			b.WriteByte('_')
		}
	}
	return fmt.Sprintf("ferry-vm-%s-%d.scope", b.String(), now.UnixNano())
}

// scopedCommand returns the program and arguments that start binary argv
// in the scope mode: with systemd, through `systemd-run --scope`, which
// moves itself into a new transient scope under machine.slice and then
// executes QEMU in place (same PID), so QEMU leaves the agent's cgroup and
// `systemctl restart ferry-agent` does not kill it.
func scopedCommand(mode, vm, binary string, argv []string, now time.Time) (string, []string, error) {
	switch mode {
	case "", ScopeNone, ScopeCgroup: // ScopeCgroup: Start clones QEMU into its cgroup
		return binary, argv, nil
	case ScopeAuto:
		if !systemdBooted() {
			return binary, argv, nil
		}
		if !hasSystemdRun() {
			return binary, argv, nil
		}
	case ScopeSystemd:
	default:
		return "", nil, fmt.Errorf("qemu scope %q: auto, systemd, cgroup or none", mode)
	}
	args := []string{"--scope", "--quiet", "--collect", "--slice=machine.slice",
		"--unit=" + ScopeUnit(vm, now), "--description=ferry VM " + vm, "--", binary}
	return "systemd-run", append(args, argv...), nil
}

func hasSystemdRun() bool {
	_, err := exec.LookPath("systemd-run")
	return err == nil
}
