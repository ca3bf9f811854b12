package qemusock

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// Match selects sockets by their local and remote addresses.
type Match func(local, remote netip.AddrPort) bool

// Endpoint matches a connected socket whose local or remote address is
// addr: both ends of a migration stream to or from a QEMU listening on it.
func Endpoint(addr netip.AddrPort) Match {
	addr = netip.AddrPortFrom(addr.Addr().Unmap(), addr.Port())
	return func(local, remote netip.AddrPort) bool { return local == addr || remote == addr }
}

// Host matches a connected socket whose local or remote IP is ip: every
// stream to or from a host's migration address, whatever the port (a
// post-copy recovery listens on a new one).
func Host(ip netip.Addr) Match {
	ip = ip.Unmap()
	return func(local, remote netip.AddrPort) bool { return local.Addr() == ip || remote.Addr() == ip }
}

// ErrUnsupported means the kernel cannot copy another process's
// descriptor (pidfd_getfd needs Linux 5.6).
var ErrUnsupported = errors.New("pidfd_getfd is not supported by this kernel (Linux 5.6 or later)")

// Setter sets TCP_NODELAY on a process's matching TCP sockets and
// remembers the ones it has seen, so that calling it again costs one
// directory read plus the new sockets. It is not safe for concurrent use.
type Setter struct {
	pid   int
	match Match
	seen  map[string]bool // "fd/socket:[inode]"
}

// NewSetter returns a Setter for process pid.
func NewSetter(pid int, m Match) *Setter {
	return &Setter{pid: pid, match: m, seen: map[string]bool{}}
}

// Apply sets TCP_NODELAY on every matching connected TCP socket of the
// process it has not seen yet and returns how many it changed (those that
// had it on already are not counted). A descriptor that closed meanwhile
// is skipped; the process's exit is an error wrapping os.ErrNotExist.
func (s *Setter) Apply() (changed int, err error) {
	dir := "/proc/" + strconv.Itoa(s.pid) + "/fd"
	ents, err := os.ReadDir(dir)
	if err != nil {
		return 0, fmt.Errorf("list the descriptors of pid %d: %w", s.pid, err)
	}
	var pidfd = -1
	defer func() {
		if pidfd >= 0 {
			unix.Close(pidfd)
		}
	}()
	var errs []error
	for _, e := range ents {
		link, err := os.Readlink(dir + "/" + e.Name())
		if err != nil || !strings.HasPrefix(link, "socket:") {
			continue // closed meanwhile, or not a socket
		}
		key := e.Name() + "/" + link
		if s.seen[key] {
			continue
		}
		fd, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if pidfd < 0 {
			if pidfd, err = unix.PidfdOpen(s.pid, 0); err != nil {
				if errors.Is(err, unix.ENOSYS) {
					return changed, ErrUnsupported
				}
				return changed, fmt.Errorf("pidfd_open %d: %w", s.pid, err)
			}
		}
		c, done, err := s.one(pidfd, fd)
		if done {
			s.seen[key] = true
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("pid %d fd %d: %w", s.pid, fd, err))
		}
		if c {
			changed++
		}
	}
	return changed, errors.Join(errs...)
}

// one handles descriptor fd of the process: it reports whether it turned
// TCP_NODELAY on, and whether the descriptor needs no further look (done:
// not a connected TCP socket, not matched, or set). An unconnected socket
// is looked at again (QEMU may connect it later).
func (s *Setter) one(pidfd, fd int) (changed, done bool, err error) {
	dup, err := unix.PidfdGetfd(pidfd, fd, 0)
	if err != nil {
		switch {
		case errors.Is(err, unix.ENOSYS):
			return false, false, ErrUnsupported
		case errors.Is(err, unix.EBADF):
			return false, true, nil // closed since the directory was read
		}
		return false, false, fmt.Errorf("pidfd_getfd: %w", err)
	}
	defer unix.Close(dup)
	if t, err := unix.GetsockoptInt(dup, unix.SOL_SOCKET, unix.SO_TYPE); err != nil || t != unix.SOCK_STREAM {
		return false, true, nil
	}
	if d, err := unix.GetsockoptInt(dup, unix.SOL_SOCKET, unix.SO_DOMAIN); err != nil || (d != unix.AF_INET && d != unix.AF_INET6) {
		return false, true, nil
	}
	rsa, err := unix.Getpeername(dup)
	if err != nil {
		return false, false, nil // listening, or not connected yet
	}
	lsa, err := unix.Getsockname(dup)
	if err != nil {
		return false, false, fmt.Errorf("getsockname: %w", err)
	}
	local, lok := addrPort(lsa)
	remote, rok := addrPort(rsa)
	if !lok || !rok || !s.match(local, remote) {
		return false, true, nil
	}
	on, err := unix.GetsockoptInt(dup, unix.IPPROTO_TCP, unix.TCP_NODELAY)
	if err != nil {
		return false, false, fmt.Errorf("get TCP_NODELAY: %w", err)
	}
	if on != 0 {
		return false, true, nil
	}
	if err := unix.SetsockoptInt(dup, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1); err != nil {
		return false, false, fmt.Errorf("set TCP_NODELAY on %s→%s: %w", local, remote, err)
	}
	return true, true, nil
}

// addrPort converts an IPv4 or IPv6 socket address.
func addrPort(sa unix.Sockaddr) (netip.AddrPort, bool) {
	switch a := sa.(type) {
	case *unix.SockaddrInet4:
		return netip.AddrPortFrom(netip.AddrFrom4(a.Addr), uint16(a.Port)), true
	case *unix.SockaddrInet6:
		return netip.AddrPortFrom(netip.AddrFrom16(a.Addr).Unmap(), uint16(a.Port)), true
	}
	return netip.AddrPort{}, false
}
