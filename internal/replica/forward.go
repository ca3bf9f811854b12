package replica

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"

	"connectrpc.com/connect"
	"github.com/ferryvm/ferry/gen/ferry/v1/ferryv1connect"
	"github.com/ferryvm/ferry/internal/failover"
	"github.com/ferryvm/ferry/internal/leader"
	"github.com/ferryvm/ferry/internal/rpcaddr"
)

// ForwardedHeader marks a request one replica forwarded to the leader; a
// replica that receives it while not leading refuses instead of forwarding
// again (no loops between replicas with stale views).
const ForwardedHeader = "Ferry-Forwarded-By"

// route says how a procedure is served by a replica that is not the leader.
type route int

const (
	// local: served by any replica (reads from etcd).
	local route = iota
	// toLeader: forwarded to the leader; refused when there is none.
	toLeader
	// toLeaderOrLocal: forwarded to the leader; served locally when there
	// is none or it cannot be reached (heartbeats keep hosts alive,
	// GetMigration answers from the record).
	toLeaderOrLocal
)

// routes lists every procedure that is not served locally everywhere.
var routes = map[string]route{
	ferryv1connect.VMServiceCreateVMProcedure:               toLeader,
	ferryv1connect.VMServiceStartVMProcedure:                toLeader,
	ferryv1connect.VMServiceStopVMProcedure:                 toLeader,
	ferryv1connect.VMServiceDeleteVMProcedure:               toLeader,
	ferryv1connect.MigrationServiceMigrateProcedure:         toLeader,
	ferryv1connect.MigrationServiceCancelMigrationProcedure: toLeader,
	ferryv1connect.MigrationServiceGetMigrationProcedure:    toLeaderOrLocal,
	ferryv1connect.HostServiceHeartbeatProcedure:            toLeaderOrLocal,
	ferryv1connect.FleetServiceEnterMaintenanceProcedure:    toLeader,
	ferryv1connect.FleetServiceExitMaintenanceProcedure:     toLeader,
	ferryv1connect.FleetServiceCancelEvacuationProcedure:    toLeader,
	ferryv1connect.FleetServiceSetPoliciesProcedure:         toLeader,
	ferryv1connect.FleetServiceBalanceProcedure:             toLeader,
	ferryv1connect.FleetServiceListRecommendationsProcedure: toLeaderOrLocal,
}

// LeaderView tells the forwarder who leads.
type LeaderView interface {
	// Leading reports whether this replica leads now.
	Leading() bool
	// Leader returns the current leader; ok is false when none leads.
	Leader() (leader.Info, bool)
}

// Forwarder is the HTTP middleware that sends mutating API calls from a
// follower to the leader.
type Forwarder struct {
	self string
	view LeaderView
	next http.Handler

	mu      sync.Mutex
	clients map[string]*http.Client // leader URL -> client
	bases   map[string]string
}

// NewForwarder wraps next (the replica's own API handler). self is this
// replica's name.
func NewForwarder(self string, view LeaderView, next http.Handler) *Forwarder {
	return &Forwarder{self: self, view: view, next: next, clients: map[string]*http.Client{}, bases: map[string]string{}}
}

var errWriter = connect.NewErrorWriter()

func unavailable(w http.ResponseWriter, r *http.Request, format string, args ...any) {
	_ = errWriter.Write(w, r, connect.NewError(connect.CodeUnavailable, fmt.Errorf(format, args...)))
}

// ServeHTTP implements http.Handler.
func (f *Forwarder) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	rt, ok := routes[r.URL.Path]
	if !ok {
		f.next.ServeHTTP(w, r)
		return
	}
	if f.view.Leading() {
		f.next.ServeHTTP(w, r)
		return
	}
	l, ok := f.view.Leader()
	if ok && l.Name == f.self {
		// Our own name but we do not lead: the key of this replica's
		// previous incarnation, until its lease expires.
		ok = false
	}
	switch {
	case r.Header.Get(ForwardedHeader) != "":
		// Forwarded to us, but we do not lead (any more): the sender's
		// view is stale. Do not bounce it on.
		if rt == toLeaderOrLocal {
			f.next.ServeHTTP(w, r)
			return
		}
		unavailable(w, r, "replica %s received a request forwarded by %s but is not the leader (leadership is changing): retry", f.self, r.Header.Get(ForwardedHeader))
		return
	case !ok:
		if rt == toLeaderOrLocal {
			f.next.ServeHTTP(w, r)
			return
		}
		unavailable(w, r, "no leader elected yet: replica %s cannot %s now (the control plane is electing a leader; retry in a few seconds)", f.self, procedureName(r.URL.Path))
		return
	}
	body, err := io.ReadAll(io.LimitReader(r.Body, 32<<20))
	r.Body.Close()
	if err != nil {
		unavailable(w, r, "read request: %v", err)
		return
	}
	resp, err := f.send(r, l, body)
	if err != nil {
		if rt == toLeaderOrLocal {
			r.Body = io.NopCloser(bytes.NewReader(body))
			f.next.ServeHTTP(w, r)
			return
		}
		if failover.IsConnectError(err) {
			unavailable(w, r, "leader %s (%s) is unreachable: %v (a new leader is being elected; retry)", l.Name, l.URL, err)
			return
		}
		unavailable(w, r, "forward to leader %s (%s): %v", l.Name, l.URL, err)
		return
	}
	defer resp.Body.Close()
	for k, vs := range resp.Header {
		for _, v := range vs {
			w.Header().Add(k, v)
		}
	}
	w.WriteHeader(resp.StatusCode)
	copyFlushing(w, resp.Body)
	for k, vs := range resp.Trailer {
		for _, v := range vs {
			w.Header().Add(http.TrailerPrefix+k, v)
		}
	}
}

func (f *Forwarder) send(r *http.Request, l leader.Info, body []byte) (*http.Response, error) {
	hc, base := f.client(l.URL)
	out, err := http.NewRequestWithContext(r.Context(), r.Method, base+r.URL.RequestURI(), bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	out.Header = r.Header.Clone()
	out.Header.Set(ForwardedHeader, f.self)
	out.ContentLength = int64(len(body))
	return hc.Transport.RoundTrip(out)
}

func (f *Forwarder) client(url string) (*http.Client, string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if c, ok := f.clients[url]; ok {
		return c, f.bases[url]
	}
	c, base := rpcaddr.Client(url)
	f.clients[url], f.bases[url] = c, base
	return c, base
}

func copyFlushing(w http.ResponseWriter, r io.Reader) {
	fl, _ := w.(http.Flusher)
	buf := make([]byte, 32<<10)
	for {
		n, err := r.Read(buf)
		if n > 0 {
			if _, werr := w.Write(buf[:n]); werr != nil {
				return
			}
			if fl != nil {
				fl.Flush()
			}
		}
		if err != nil {
			if !errors.Is(err, io.EOF) {
				return
			}
			return
		}
	}
}

// procedureName turns /ferry.v1.VMService/CreateVM into "CreateVM".
func procedureName(path string) string {
	if i := strings.LastIndexByte(path, '/'); i >= 0 {
		return path[i+1:]
	}
	return path
}
