// Package leader elects one leader among Ferry's server replicas through an
// etcd election bound to a lease, hands the leader a Term whose fence the
// store puts in every control-plane write, and lets every replica (and
// `ferry server status`) ask who leads and which replicas are up.
//
// A term ends when the replica resigns, when its lease expires or is lost
// (the process died, was cut off from etcd, or its keepalives stopped), or
// when its election key is deleted. The moment a term ends its context is
// cancelled; writes carrying its fence fail in etcd itself even if the
// replica has not noticed yet, so a deposed leader can change nothing.
package leader

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/ferryvm/ferry/internal/store"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"
)

// DefaultPrefix is the election's name: candidates' keys are
// DefaultPrefix + "/" + lease, and the leader's is the oldest of them.
const DefaultPrefix = "/ferry/leader"

// DefaultTTL is the lease TTL of a replica's session: a dead leader is
// replaced within about this long, plus an etcd leader election when the
// dead replica also held etcd's raft leadership (etcd then extends leases).
const DefaultTTL = 4 * time.Second

// ErrNoLeader means no replica leads at the moment (between terms, or no
// replica runs).
var ErrNoLeader = errors.New("no leader elected")

// Info is what a replica announces: its name and the API URL other replicas
// forward requests to.
type Info struct {
	Name string `json:"name"`
	URL  string `json:"url"`
}

func (i Info) encode() string {
	b, _ := json.Marshal(i)
	return string(b)
}

func decodeInfo(b []byte) (Info, error) {
	var i Info
	if err := json.Unmarshal(b, &i); err != nil {
		return i, fmt.Errorf("decode leader value %q: %w", b, err)
	}
	return i, nil
}

// Config configures an Elector.
type Config struct {
	// Self is this replica's name and API URL.
	Self Info
	// Prefix is the election's name (default DefaultPrefix), without a
	// trailing slash.
	Prefix string
	// TTL is the session lease's TTL, rounded to whole seconds (default
	// DefaultTTL, at least 1s).
	TTL time.Duration
	// RetryDelay is the pause after a failed campaign or a lost session
	// before campaigning again (default 1s).
	RetryDelay time.Duration
	Log        *slog.Logger
}

// Term is one leadership term of this replica.
type Term struct {
	// Fence is the term's election key and its create revision.
	Fence store.Fence
	// Elected is when this replica won the campaign.
	Elected time.Time
}

// Elector campaigns for leadership on behalf of one replica.
type Elector struct {
	c   *clientv3.Client
	cfg Config
}

// New returns an Elector using client c.
func New(c *clientv3.Client, cfg Config) (*Elector, error) {
	if cfg.Self.Name == "" {
		return nil, errors.New("leader: Self.Name is required (the replica's name, --name)")
	}
	if cfg.Prefix == "" {
		cfg.Prefix = DefaultPrefix
	}
	if cfg.TTL == 0 {
		cfg.TTL = DefaultTTL
	}
	if cfg.TTL < time.Second {
		cfg.TTL = time.Second
	}
	if cfg.RetryDelay == 0 {
		cfg.RetryDelay = time.Second
	}
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	return &Elector{c: c, cfg: cfg}, nil
}

// Run campaigns until ctx ends. Each time this replica is elected it calls
// lead with a context that is cancelled the moment the term ends (lease
// lost, key deleted, or ctx done) and waits for lead to return; then it
// resigns if it still leads, and campaigns again. onEnd, if not nil, is
// called first thing when a term ends — before the term's context is
// cancelled — so the caller can close its fence at once. Run returns
// ctx's error once ctx ends, after resigning.
func (e *Elector) Run(ctx context.Context, onEnd func(Term), lead func(context.Context, Term)) error {
	for {
		if err := e.runOnce(ctx, onEnd, lead); err != nil && ctx.Err() == nil {
			e.cfg.Log.Warn("leader election: will campaign again", "err", err, "in", e.cfg.RetryDelay)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(e.cfg.RetryDelay):
		}
	}
}

// dropStale deletes election keys that carry this replica's name: they
// belong to a previous incarnation of it (replica names are unique), which
// died and whose lease has not expired yet. Without this a restarted leader
// would wait out its own old lease. Should the owner still run, the delete
// ends its term: its fence then refuses every write.
func (e *Elector) dropStale(ctx context.Context) {
	gctx, cancel := context.WithTimeout(ctx, e.cfg.TTL)
	defer cancel()
	resp, err := e.c.Get(gctx, e.cfg.Prefix+"/", clientv3.WithPrefix())
	if err != nil {
		return
	}
	for _, kv := range resp.Kvs {
		i, err := decodeInfo(kv.Value)
		if err != nil || i.Name != e.cfg.Self.Name {
			continue
		}
		_, err = e.c.Txn(gctx).If(clientv3.Compare(clientv3.CreateRevision(string(kv.Key)), "=", kv.CreateRevision)).
			Then(clientv3.OpDelete(string(kv.Key))).Commit()
		if err == nil {
			e.cfg.Log.Warn("removed the election key of this replica's previous incarnation", "key", string(kv.Key), "rev", kv.CreateRevision)
		}
	}
}

