// Package rpcaddr turns Ferry's address strings into listeners and HTTP
// clients. An address is either host:port (TCP), http://host:port, or
// unix:///absolute/path (a unix socket, which also works across network
// namespaces because it lives in the file system).
package rpcaddr

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"
)

const unixPrefix = "unix://"

// Listen opens a listener for addr. For a unix socket a stale socket file is
// removed first and the parent directory is created.
func Listen(addr string) (net.Listener, error) {
	if path, ok := strings.CutPrefix(addr, unixPrefix); ok {
		if !filepath.IsAbs(path) {
			return nil, fmt.Errorf("listen %q: unix socket path must be absolute (unix:///path/to.sock)", addr)
		}
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			return nil, fmt.Errorf("listen %q: %w", addr, err)
		}
		if err := os.Remove(path); err != nil && !os.IsNotExist(err) {
			return nil, fmt.Errorf("listen %q: remove stale socket: %w", addr, err)
		}
		l, err := net.Listen("unix", path)
		if err != nil {
			return nil, fmt.Errorf("listen %q: %w", addr, err)
		}
		return l, nil
	}
	hostport := strings.TrimPrefix(addr, "http://")
	l, err := net.Listen("tcp", hostport)
	if err != nil {
		return nil, fmt.Errorf("listen %q: %w", addr, err)
	}
	return l, nil
}

// URL returns the address other processes use to reach a listener opened
// with Listen(addr): unix addresses stay as they are, TCP addresses get an
// http:// scheme and the port actually bound (for ":0").
func URL(addr string, l net.Listener) string {
	if strings.HasPrefix(addr, unixPrefix) {
		return addr
	}
	return "http://" + l.Addr().String()
}

// Client returns an HTTP client and the base URL to use with it for addr.
func Client(addr string) (*http.Client, string) {
	if path, ok := strings.CutPrefix(addr, unixPrefix); ok {
		tr := &http.Transport{
			DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
				var d net.Dialer
				return d.DialContext(ctx, "unix", path)
			},
			MaxIdleConnsPerHost: 8,
			IdleConnTimeout:     30 * time.Second,
		}
		return &http.Client{Transport: tr}, "http://unix"
	}
	base := addr
	if !strings.HasPrefix(base, "http://") && !strings.HasPrefix(base, "https://") {
		base = "http://" + base
	}
	tr := &http.Transport{
		DialContext:         (&net.Dialer{Timeout: 5 * time.Second}).DialContext,
		MaxIdleConnsPerHost: 8,
		IdleConnTimeout:     30 * time.Second,
	}
	return &http.Client{Transport: tr}, strings.TrimSuffix(base, "/")
}
