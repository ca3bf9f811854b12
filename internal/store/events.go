package store

import (
	"context"
	"errors"
	"fmt"
	"strings"

	ferryv1 "github.com/ferryvm/ferry/gen/ferry/v1"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// KindPolicy is /ferry/policies, the cluster's policy set (name "cluster").
const KindPolicy = "policy"

// eventsPrefix holds the event history, one key per event named by its id
// (which sorts as the events were recorded).
const eventsPrefix = "/ferry/events/"

// Kinds of watched state keys (StateChange.Kind).
const (
	KindHost      = "host" // /ferry/alive/<name>: present while the host's agent is heard from
	KindVM        = "vm"
	KindMigration = "migration"
	// KindHostRecord is a host's record (/ferry/hosts/<name>): its health
	// as the agent reports it (written with every heartbeat).
	KindHostRecord = "host-record"
	// KindEvacuation is a host's evacuation record: present while the
	// host is in maintenance.
	KindEvacuation = "evacuation"
)

// StateChange is one change of a host, VM, migration or evacuation key.
type StateChange struct {
	Kind string // KindHost, KindHostRecord, KindVM, KindMigration or KindEvacuation
	Name string // host, VM or migration id
	// Prev and Cur are the stored values before and after (nil: absent);
	// Prev is nil also when etcd no longer had it.
	Prev, Cur []byte
	Rev       int64 // etcd revision of the change
}

// ErrEventHistoryCompacted means the revision a watch was asked to resume
// from is no longer kept by etcd.
var ErrEventHistoryCompacted = errors.New("etcd compacted the revision to resume from")

// PutEvent records e under its id, inside the leader's fence; writing the
// same event again changes nothing.
func (s *Etcd) PutEvent(ctx context.Context, e *ferryv1.Event) error {
	if e.GetId() == "" || strings.Contains(e.GetId(), "/") {
		return fmt.Errorf("put event: id %q must be set and contain no '/'", e.GetId())
	}
	b, err := marshal.Marshal(e)
	if err != nil {
		return fmt.Errorf("put event %s: %w", e.GetId(), err)
	}
	_, _, err = s.write(ctx, "put event "+e.GetId(), nil, []clientv3.Op{clientv3.OpPut(eventsPrefix+e.GetId(), string(b))})
	return err
}

// ListEvents returns every kept event, oldest first.
func (s *Etcd) ListEvents(ctx context.Context) ([]*ferryv1.Event, error) {
	resp, err := s.c.Get(ctx, eventsPrefix, clientv3.WithPrefix(), clientv3.WithSort(clientv3.SortByKey, clientv3.SortAscend))
	if err != nil {
		return nil, fmt.Errorf("list events: %w", err)
	}
	out := make([]*ferryv1.Event, 0, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		e := &ferryv1.Event{}
		if err := decode(kv.Value, e); err != nil {
			return nil, err
		}
		out = append(out, e)
	}
	return out, nil
}

// LastEvent returns the newest kept event (nil: none).
func (s *Etcd) LastEvent(ctx context.Context) (*ferryv1.Event, error) {
	resp, err := s.c.Get(ctx, eventsPrefix, clientv3.WithPrefix(), clientv3.WithSort(clientv3.SortByKey, clientv3.SortDescend), clientv3.WithLimit(1))
	if err != nil {
		return nil, fmt.Errorf("last event: %w", err)
	}
	if len(resp.Kvs) == 0 {
		return nil, nil
	}
	e := &ferryv1.Event{}
	return e, decode(resp.Kvs[0].Value, e)
}

// DeleteEvents removes the events with these ids, inside the fence.
func (s *Etcd) DeleteEvents(ctx context.Context, ids []string) error {
	const batch = 100 // below etcd's default max operations per txn (128)
	for len(ids) > 0 {
		n := min(batch, len(ids))
		ops := make([]clientv3.Op, 0, n)
		for _, id := range ids[:n] {
			ops = append(ops, clientv3.OpDelete(eventsPrefix+id))
		}
		if _, _, err := s.write(ctx, fmt.Sprintf("delete %d events", n), nil, ops); err != nil {
			return err
		}
		ids = ids[n:]
	}
	return nil
}

// WatchEvents calls ready once the watch is in place (nil: not called),
// then fn with each event recorded from then on, until ctx ends or either
// fails.
func (s *Etcd) WatchEvents(ctx context.Context, ready func() error, fn func(*ferryv1.Event) error) error {
	ctx = clientv3.WithRequireLeader(ctx)
	for wr := range s.c.Watch(ctx, eventsPrefix, clientv3.WithPrefix(), clientv3.WithFilterDelete(), clientv3.WithCreatedNotify()) {
		if err := wr.Err(); err != nil {
			return fmt.Errorf("watch events: %w", err)
		}
		if wr.Created && ready != nil {
			if err := ready(); err != nil {
				return err
			}
		}
		for _, ev := range wr.Events {
			if ev.IsModify() {
				continue // the same event written again
			}
			e := &ferryv1.Event{}
			if err := decode(ev.Kv.Value, e); err != nil {
				return err
			}
			if err := fn(e); err != nil {
				return err
			}
		}
	}
	return ctx.Err()
}

// Revision returns the store's current revision.
func (s *Etcd) Revision(ctx context.Context) (int64, error) {
	resp, err := s.c.Get(ctx, "/ferry/ping")
	if err != nil {
		return 0, fmt.Errorf("store revision: %w", err)
	}
	return resp.Header.Revision, nil
}

// WatchStateChanges calls fn with every change of a host's liveness, a VM
// record or a migration record from revision from on (inclusive), in
// revision order, until ctx ends or fn fails. It returns
// ErrEventHistoryCompacted when etcd no longer keeps from.
func (s *Etcd) WatchStateChanges(ctx context.Context, from int64, fn func(StateChange) error) error {
	ctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
	defer cancel()
	// One watch over /ferry/ covers the three prefixes in one revision order.
	for wr := range s.c.Watch(ctx, "/ferry/", clientv3.WithPrefix(), clientv3.WithPrevKV(), clientv3.WithRev(from)) {
		if err := wr.Err(); err != nil {
			if errors.Is(err, rpctypes.ErrCompacted) || wr.CompactRevision != 0 {
				return fmt.Errorf("watch state from revision %d: %w", from, ErrEventHistoryCompacted)
			}
			return fmt.Errorf("watch state: %w", err)
		}
		for _, ev := range wr.Events {
			key := string(ev.Kv.Key)
			var c StateChange
			switch {
			case key == policiesKey:
				c.Kind, c.Name = KindPolicy, "cluster"
			case strings.HasPrefix(key, alivePrefix):
				c.Kind, c.Name = KindHost, key[len(alivePrefix):]
			case strings.HasPrefix(key, vmsPrefix):
				c.Kind, c.Name = KindVM, key[len(vmsPrefix):]
			case strings.HasPrefix(key, migPrefix):
				c.Kind, c.Name = KindMigration, key[len(migPrefix):]
			case strings.HasPrefix(key, hostsPrefix):
				c.Kind, c.Name = KindHostRecord, key[len(hostsPrefix):]
			case strings.HasPrefix(key, evacPrefix):
				c.Kind, c.Name = KindEvacuation, key[len(evacPrefix):]
			default:
				continue
			}
			c.Rev = ev.Kv.ModRevision
			if ev.PrevKv != nil {
				c.Prev = ev.PrevKv.Value
			}
			if ev.Type == clientv3.EventTypePut {
				c.Cur = ev.Kv.Value
			}
			if err := fn(c); err != nil {
				return err
			}
		}
	}
	return ctx.Err()
}
