//go:build linux

// Package sysinit holds what the guest program does as PID 1 of the
// initramfs: mount the pseudo file systems, fix up the console, load kernel
// modules, configure the network over rtnetlink, reap orphaned zombies and
// react to the ACPI power button. Nothing here execs another program (the
// zombie reaper would race with os/exec's Wait).
package sysinit

import (
	"errors"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Logf is the logging function used by this package.
type Logf func(format string, args ...any)

// Mounts mounts /proc, /sys and /dev (devtmpfs) and makes sure fds 0,1,2
// are the console. Already-mounted file systems are not an error.
func Mounts() error {
	var errs []error
	for _, m := range []struct {
		src, dst, fstype string
		flags            uintptr
		data             string
	}{
		{"proc", "/proc", "proc", unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC, ""},
		{"sysfs", "/sys", "sysfs", unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC, ""},
		{"devtmpfs", "/dev", "devtmpfs", unix.MS_NOSUID, "mode=0755"},
		{"tmpfs", "/run", "tmpfs", unix.MS_NOSUID | unix.MS_NODEV, "mode=0755"},
	} {
		if err := os.MkdirAll(m.dst, 0o755); err != nil {
			errs = append(errs, err)
			continue
		}
		if err := unix.Mount(m.src, m.dst, m.fstype, m.flags, m.data); err != nil && err != unix.EBUSY {
			errs = append(errs, fmt.Errorf("mount %s on %s: %w", m.fstype, m.dst, err))
		}
	}
	// The kernel opens /dev/console for init only if the node existed in the
	// rootfs; if it did not, stdio is closed. Reopen it from devtmpfs.
	if _, err := unix.FcntlInt(1, unix.F_GETFD, 0); err != nil {
		fd, err := unix.Open("/dev/console", unix.O_RDWR|unix.O_NOCTTY, 0)
		if err != nil {
			errs = append(errs, fmt.Errorf("open /dev/console: %w", err))
		} else {
			for i := 0; i < 3; i++ {
				if fd != i {
					unix.Dup3(fd, i, 0)
				}
			}
			if fd > 2 {
				unix.Close(fd)
			}
		}
	}
	return errors.Join(errs...)
}

// IgnoreSignals makes PID 1 immune to the signals whose Go default action is
// to exit (the kernel panics when init exits).
func IgnoreSignals() {
	signal.Ignore(syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP, syscall.SIGQUIT,
		syscall.SIGUSR1, syscall.SIGUSR2, syscall.SIGPIPE, syscall.SIGTSTP,
		syscall.SIGTTIN, syscall.SIGTTOU)
}

// Reap reaps zombie children forever (run it in its own goroutine). As
// PID 1 every orphan in the system is re-parented to us.
func Reap(logf Logf) {
	ch := make(chan os.Signal, 16)
	signal.Notify(ch, syscall.SIGCHLD)
	tick := time.NewTicker(10 * time.Second) // in case a SIGCHLD was coalesced
	defer tick.Stop()
	for {
		for {
			var ws unix.WaitStatus
			pid, err := unix.Wait4(-1, &ws, unix.WNOHANG, nil)
			if err == unix.EINTR {
				continue
			}
			if pid <= 0 || err != nil {
				break
			}
			if logf != nil {
				logf("reaped pid %d (status %v)", pid, ws.ExitStatus())
			}
		}
		select {
		case <-ch:
		case <-tick.C:
		}
	}
}

// Uptime returns CLOCK_BOOTTIME.
func Uptime() time.Duration {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_BOOTTIME, &ts); err != nil {
		return 0
	}
	return time.Duration(ts.Nano())
}

// KernelRelease returns uname -r.
func KernelRelease() string {
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		return ""
	}
	return unix.ByteSliceToString(u.Release[:])
}

// PowerOff syncs and powers the machine off. It only returns on failure.
func PowerOff() error {
	unix.Sync()
	return unix.Reboot(unix.LINUX_REBOOT_CMD_POWER_OFF)
}
