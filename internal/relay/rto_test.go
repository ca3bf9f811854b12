package relay

import (
	"errors"
	"net"
	"testing"

	"golang.org/x/sys/unix"
)

func TestCapBackoff(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ln.Close() })
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	if err := capBackoff(c); err != nil {
		if errors.Is(err, unix.ENOPROTOOPT) || errors.Is(err, unix.EINVAL) {
			t.Skipf("this kernel has no TCP_RTO_MAX_MS: %v", err)
		}
		t.Fatal(err)
	}
	raw, err := c.(*net.TCPConn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var got int
	var gerr error
	if err := raw.Control(func(fd uintptr) {
		got, gerr = unix.GetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_RTO_MAX_MS)
	}); err != nil || gerr != nil {
		t.Fatal(err, gerr)
	}
	if got != retransmitCapMs {
		t.Errorf("TCP_RTO_MAX_MS = %d ms, want %d", got, retransmitCapMs)
	}
	// A Unix socket is left alone.
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	if err := capBackoff(a); err != nil {
		t.Errorf("capBackoff(pipe) = %v, want nil", err)
	}
}
