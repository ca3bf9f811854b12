// Package server is Ferry's control plane: it keeps hosts and VMs in the
// store (etcd), places VMs, drives agents, and serves the API (ConnectRPC:
// gRPC, gRPC-Web and JSON over HTTP from one handler), /metrics and /healthz.
package server

import (
	"context"
	"errors"
	"fmt"
	"github.com/ferryvm/ferry/internal/version"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"connectrpc.com/connect"
	"github.com/ferryvm/ferry/gen/ferry/v1/ferryv1connect"
	"github.com/ferryvm/ferry/internal/drain"
	"github.com/ferryvm/ferry/internal/migration/exec"
	"github.com/ferryvm/ferry/internal/rebalance"
	"github.com/ferryvm/ferry/internal/reserve"
	"github.com/ferryvm/ferry/internal/retention"
	"github.com/ferryvm/ferry/internal/rpcaddr"
	"github.com/ferryvm/ferry/internal/store"
	"github.com/prometheus/client_golang/prometheus"
)

// HostLeaseTTL is how long a host stays ready without a heartbeat.
const HostLeaseTTL = 10 * time.Second

// Config configures a Server.
type Config struct {
	Store store.Store
	Log   *slog.Logger
	// AgentCallTimeout bounds one call to an agent (VM start waits for QEMU).
	AgentCallTimeout time.Duration
	// Wrap, if set, wraps the API handler Serve serves (a replica forwards
	// mutating calls to the leader and adds the cluster status).
	Wrap func(http.Handler) http.Handler
	// Leading, if set, reports whether this replica leads; reconcilers
	// run only on the leader. Nil means always.
	Leading func() bool
	// Reservations holds capacity for in-flight creates and migrations;
	// nil means a table in the store's etcd (none if the store is not etcd).
	Reservations *reserve.Table
	// Retention bounds the finished migration records kept (zero fields
	// keep everything; ferry server defaults to DefaultKeepMigrations for
	// DefaultKeepMigrationsFor).
	Retention retention.Policy
	// EventRetention bounds the event history (zero: DefaultKeepEvents
	// events, none older than DefaultKeepEventsFor).
	EventRetention retention.Policy
	// Security, if set, serves TLS with the cluster PKI and authenticates
	// and authorizes every call (see security.go); nil serves plaintext
	// without checks (unit tests).
	Security *Security
	// Version is this server's version (default version.String()); tests
	// inject one to exercise the agent version check.
	Version string
}

// Server is the control plane.
type Server struct {
	version string
	store   store.Store
	log     *slog.Logger
	agents  *agentPool
	metrics *metrics
	timeout time.Duration
	replica replicaHooks   // see Config.Wrap and Config.Leading
	reserve *reserve.Table // capacity held for creates and migrations (nil: off)

	vmLocks sync.Map // VM name -> *sync.Mutex: one lifecycle operation per VM at a time

	engine *exec.Engine // drives migrations while RunEngine runs

	bw bandwidths // learned migration rate per host pair

	retention retention.Policy // finished migration records kept

	eventRetention retention.Policy // events kept
	eventsFrom     atomic.Int64     // revision the event recorder resumes from after a compaction gap (0: none)

	sec *Security // nil: plaintext, unauthenticated (unit tests)

	drain    *drain.Runner // host evacuations (nil: the store keeps no records)
	entering sync.Map      // host -> true while a health-driven evacuation is being entered

	sampler  *rebalance.Sampler // VMs' use from the heartbeats
	balancer *rebalance.Runner  // the load balancer (nil: the store keeps no state)

	adm admission // the policy's limits and bandwidth shares (admission.go)
	fix overheads // the learned fixed time of a migration (overhead.go)
}

// New returns a Server over cfg.Store.
func New(cfg Config) *Server {
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	if cfg.AgentCallTimeout == 0 {
		cfg.AgentCallTimeout = 2 * time.Minute
	}
	s := &Server{store: cfg.Store, log: cfg.Log, agents: newAgentPool(), timeout: cfg.AgentCallTimeout, retention: cfg.Retention}
	s.bw.log = cfg.Log
	s.eventRetention = cfg.EventRetention
	if s.eventRetention == (retention.Policy{}) {
		s.eventRetention = retention.Policy{Count: DefaultKeepEvents, Age: DefaultKeepEventsFor}
	}
	s.reserve = newReservations(cfg)
	s.engine = s.newEngine()
	s.drain = s.newDrain()
	s.sampler = rebalance.NewSampler()
	s.balancer = s.newBalancer()
	s.metrics = newMetrics(s)
	s.replica = replicaHooks{wrap: cfg.Wrap, leading: cfg.Leading}
	s.sec = cfg.Security
	s.version = cfg.Version
	if s.version == "" {
		s.version = version.String()
	}
	if s.sec != nil {
		s.sec.install()
	}
	return s
}

