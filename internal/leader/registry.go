package leader

import (
	"context"
	"encoding/json"
	"fmt"
	"sort"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"
)

// ReplicasPrefix holds one lease-bound key per running replica.
const ReplicasPrefix = "/ferry/replicas/"

// Replica is a running replica's registration.
type Replica struct {
	Info
	Started  time.Time `json:"started"`
	LastSeen time.Time `json:"last_seen"`
}

// Register keeps self's registration under ReplicasPrefix, bound to a lease
// of ttl and refreshed (LastSeen) every interval, until ctx ends; then it
// revokes the lease so the replica disappears at once. Errors are retried.
func Register(ctx context.Context, c *clientv3.Client, self Info, ttl, interval time.Duration) {
	started := time.Now().UTC()
	for ctx.Err() == nil {
		if err := registerOnce(ctx, c, self, started, ttl, interval); err != nil && ctx.Err() == nil {
			select {
			case <-ctx.Done():
			case <-time.After(interval):
			}
		}
	}
}

func registerOnce(ctx context.Context, c *clientv3.Client, self Info, started time.Time, ttl, interval time.Duration) error {
	sess, err := concurrency.NewSession(c, concurrency.WithTTL(int(max(ttl, time.Second)/time.Second)))
	if err != nil {
		return fmt.Errorf("register replica: %w", err)
	}
	defer func() {
		done := make(chan struct{})
		go func() { _ = sess.Close(); close(done) }()
		select {
		case <-done:
		case <-time.After(ttl):
		}
	}()
	key := ReplicasPrefix + self.Name
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		b, _ := json.Marshal(Replica{Info: self, Started: started, LastSeen: time.Now().UTC()})
		pctx, cancel := context.WithTimeout(ctx, interval)
		_, err := c.Put(pctx, key, string(b), clientv3.WithLease(sess.Lease()))
		cancel()
		if err != nil && ctx.Err() == nil {
			return fmt.Errorf("register replica %s: %w", self.Name, err)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-sess.Done():
			return fmt.Errorf("register replica %s: session lost", self.Name)
		case <-t.C:
		}
	}
}

// Replicas lists the registered replicas, sorted by name.
func Replicas(ctx context.Context, c *clientv3.Client) ([]Replica, error) {
	resp, err := c.Get(ctx, ReplicasPrefix, clientv3.WithPrefix())
	if err != nil {
		return nil, fmt.Errorf("list replicas: %w", err)
	}
	var out []Replica
	for _, kv := range resp.Kvs {
		var r Replica
		if err := json.Unmarshal(kv.Value, &r); err != nil {
			return nil, fmt.Errorf("decode replica %s: %w", strings.TrimPrefix(string(kv.Key), ReplicasPrefix), err)
		}
		out = append(out, r)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}
