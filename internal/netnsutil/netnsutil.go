package netnsutil

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os/exec"
	"runtime"
	"strings"
	"time"

	"github.com/vishvananda/netns"
)

// Do runs fn on the calling goroutine's OS thread switched into the named
// network namespace, then switches the thread back. The thread is locked
// for the duration, so fn must not expect goroutines it starts to be in the
// namespace. If switching back fails, the thread stays locked and the Go
// runtime discards it when the goroutine exits; Do reports that error.
// Calls may nest: the inner Do returns to the outer namespace.
func Do(nsName string, fn func() error) (err error) {
	target, err := netns.GetFromName(nsName)
	if err != nil {
		return fmt.Errorf("open network namespace %q at %s: %w (create it with `ip netns add %s`)",
			nsName, Path(nsName), err, nsName)
	}
	defer target.Close()

	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("open the current thread's network namespace: %w", err)
	}
	defer orig.Close()
	if err := netns.Set(target); err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("enter network namespace %q: %w (needs CAP_SYS_ADMIN: run as root)", nsName, err)
	}
	defer func() {
		if serr := netns.Set(orig); serr != nil {
			// Leave the thread locked: when this goroutine exits the
			// runtime terminates the thread instead of reusing it.
			if err == nil {
				err = fmt.Errorf("switch back from network namespace %q: %w (thread discarded)", nsName, serr)
			}
			return
		}
		runtime.UnlockOSThread()
	}()
	return fn()
}

// checkAddr refuses host names for IP networks: resolving them would send
// DNS queries from other threads, outside the namespace.
func checkAddr(nsName, network, addr string) error {
	if !strings.HasPrefix(network, "tcp") && !strings.HasPrefix(network, "udp") && !strings.HasPrefix(network, "ip") {
		return nil
	}
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("address %q for namespace %q: %w", addr, nsName, err)
	}
	if host == "" {
		return nil // wildcard, only meaningful for Listen
	}
	if i := strings.IndexByte(host, '%'); i >= 0 {
		host = host[:i]
	}
	if net.ParseIP(host) == nil {
		return fmt.Errorf("address %q for namespace %q: host must be an IP literal (name resolution would run outside the namespace)", addr, nsName)
	}
	return nil
}

// Dial connects to addr from inside the named namespace.
func Dial(nsName, network, addr string) (net.Conn, error) {
	return DialContext(context.Background(), nsName, network, addr)
}

// DialContext connects to addr from a socket created inside the named
// namespace. For tcp and udp networks the host must be an IP literal. The
// connection keeps its namespace and may be used from any goroutine.
func DialContext(ctx context.Context, nsName, network, addr string) (net.Conn, error) {
	if err := checkAddr(nsName, network, addr); err != nil {
		return nil, err
	}
	var conn net.Conn
	err := Do(nsName, func() error {
		var d net.Dialer
		c, err := d.DialContext(ctx, network, addr)
		if err != nil {
			return err
		}
		conn = c
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("dial %s %s from network namespace %q: %w", network, addr, nsName, err)
	}
	return conn, nil
}

// Listen opens a stream listener inside the named namespace, for example
// Listen("ferry-h2", "tcp", "198.18.0.2:0").
func Listen(nsName, network, addr string) (net.Listener, error) {
	if err := checkAddr(nsName, network, addr); err != nil {
		return nil, err
	}
	var l net.Listener
	err := Do(nsName, func() error {
		var err error
		l, err = net.Listen(network, addr)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("listen on %s %s in network namespace %q: %w", network, addr, nsName, err)
	}
	return l, nil
}

// ListenPacket opens a packet socket (udp, unixgram) inside the named
// namespace.
func ListenPacket(nsName, network, addr string) (net.PacketConn, error) {
	if err := checkAddr(nsName, network, addr); err != nil {
		return nil, err
	}
	var pc net.PacketConn
	err := Do(nsName, func() error {
		var err error
		pc, err = net.ListenPacket(network, addr)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("listen on %s %s in network namespace %q: %w", network, addr, nsName, err)
	}
	return pc, nil
}

// HTTPClient returns an HTTP client whose connections are dialled inside
// the named namespace. It ignores proxy environment variables, and URLs
// must use IP literals as hosts.
func HTTPClient(nsName string) *http.Client {
	return &http.Client{
		Transport: &http.Transport{
			Proxy: nil,
			DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
				return DialContext(ctx, nsName, network, addr)
			},
			MaxIdleConns:          16,
			IdleConnTimeout:       30 * time.Second,
			TLSHandshakeTimeout:   10 * time.Second,
			ExpectContinueTimeout: time.Second,
		},
	}
}

// Command returns a command that runs name with args inside the named
// namespace, as `ip netns exec NS name args...` (an argv, never a shell
// string). `ip netns exec` also remounts /sys so that /sys/class/net shows
// the namespace's links. The PID stays the same across the exec.
func Command(nsName string, name string, args ...string) *exec.Cmd {
	return exec.Command("ip", append([]string{"netns", "exec", nsName, name}, args...)...)
}

// CommandContext is Command with a context that kills the process when done.
func CommandContext(ctx context.Context, nsName string, name string, args ...string) *exec.Cmd {
	return exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", nsName, name}, args...)...)
}
