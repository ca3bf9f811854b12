package qemusock

import (
	"errors"
	"net"
	"net/netip"
	"os"
	"testing"

	"golang.org/x/sys/unix"
)

// noDelay reads TCP_NODELAY of c.
func noDelay(t *testing.T, c *net.TCPConn) int {
	t.Helper()
	raw, err := c.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var v int
	var gerr error
	if err := raw.Control(func(fd uintptr) { v, gerr = unix.GetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_NODELAY) }); err != nil {
		t.Fatal(err)
	}
	if gerr != nil {
		t.Fatal(gerr)
	}
	return v
}

// pair is a connected loopback TCP pair with Nagle on at both ends (Go
// turns it off by default), as QEMU leaves its migration channels.
func pair(t *testing.T) (l net.Listener, client, server *net.TCPConn) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	c, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	s, err := l.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	client, server = c.(*net.TCPConn), s.(*net.TCPConn)
	for _, x := range []*net.TCPConn{client, server} {
		if err := x.SetNoDelay(false); err != nil {
			t.Fatal(err)
		}
		if noDelay(t, x) != 0 {
			t.Fatal("TCP_NODELAY still on after SetNoDelay(false)")
		}
	}
	return l, client, server
}

func TestApplySetsMatchingSocketsOnly(t *testing.T) {
	l, c, s := pair(t)
	_, oc, os2 := pair(t) // another stream, not matched
	ep := netip.MustParseAddrPort(l.Addr().String())
	set := NewSetter(os.Getpid(), Endpoint(ep))
	n, err := set.Apply()
	if err != nil {
		t.Fatalf("Apply: %v", err)
	}
	if n != 2 {
		t.Fatalf("Apply changed %d sockets, want 2 (both ends of the matched stream)", n)
	}
	if noDelay(t, c) == 0 || noDelay(t, s) == 0 {
		t.Fatal("the matched stream still has Nagle on")
	}
	if noDelay(t, oc) != 0 || noDelay(t, os2) != 0 {
		t.Fatal("a stream that did not match was changed")
	}
	// Seen sockets are not counted again; one turned back on is not
	// looked at again either (QEMU does not turn it back on).
	if n, err := set.Apply(); err != nil || n != 0 {
		t.Fatalf("second Apply = %d, %v; want 0, nil", n, err)
	}
}

func TestHostMatchesEveryPort(t *testing.T) {
	_, c, s := pair(t)
	_, c2, s2 := pair(t)
	n, err := NewSetter(os.Getpid(), Host(netip.MustParseAddr("127.0.0.1"))).Apply()
	if err != nil || n != 4 {
		t.Fatalf("Apply = %d, %v; want 4, nil", n, err)
	}
	for _, x := range []*net.TCPConn{c, s, c2, s2} {
		if noDelay(t, x) == 0 {
			t.Fatal("a stream to the host still has Nagle on")
		}
	}
	if n, err := NewSetter(os.Getpid(), Host(netip.MustParseAddr("127.0.0.2"))).Apply(); err != nil || n != 0 {
		t.Fatalf("Apply for another host = %d, %v; want 0, nil", n, err)
	}
}

func TestApplyGoneProcess(t *testing.T) {
	// A pid far above pid_max is never a process.
	_, err := NewSetter(1<<30, Host(netip.MustParseAddr("127.0.0.1"))).Apply()
	if !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("Apply on a missing process = %v, want an error matching os.ErrNotExist", err)
	}
}