func (e *Elector) runOnce(ctx context.Context, onEnd func(Term), lead func(context.Context, Term)) error {
	e.dropStale(ctx)
	sess, err := concurrency.NewSession(e.c, concurrency.WithTTL(int(e.cfg.TTL/time.Second)))
	if err != nil {
		return fmt.Errorf("open election session: %w", err)
	}
	defer func() {
		// Revoke the lease (deletes our key) within a bound; a dead etcd
		// lets it expire on its own.
		done := make(chan struct{})
		go func() { _ = sess.Close(); close(done) }()
		select {
		case <-done:
		case <-time.After(e.cfg.TTL):
		}
	}()
	el := concurrency.NewElection(sess, e.cfg.Prefix)
	cctx, cancelCampaign := context.WithCancel(ctx)
	go func() {
		// A session lost while campaigning ends the campaign.
		select {
		case <-sess.Done():
		case <-cctx.Done():
		}
		cancelCampaign()
	}()
	err = el.Campaign(cctx, e.cfg.Self.encode())
	cancelCampaign()
	if err != nil {
		return fmt.Errorf("campaign: %w", err)
	}
	select {
	case <-sess.Done():
		return errors.New("election session lost right after winning")
	default:
	}
	t := Term{Fence: store.Fence{Key: el.Key(), Rev: el.Rev()}, Elected: time.Now()}
	e.cfg.Log.Info("elected leader", "replica", e.cfg.Self.Name, "key", t.Fence.Key, "rev", t.Fence.Rev)

	tctx, endTerm := context.WithCancel(ctx)
	defer endTerm()
	go func() {
		e.watchTerm(tctx, sess, t)
		if onEnd != nil {
			onEnd(t)
		}
		endTerm()
	}()
	lead(tctx, t)
	endTerm()
	if onEnd != nil {
		onEnd(t)
	}
	rctx, cancel := context.WithTimeout(context.Background(), e.cfg.TTL)
	defer cancel()
	if err := el.Resign(rctx); err != nil {
		e.cfg.Log.Warn("resign leadership", "err", err)
	} else {
		e.cfg.Log.Info("resigned leadership", "replica", e.cfg.Self.Name)
	}
	return nil
}

// watchTerm returns when the term ends: the session's lease is lost, the
// election key is deleted or recreated, or ctx ends.
func (e *Elector) watchTerm(ctx context.Context, sess *concurrency.Session, t Term) {
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	wch := e.c.Watch(clientv3.WithRequireLeader(wctx), t.Fence.Key, clientv3.WithRev(t.Fence.Rev))
	for {
		select {
		case <-ctx.Done():
			return
		case <-sess.Done():
			e.cfg.Log.Warn("lost leadership: election session ended (lease expired or etcd unreachable)", "replica", e.cfg.Self.Name)
			return
		case wr, ok := <-wch:
			if !ok || wr.Err() != nil {
				// The watch broke (etcd lost its leader, or we are cut
				// off): check the key directly before trusting the term.
				if !e.stillLeads(ctx, t) {
					e.cfg.Log.Warn("lost leadership: election key gone", "replica", e.cfg.Self.Name)
					return
				}
				wch = e.c.Watch(clientv3.WithRequireLeader(wctx), t.Fence.Key, clientv3.WithRev(t.Fence.Rev))
				continue
			}
			for _, ev := range wr.Events {
				if ev.Type == clientv3.EventTypeDelete || ev.Kv.CreateRevision != t.Fence.Rev {
					e.cfg.Log.Warn("lost leadership: election key deleted", "replica", e.cfg.Self.Name)
					return
				}
			}
		}
	}
}

func (e *Elector) stillLeads(ctx context.Context, t Term) bool {
	for i := 0; i < 3; i++ {
		gctx, cancel := context.WithTimeout(ctx, e.cfg.TTL/2)
		resp, err := e.c.Get(gctx, t.Fence.Key)
		cancel()
		if err == nil {
			return len(resp.Kvs) == 1 && resp.Kvs[0].CreateRevision == t.Fence.Rev
		}
		select {
		case <-ctx.Done():
			return false
		case <-time.After(200 * time.Millisecond):
		}
	}
	return false
}

// Current returns the leader of the election under prefix (DefaultPrefix if
// empty) and its fence; ErrNoLeader when none leads.
func Current(ctx context.Context, c *clientv3.Client, prefix string) (Info, store.Fence, error) {
	if prefix == "" {
		prefix = DefaultPrefix
	}
	resp, err := c.Get(ctx, prefix+"/", clientv3.WithFirstCreate()...)
	if err != nil {
		return Info{}, store.Fence{}, fmt.Errorf("read leader: %w", err)
	}
	if len(resp.Kvs) == 0 {
		return Info{}, store.Fence{}, ErrNoLeader
	}
	kv := resp.Kvs[0]
	i, err := decodeInfo(kv.Value)
	return i, store.Fence{Key: string(kv.Key), Rev: kv.CreateRevision}, err
}
