// Package replica runs one `ferry server` process as a replica of the
// highly available control plane: it registers the replica, campaigns for
// leadership, fences the store to the current term, runs the engine only
// while leading, forwards mutating API calls to the leader while following,
// and serves the cluster status (replicas, leader, etcd members).
package replica

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ferryvm/ferry/gen/ferry/v1/ferryv1connect"
	"github.com/ferryvm/ferry/internal/leader"
	"github.com/ferryvm/ferry/internal/store"
)

// Engine is what only the leader runs: the server's migration engine and
// reconcilers. RunEngine recovers in-flight work from the records and
// drives it until ctx ends (leadership lost or shutdown).
type Engine interface {
	RunEngine(ctx context.Context) error
}

// HandOverer is an Engine that hands its in-flight work over to the next
// leader before this replica resigns (while its fence still admits its
// writes); term is this replica's (its election key's create revision).
type HandOverer interface {
	HandOver(ctx context.Context, term int64)
}

// Config configures a Replica.
type Config struct {
	// Self is this replica's name and advertised API URL.
	Self leader.Info
	// Store is the replica's etcd store; its fence follows the term.
	Store *store.Etcd
	// Engine runs while this replica leads.
	Engine Engine
	// TTL is the election and registration lease TTL (default
	// leader.DefaultTTL).
	TTL time.Duration
	// LocalMember, when set, is the client URL of the etcd member embedded
	// in this process; while leading, the replica keeps etcd's raft
	// leadership on another member, so its own death costs no raft
	// election on top of the lease TTL.
	LocalMember string
	Log         *slog.Logger
}

// Replica is one control-plane replica.
type Replica struct {
	cfg     Config
	obs     *leader.Observer
	leading atomic.Bool

	mu   sync.Mutex
	term leader.Term
}

// New returns a Replica; Run starts it. Until it is elected, the store's
// fence is closed: the replica writes nothing but host heartbeats.
func New(cfg Config) (*Replica, error) {
	if cfg.Store == nil || cfg.Engine == nil {
		return nil, errors.New("replica: Store and Engine are required")
	}
	if cfg.TTL == 0 {
		cfg.TTL = leader.DefaultTTL
	}
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	if cfg.Self.Name == "" {
		return nil, errors.New("replica: Self.Name is required (--name)")
	}
	cfg.Store.CloseFence()
	return &Replica{cfg: cfg, obs: leader.NewObserver(cfg.Store.Client(), "")}, nil
}

// SetSelf sets the replica's advertised info (its URL is known once the API
// listeners are bound); call it before Run. The name must not change.
func (r *Replica) SetSelf(i leader.Info) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.cfg.Self.URL = i.URL
}

func (r *Replica) self() leader.Info {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.cfg.Self
}

// Leading reports whether this replica leads now.
func (r *Replica) Leading() bool { return r.leading.Load() }

// Leader returns who leads, as this replica last saw it.
func (r *Replica) Leader() (leader.Info, bool) {
	if r.leading.Load() {
		return r.self(), true
	}
	return r.obs.Leader()
}

// Handler wraps the replica's own API handler: mutating calls are forwarded
// to the leader while this replica follows, and the ClusterService is
// served.
func (r *Replica) Handler(api http.Handler) http.Handler {
	mux := http.NewServeMux()
	mux.Handle(ferryv1connect.NewClusterServiceHandler(&statusService{r: r}))
	mux.Handle("/", NewForwarder(r.cfg.Self.Name, r, api))
	return mux
}

// Run registers the replica, keeps its view of the leader current and
// campaigns until ctx ends; while elected it runs the engine with a context
// that ends with the term. On return leadership has been resigned.
func (r *Replica) Run(ctx context.Context) error {
	self := r.self()
	el, err := leader.New(r.cfg.Store.Client(), leader.Config{Self: self, TTL: r.cfg.TTL, Log: r.cfg.Log})
	if err != nil {
		return err
	}
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); r.obs.Run(ctx) }()
	go func() {
		defer wg.Done()
		leader.Register(ctx, r.cfg.Store.Client(), self, r.cfg.TTL, time.Second)
	}()
	err = el.Run(ctx, r.endTerm, r.lead)
	wg.Wait()
	if errors.Is(err, context.Canceled) {
		return nil
	}
	return err
}

func (r *Replica) lead(ctx context.Context, t leader.Term) {
	r.mu.Lock()
	r.term = t
	r.mu.Unlock()
	r.cfg.Store.SetFence(t.Fence)
	r.leading.Store(true)
	if r.cfg.LocalMember != "" {
		go r.shedRaftLeadership(ctx, r.cfg.LocalMember)
	}
	r.cfg.Log.Info("leading: starting the engine", "fence_rev", t.Fence.Rev)
	if err := r.cfg.Engine.RunEngine(ctx); err != nil && ctx.Err() == nil {
		r.cfg.Log.Error("engine stopped; resigning leadership", "err", err)
		return
	}
	r.cfg.Log.Info("engine stopped")
}

// HandOver asks the engine, while this replica still leads, to hand its
// in-flight migrations over (HandOverer), bounded by ctx: call it on a
// graceful stop before Run's context ends, so that the next leader finds
// each record handed over and adopts it. It reports whether this replica
// led and its engine handed over.
func (r *Replica) HandOver(ctx context.Context) bool {
	h, ok := r.cfg.Engine.(HandOverer)
	if !ok || !r.leading.Load() {
		return false
	}
	r.mu.Lock()
	t := r.term
	r.mu.Unlock()
	r.cfg.Log.Info("stopping: handing the migrations over before resigning", "fence_rev", t.Fence.Rev)
	h.HandOver(ctx, t.Fence.Rev)
	return true
}

// endTerm closes the fence before anything else, so the engine's next
// write fails even before its context is cancelled.
func (r *Replica) endTerm(t leader.Term) {
	r.cfg.Store.CloseFence()
	if r.leading.Swap(false) {
		r.cfg.Log.Warn("leadership ended: writes fenced off, engine cancelled", "fence_rev", t.Fence.Rev)
	}
}

// String names the replica for logs.
func (r *Replica) String() string {
	s := r.self()
	return fmt.Sprintf("replica %s (%s)", s.Name, s.URL)
}