// Handler returns the HTTP handler serving the API, /metrics, /healthz and
// the web dashboard (/ui/).
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	opts := connect.WithHandlerOptions(connect.WithInterceptors(s.metrics.interceptor()), connect.WithReadMaxBytes(rpcaddr.MaxRequestBytes))
	mux.Handle(ferryv1connect.NewHostServiceHandler(&hostService{s}, opts))
	mux.Handle(ferryv1connect.NewVMServiceHandler(&vmService{s}, opts))
	mux.Handle(ferryv1connect.NewMigrationServiceHandler(&migrationService{s}, opts))
	mux.Handle(ferryv1connect.NewEventServiceHandler(&eventService{s}, opts))
	mux.Handle(ferryv1connect.NewFleetServiceHandler(&fleetService{s}, opts))
	if s.sec != nil {
		mux.Handle(ferryv1connect.NewAuthServiceHandler(&authService{s: s, sec: s.sec}, opts))
	}
	mux.Handle("/metrics", s.metricsHandler())
	mux.HandleFunc("/healthz", s.healthz)
	dash := s.dashboardHandler()
	mux.Handle("/ui/", dash)
	mux.Handle("/ui", dash)
	return mux
}

func (s *Server) healthz(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), 3*time.Second)
	defer cancel()
	if _, err := s.store.ListHosts(ctx); err != nil {
		http.Error(w, "store: "+err.Error(), http.StatusServiceUnavailable)
		return
	}
	fmt.Fprintln(w, "ok")
}

// Serve serves the API on every address in addrs until ctx ends. ready, if
// not nil, receives the URLs actually bound.
func (s *Server) Serve(ctx context.Context, addrs []string, ready func([]string)) error {
	var ls []net.Listener
	var urls []string
	for _, a := range addrs {
		l, err := rpcaddr.ListenTLS(a, s.sec.tlsConfig())
		if err != nil {
			for _, o := range ls {
				o.Close()
			}
			return err
		}
		ls = append(ls, l)
		urls = append(urls, rpcaddr.URLTLS(a, l, s.sec != nil))
	}
	hs := rpcaddr.NewHTTPServer(s.sec.middleware(s.replica.handler(s.Handler())))
	errc := make(chan error, len(ls))
	for _, l := range ls {
		go func() { errc <- hs.Serve(l) }()
	}
	if ready != nil {
		ready(urls)
	}
	s.log.Info("server listening", "urls", urls)
	select {
	case <-ctx.Done():
	case err := <-errc:
		if !errors.Is(err, http.ErrServerClosed) {
			hs.Close()
			return fmt.Errorf("serve: %w", err)
		}
	}
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return hs.Shutdown(sctx)
}

// lockVM serialises lifecycle operations on one VM.
func (s *Server) lockVM(name string) func() {
	m, _ := s.vmLocks.LoadOrStore(name, &sync.Mutex{})
	mu := m.(*sync.Mutex)
	mu.Lock()
	return mu.Unlock
}

// connectError maps store and domain errors to Connect codes.
func connectError(err error) error {
	var ce *connect.Error
	switch {
	case err == nil:
		return nil
	case errors.As(err, &ce):
		return err
	case errors.Is(err, store.ErrNotFound):
		return connect.NewError(connect.CodeNotFound, err)
	case errors.Is(err, store.ErrExists):
		return connect.NewError(connect.CodeAlreadyExists, err)
	case errors.Is(err, store.ErrConflict):
		return connect.NewError(connect.CodeAborted, err)
	case errors.Is(err, store.ErrNotLeader):
		return connect.NewError(connect.CodeUnavailable, err)
	case errors.Is(err, context.DeadlineExceeded):
		return connect.NewError(connect.CodeDeadlineExceeded, err)
	}
	return connect.NewError(connect.CodeInternal, err)
}

// newMetricsRegistry is split out so tests can build a Server cheaply.
func newMetricsRegistry() *prometheus.Registry { return prometheus.NewRegistry() }
