package leader

import (
	"context"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// Observer keeps a cached view of who leads, refreshed by a watch on the
// election prefix and by polling, so API requests can be routed without a
// round trip to etcd.
type Observer struct {
	c      *clientv3.Client
	prefix string
	poll   time.Duration

	mu     sync.Mutex
	leader Info
	ok     bool
	seen   time.Time
}

// NewObserver returns an Observer of the election under prefix
// (DefaultPrefix if empty); Run keeps it current.
func NewObserver(c *clientv3.Client, prefix string) *Observer {
	if prefix == "" {
		prefix = DefaultPrefix
	}
	return &Observer{c: c, prefix: prefix, poll: time.Second}
}

// Leader returns the last leader seen; ok is false when none leads (or
// etcd could not be read at the last refresh).
func (o *Observer) Leader() (Info, bool) {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.leader, o.ok
}

// Refresh reads the leader from etcd now and caches it.
func (o *Observer) Refresh(ctx context.Context) (Info, bool) {
	rctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	i, _, err := Current(rctx, o.c, o.prefix)
	o.mu.Lock()
	defer o.mu.Unlock()
	o.leader, o.ok = i, err == nil
	if err == nil {
		o.seen = time.Now()
	}
	return o.leader, o.ok
}

// Run refreshes the view on every change under the prefix and at least
// every second, until ctx ends.
func (o *Observer) Run(ctx context.Context) {
	o.Refresh(ctx)
	t := time.NewTicker(o.poll)
	defer t.Stop()
	for ctx.Err() == nil {
		wctx, cancel := context.WithCancel(ctx)
		wch := o.c.Watch(clientv3.WithRequireLeader(wctx), o.prefix+"/", clientv3.WithPrefix())
	loop:
		for {
			select {
			case <-ctx.Done():
				break loop
			case _, ok := <-wch:
				o.Refresh(ctx)
				if !ok {
					break loop
				}
			case <-t.C:
				o.Refresh(ctx)
			}
		}
		cancel()
	}
}
