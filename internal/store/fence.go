package store

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"

	"go.etcd.io/etcd/api/v3/etcdserverpb"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// ErrNotLeader means a write was refused because this process does not hold
// the leadership its fence names (it was deposed, or never elected). Nothing
// was written.
var ErrNotLeader = errors.New("not the leader: write refused by the leadership fence")

// Fence names a leadership term: the leader's election key and the revision
// at which it was created. A fenced write succeeds only while that key still
// exists with that create revision, so a deposed leader changes nothing.
type Fence struct {
	Key string
	Rev int64
}

// closedFence is the fence of a replica that is not the leader: every
// fenced write fails at once, without a round trip.
var closedFence = &Fence{}

// SetFence makes every later control-plane write (VMs, migrations) an etcd
// transaction that also compares f; it takes effect at once for writes in
// flight that have not been sent yet. Host heartbeats stay unfenced.
func (s *Etcd) SetFence(f Fence) {
	if f.Key == "" || f.Rev <= 0 {
		s.fence.Store(closedFence)
		return
	}
	s.fence.Store(&f)
}

// CloseFence refuses every later control-plane write with ErrNotLeader, until
// SetFence installs a new term. A replica calls it the moment it loses
// leadership.
func (s *Etcd) CloseFence() { s.fence.Store(closedFence) }

// Unfence removes the fence: writes are no longer tied to a leadership term
// (the default of a new store, used by single-process tools and tests).
func (s *Etcd) Unfence() { s.fence.Store(nil) }

// CurrentFence returns the fence writes carry now; ok is false when writes
// are unfenced.
func (s *Etcd) CurrentFence() (f Fence, ok bool) {
	p := s.fence.Load()
	if p == nil {
		return Fence{}, false
	}
	return *p, true
}

type fenceRef = atomic.Pointer[Fence]

// write commits ops if every cmp holds, inside the current fence. It
// returns whether cmps held, and the responses of ops. When the fence fails
// it returns ErrNotLeader (wrapped with what) and nothing is written.
func (s *Etcd) write(ctx context.Context, what string, cmps []clientv3.Cmp, ops []clientv3.Op) (bool, []*etcdserverpb.ResponseOp, error) {
	ok, rs, _, err := s.writeRev(ctx, what, cmps, ops)
	return ok, rs, err
}

// writeRev is write that also returns the store revision the transaction
// committed at (the mod revision of every key it put).
func (s *Etcd) writeRev(ctx context.Context, what string, cmps []clientv3.Cmp, ops []clientv3.Op) (bool, []*etcdserverpb.ResponseOp, int64, error) {
	f := s.fence.Load()
	if f == nil {
		resp, err := s.c.Txn(ctx).If(cmps...).Then(ops...).Commit()
		if err != nil {
			return false, nil, 0, fmt.Errorf("%s: %w", what, err)
		}
		return resp.Succeeded, resp.Responses, resp.Header.GetRevision(), nil
	}
	if f == closedFence {
		return false, nil, 0, fmt.Errorf("%s: %w", what, ErrNotLeader)
	}
	fenceCmp := clientv3.Compare(clientv3.CreateRevision(f.Key), "=", f.Rev)
	resp, err := s.c.Txn(ctx).If(fenceCmp).Then(clientv3.OpTxn(cmps, ops, nil)).Commit()
	if err != nil {
		return false, nil, 0, fmt.Errorf("%s: %w", what, err)
	}
	if !resp.Succeeded {
		return false, nil, 0, fmt.Errorf("%s: %w (leader key %s rev %d is gone)", what, ErrNotLeader, f.Key, f.Rev)
	}
	inner := resp.Responses[0].GetResponseTxn()
	return inner.GetSucceeded(), inner.GetResponses(), resp.Header.GetRevision(), nil
}

// FenceCmp returns the comparison a write must also satisfy to be fenced
// like the store's own writes (for tables other packages keep in the same
// etcd, such as internal/reserve); ok is false when writes are unfenced. A
// closed fence yields a comparison that never holds.
func (s *Etcd) FenceCmp() (cmp clientv3.Cmp, ok bool) {
	f := s.fence.Load()
	switch {
	case f == nil:
		return clientv3.Cmp{}, false
	case f == closedFence:
		return clientv3.Compare(clientv3.CreateRevision("/ferry/leader/none"), "=", -1), true
	}
	return clientv3.Compare(clientv3.CreateRevision(f.Key), "=", f.Rev), true
}
