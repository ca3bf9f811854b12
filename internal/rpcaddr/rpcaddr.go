// Package rpcaddr turns Ferry's address strings into listeners and HTTP
// clients. An address is either host:port (TCP), http://host:port, or
// unix:///absolute/path (a unix socket, which also works across network
// namespaces because it lives in the file system).
package rpcaddr

import (
	"context"
	"crypto/tls"
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
	hostport := strings.TrimPrefix(strings.TrimPrefix(addr, "http://"), "https://")
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

// Client returns an HTTP client and the base URL to use with it for addr,
// with the credentials this process has for it (see credentialsFor): TLS
// and a token when it has them, plaintext otherwise. A credential that
// cannot be read makes every request fail with that error.
func Client(addr string) (*http.Client, string) {
	return clientFor(addr, true)
}

// FreshConnClient is Client with a new connection per request: a request
// to a server that just died then fails at the dial, before anything was
// sent, so a caller may safely try another address (internal/failover).
func FreshConnClient(addr string) (*http.Client, string) {
	return clientFor(addr, false)
}

func clientFor(addr string, keepAlive bool) (*http.Client, string) {
	c, err := credentialsFor(addr)
	if err != nil {
		return &http.Client{Transport: failing{err}}, "http://invalid"
	}
	return clientWith(addr, c, keepAlive)
}

// ClientWith is Client with explicit credentials (nil: plaintext).
func ClientWith(addr string, c *Credentials) (*http.Client, string) {
	return clientWith(addr, c, true)
}

func clientWith(addr string, c *Credentials, keepAlive bool) (*http.Client, string) {
	var tlsCfg *tls.Config
	if c != nil {
		tlsCfg = withPeerName(c.TLS, addr)
	}
	var tr *http.Transport
	var base string
	if path, ok := strings.CutPrefix(addr, unixPrefix); ok {
		dial := func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", path)
		}
		tr = &http.Transport{DialContext: dial, MaxIdleConnsPerHost: 8, IdleConnTimeout: 30 * time.Second}
		base = "http://unix"
		if tlsCfg != nil {
			tr.DialTLSContext = func(ctx context.Context, network, a string) (net.Conn, error) {
				raw, err := dial(ctx, network, a)
				if err != nil {
					return nil, err
				}
				tc := tls.Client(raw, tlsCfg.Clone())
				if err := tc.HandshakeContext(ctx); err != nil {
					raw.Close()
					return nil, fmt.Errorf("TLS with %s: %w", addr, err)
				}
				return tc, nil
			}
			base = "https://unix"
		}
	} else {
		base = addr
		if !strings.HasPrefix(base, "http://") && !strings.HasPrefix(base, "https://") {
			base = "http://" + base
		}
		tr = &http.Transport{
			DialContext:         (&net.Dialer{Timeout: 5 * time.Second}).DialContext,
			MaxIdleConnsPerHost: 8,
			IdleConnTimeout:     30 * time.Second,
		}
		if tlsCfg != nil {
			tr.TLSClientConfig = tlsCfg.Clone()
			base = "https://" + strings.TrimPrefix(strings.TrimPrefix(base, "http://"), "https://")
		}
	}
	tr.DisableKeepAlives = !keepAlive
	var rt http.RoundTripper = tr
	switch {
	case c == nil:
		rt = plain{addr: addr, next: tr}
	case c.Token != "":
		rt = bearer{token: c.Token, next: tr}
	}
	return &http.Client{Transport: rt}, strings.TrimSuffix(base, "/")
}

// failing is a transport whose every request fails with err.
type failing struct{ err error }

func (f failing) RoundTrip(*http.Request) (*http.Response, error) { return nil, f.err }

// ListenTLS is Listen serving TLS with cfg (nil: plaintext).
func ListenTLS(addr string, cfg *tls.Config) (net.Listener, error) {
	l, err := Listen(addr)
	if err != nil || cfg == nil {
		return l, err
	}
	return tls.NewListener(l, cfg), nil
}

// URLTLS is URL for a listener serving TLS: TCP addresses get https://.
func URLTLS(addr string, l net.Listener, tlsOn bool) string {
	u := URL(addr, l)
	if tlsOn {
		if rest, ok := strings.CutPrefix(u, "http://"); ok {
			return "https://" + rest
		}
	}
	return u
}
