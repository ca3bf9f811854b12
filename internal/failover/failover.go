// Package failover gives clients of Ferry's control plane one HTTP client
// over several server addresses (`--server a,b,c`): a request goes to the
// address that answered last, and when it cannot connect there it is
// retried on the next address, in order. Only connection failures fail
// over — a request that reached a server is never sent twice; with several
// addresses each request uses a new connection, so a dead server is seen at
// the dial.
package failover

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"syscall"

	"github.com/ferryvm/ferry/internal/rpcaddr"
)

// Base is the base URL to use with a client from Client: its host is
// replaced by the chosen address on each request.
const Base = "http://ferry-control-plane"

// maxBody bounds the request body kept in memory to replay on another
// address.
const maxBody = 32 << 20

// Split parses a comma-separated address list, dropping blanks.
func Split(addrs string) []string {
	var out []string
	for _, a := range strings.Split(addrs, ",") {
		if a = strings.TrimSpace(a); a != "" {
			out = append(out, a)
		}
	}
	return out
}

type target struct {
	addr string
	base string // scheme://host[/path] of rpcaddr.Client
	rt   http.RoundTripper
}

// Transport sends each request to one of several addresses.
type Transport struct {
	targets []target
	current atomic.Int32 // index of the address that answered last
}

// NewTransport returns a Transport over addrs (each host:port, http://...
// or unix:///path); it fails when the list is empty.
func NewTransport(addrs []string) (*Transport, error) {
	if len(addrs) == 0 {
		return nil, errors.New("--server: no address given (host:port or unix:///path, comma-separated)")
	}
	t := &Transport{}
	for _, a := range addrs {
		hc, base := rpcaddr.Client(a)
		if len(addrs) > 1 {
			// A request on a kept-alive connection to a server that just
			// died fails after it may have been sent, which cannot be
			// failed over safely; a fresh connection per request fails at
			// the dial instead.
			hc, base = rpcaddr.FreshConnClient(a)
		}
		t.targets = append(t.targets, target{addr: a, base: base, rt: hc.Transport})
	}
	return t, nil
}

// Client returns an HTTP client over the comma-separated addresses and the
// base URL to build requests on (Base). A single address behaves like
// rpcaddr.Client. An empty list yields a client whose requests fail with a
// clear error.
func Client(addrs string) (*http.Client, string) {
	t, err := NewTransport(Split(addrs))
	if err != nil {
		return &http.Client{Transport: errTransport{err}}, Base
	}
	return &http.Client{Transport: t}, Base
}

type errTransport struct{ err error }

func (e errTransport) RoundTrip(*http.Request) (*http.Response, error) { return nil, e.err }

// Current returns the address requests go to first.
func (t *Transport) Current() string { return t.targets[t.current.Load()].addr }

// CloseIdleConnections closes the idle connections to every address.
func (t *Transport) CloseIdleConnections() {
	for _, tg := range t.targets {
		if c, ok := tg.rt.(interface{ CloseIdleConnections() }); ok {
			c.CloseIdleConnections()
		}
	}
}

// RoundTrip implements http.RoundTripper.
func (t *Transport) RoundTrip(req *http.Request) (*http.Response, error) {
	getBody, err := replayable(req)
	if err != nil {
		return nil, err
	}
	start := int(t.current.Load())
	var errs []error
	for i := range t.targets {
		idx := (start + i) % len(t.targets)
		tg := t.targets[idx]
		out, err := rewrite(req, tg, getBody)
		if err != nil {
			return nil, err
		}
		resp, err := tg.rt.RoundTrip(out)
		if err == nil {
			t.current.Store(int32(idx))
			return resp, nil
		}
		if !IsConnectError(err) || req.Context().Err() != nil {
			return nil, err
		}
		errs = append(errs, fmt.Errorf("%s: %w", tg.addr, err))
	}
	return nil, fmt.Errorf("no control-plane address answered: %w", errors.Join(errs...))
}

// replayable returns a function giving a fresh copy of req's body.
func replayable(req *http.Request) (func() (io.ReadCloser, error), error) {
	if req.Body == nil || req.Body == http.NoBody {
		return func() (io.ReadCloser, error) { return http.NoBody, nil }, nil
	}
	if req.GetBody != nil {
		return req.GetBody, nil
	}
	b, err := io.ReadAll(io.LimitReader(req.Body, maxBody+1))
	req.Body.Close()
	if err != nil {
		return nil, fmt.Errorf("read request body: %w", err)
	}
	if len(b) > maxBody {
		return nil, fmt.Errorf("request body larger than %d bytes", maxBody)
	}
	return func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(b)), nil }, nil
}

func rewrite(req *http.Request, tg target, getBody func() (io.ReadCloser, error)) (*http.Request, error) {
	out := req.Clone(req.Context())
	body, err := getBody()
	if err != nil {
		return nil, fmt.Errorf("replay request body: %w", err)
	}
	out.Body, out.GetBody = body, getBody
	u := *req.URL
	base, err := http.NewRequest(http.MethodGet, tg.base, nil)
	if err != nil {
		return nil, fmt.Errorf("server address %q: %w", tg.addr, err)
	}
	u.Scheme, u.Host = base.URL.Scheme, base.URL.Host
	u.Path = strings.TrimSuffix(base.URL.Path, "/") + req.URL.Path
	u.RawPath = ""
	out.URL, out.Host = &u, ""
	return out, nil
}

// IsConnectError reports whether err means the request never reached a
// server: the connection could not be made (refused, no such socket,
// unreachable, dial timeout).
func IsConnectError(err error) bool {
	var op *net.OpError
	if errors.As(err, &op) && op.Op == "dial" {
		return true
	}
	for _, e := range []error{syscall.ECONNREFUSED, syscall.ENOENT, syscall.EHOSTUNREACH, syscall.ENETUNREACH} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}
