//go:build linux

package qga

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// FindPort returns the /dev node of the virtio-serial port called name
// (e.g. /dev/vport1p1 for org.qemu.guest_agent.0), looking under sysRoot
// (/sys) and devRoot (/dev); "" when there is none.
func FindPort(sysRoot, devRoot, name string) string {
	dirs, _ := filepath.Glob(filepath.Join(sysRoot, "class", "virtio-ports", "*", "name"))
	for _, f := range dirs {
		b, err := os.ReadFile(f)
		if err == nil && strings.TrimSpace(string(b)) == name {
			return filepath.Join(devRoot, filepath.Base(filepath.Dir(f)))
		}
	}
	return ""
}

// Logf logs one line.
type Logf func(format string, args ...any)

// idle is how long Serve waits before looking again while no host side is
// connected (a virtio port reads EOF at once then).
const idle = 20 * time.Millisecond

// Serve answers commands on the port device at path until it cannot be
// opened; it never returns otherwise. While the host side is not connected
// the port reads EOF, and a half-received command is dropped.
func Serve(path string, h Handler, logf Logf) error {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return fmt.Errorf("guest agent port %s: %w", path, err)
	}
	defer f.Close()
	fd := int(f.Fd())
	var p Parser
	buf := make([]byte, 4096)
	for {
		fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
		if _, err := unix.Poll(fds, int(idle/time.Millisecond)); err != nil && err != unix.EINTR {
			return fmt.Errorf("guest agent port %s: poll: %w", path, err)
		}
		if fds[0].Revents&unix.POLLIN == 0 {
			if fds[0].Revents&unix.POLLHUP != 0 {
				p.Reset() // no host: forget a partial command
				time.Sleep(idle)
			}
			continue
		}
		n, err := unix.Read(fd, buf)
		if err != nil {
			if err == unix.EINTR || err == unix.EAGAIN {
				continue
			}
			logf("guest agent port %s: read: %v", path, err)
			time.Sleep(idle)
			continue
		}
		if n == 0 {
			p.Reset()
			time.Sleep(idle)
			continue
		}
		for _, b := range buf[:n] {
			obj := p.Feed(b)
			if obj == nil {
				continue
			}
			if r := h.Handle(obj); r != nil {
				if _, err := f.Write(r); err != nil {
					logf("guest agent port %s: write: %v", path, err)
				}
			}
		}
	}
}
