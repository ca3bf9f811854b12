// Package reserve holds host capacity for operations that will place a VM
// on a host (a create, a migration's destination) until they end, so
// concurrent requests never overcommit a host.
//
// Reservations live in etcd at /ferry/reservations/<id>. Taking one is a
// compare-and-swap on a per-host guard key (/ferry/reservation-guard/<host>)
// whose revision was read together with the host's reservations before the
// capacity was checked: two requests for the same host cannot both pass the
// check against the same view, the later one retries against the new view.
// Every reservation carries an owner and an expiry, and its key is bound to
// an etcd lease of that length, so an owner that crashes cannot hold
// capacity forever.
package reserve

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sort"
	"time"

	statev1 "github.com/ferryvm/ferry/gen/ferry/state/v1"
	"github.com/ferryvm/ferry/internal/placement"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// Key prefixes in etcd.
const (
	Prefix      = "/ferry/reservations/"
	GuardPrefix = "/ferry/reservation-guard/"
)

// Bounds on one Reserve call.
const (
	// MaxAttempts bounds the compare-and-swap retries of one Reserve.
	MaxAttempts = 64
	// DefaultTimeout bounds one Reserve when ctx has no earlier deadline.
	DefaultTimeout = 15 * time.Second
	// MinTTL is the shortest expiry accepted (etcd leases are whole seconds).
	MinTTL = 5 * time.Second
)

// Sentinel errors callers branch on.
var (
	// ErrNoRoom means the host cannot take the request on top of what its
	// VMs and the other reservations hold; the error says why.
	ErrNoRoom = errors.New("not enough free capacity")
	// ErrContention means the host's reservations kept changing for
	// MaxAttempts attempts or until the deadline; retrying later may work.
	ErrContention = errors.New("reservations of the host kept changing")
	// ErrNotFound means no reservation has that id.
	ErrNotFound = errors.New("no such reservation")
	// ErrFenced means the write was refused by the Fence comparison (this
	// replica is no longer the leader); nothing was written.
	ErrFenced = errors.New("reservation write refused by the leadership fence")
)

// Capacity is a host's totals.
type Capacity struct {
	CPUs      int
	MemoryMiB int64
}

// Held is capacity claimed on one host.
type Held struct {
	VCPUs     int
	MemoryMiB int64
}

// Request asks for capacity on one host.
type Request struct {
	// ID names the reservation (a migration id, a create's operation id).
	// Reserving an id that is already held on the same host returns it.
	ID string
	// Owner is the operation holding it, for logs and `List`.
	Owner string
	// Host is where the capacity is wanted, with its totals.
	Host     string
	Capacity Capacity
	// VM is the VM the capacity is for.
	VM        string
	VCPUs     int
	MemoryMiB int64
	// TTL bounds the reservation (at least MinTTL).
	TTL time.Duration
}

// Claims is what the VMs recorded on one host claim, by VM name.
type Claims map[string]Held

// UsageFunc returns what the VM records placed on host claim. Reserve calls
// it after it has read the host's reservations, so a VM is always counted:
// either its reservation is still there, or its record (written before the
// reservation is released) is. A VM with both on the host counts once.
type UsageFunc func(ctx context.Context, host string) (Claims, error)

// Allocated sums, per host, the VM records (vms: host → claims) and the
// reservations rs, counting a VM that has both on one host once (a create
// between recording the VM and releasing its reservation, a migration
// between the owner switch and its end).
func Allocated(vms map[string]Claims, rs []*statev1.Reservation) map[string]Held {
	out := map[string]Held{}
	for host, cs := range vms {
		h := out[host]
		for _, c := range cs {
			h.VCPUs += c.VCPUs
			h.MemoryMiB += c.MemoryMiB
		}
		out[host] = h
	}
	for _, r := range rs {
		if _, recorded := vms[r.Host][r.Vm]; recorded && r.Vm != "" {
			continue
		}
		h := out[r.Host]
		h.VCPUs += int(r.Vcpus)
		h.MemoryMiB += r.MemoryMib
		out[r.Host] = h
	}
	return out
}

// Table is the set of reservations in one etcd cluster.
type Table struct {
	c *clientv3.Client
	// Fence, if set, returns a comparison every write must also satisfy
	// (the leader's fencing key), so a deposed leader cannot reserve; ok
	// false means writes are not fenced.
	Fence func() (cmp clientv3.Cmp, ok bool)
	now   func() time.Time
}

// New returns the reservation table kept in c.
func New(c *clientv3.Client) *Table {
	return &Table{c: c, now: time.Now}
}

var (
	marshal   = protojson.MarshalOptions{}
	unmarshal = protojson.UnmarshalOptions{DiscardUnknown: true}
)

// txn commits ops if cmps hold, inside the fence when there is one. It
// returns whether cmps held; ErrFenced when the fence failed.
func (t *Table) txn(ctx context.Context, cmps []clientv3.Cmp, ops ...clientv3.Op) (bool, error) {
	if t.Fence != nil {
		if f, ok := t.Fence(); ok {
			resp, err := t.c.Txn(ctx).If(f).Then(clientv3.OpTxn(cmps, ops, nil)).Commit()
			if err != nil {
				return false, err
			}
			if !resp.Succeeded {
				return false, ErrFenced
			}
			return resp.Responses[0].GetResponseTxn().GetSucceeded(), nil
		}
	}
	resp, err := t.c.Txn(ctx).If(cmps...).Then(ops...).Commit()
	if err != nil {
		return false, err
	}
	return resp.Succeeded, nil
}

// view is a host's reservations and guard revision, read at one revision.
type view struct {
	guardRev int64 // mod revision of the guard key (0 = absent)
	existing *statev1.Reservation
	all      []*statev1.Reservation
}

func (t *Table) read(ctx context.Context, host, id string) (*view, error) {
	resp, err := t.c.Txn(ctx).Then(
		clientv3.OpGet(GuardPrefix+host),
		clientv3.OpGet(Prefix, clientv3.WithPrefix()),
	).Commit()
	if err != nil {
		return nil, fmt.Errorf("read reservations of host %s: %w", host, err)
	}
	v := &view{}
	if kvs := resp.Responses[0].GetResponseRange().Kvs; len(kvs) > 0 {
		v.guardRev = kvs[0].ModRevision
	}
	now := t.now()
	for _, kv := range resp.Responses[1].GetResponseRange().Kvs {
		r := &statev1.Reservation{}
		if err := unmarshal.Unmarshal(kv.Value, r); err != nil {
			return nil, fmt.Errorf("decode reservation %s: %w", kv.Key, err)
		}
		if r.Id == id {
			v.existing = r
		}
		if r.Host != host || !r.ExpiresAt.AsTime().After(now) {
			continue
		}
		v.all = append(v.all, r)
	}
	return v, nil
}

// Reserve takes req.VCPUs and req.MemoryMiB on req.Host if, counting the
// host's VMs (usage) and its other unexpired reservations, they fit under
// placement's rules. It returns ErrNoRoom (with the reason) when they do
// not, ErrContention when the host's reservations kept changing until the
// attempts or the deadline ran out. Reserving an id already held on the
// same host returns the held reservation; on another host it is an error.
func (t *Table) Reserve(ctx context.Context, req Request, usage UsageFunc) (*statev1.Reservation, error) {
	if req.ID == "" || req.Host == "" {
		return nil, fmt.Errorf("reserve: id and host are required (got id %q host %q)", req.ID, req.Host)
	}
	if req.TTL < MinTTL {
		req.TTL = MinTTL
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, DefaultTimeout)
		defer cancel()
	}
	var lastReason error
	for attempt := 0; attempt < MaxAttempts; attempt++ {
		v, err := t.read(ctx, req.Host, req.ID)
		if err != nil {
			return nil, err
		}
		if r := v.existing; r != nil && r.ExpiresAt.AsTime().After(t.now()) {
			if r.Host == req.Host {
				return r, nil
			}
			return nil, fmt.Errorf("reserve %s on %s: already held on host %s", req.ID, req.Host, r.Host)
		}
		// An expired one not yet removed by etcd is taken again below.
		used, err := usage(ctx, req.Host)
		if err != nil {
			return nil, fmt.Errorf("reserve on %s: usage: %w", req.Host, err)
		}
		alloc := Allocated(map[string]Claims{req.Host: used}, v.all)[req.Host]
		c := placement.Host{
			Name: req.Host, Ready: true, CPUs: req.Capacity.CPUs, MemoryMiB: req.Capacity.MemoryMiB,
			AllocatedVCPUs: alloc.VCPUs, AllocatedMemoryMiB: alloc.MemoryMiB,
		}
		if _, err := placement.Choose([]placement.Host{c}, placement.Request{VCPUs: req.VCPUs, MemoryMiB: req.MemoryMiB}); err != nil {
			return nil, fmt.Errorf("%w on host %s for VM %s (%d VMs and %d reservations there): %v",
				ErrNoRoom, req.Host, req.VM, len(used), len(v.all), err)
		}
		r, ok, err := t.commit(ctx, req, v)
		if err != nil {
			return nil, err
		}
		if ok {
			return r, nil
		}
		lastReason = ErrContention
		// Someone else reserved on this host meanwhile: back off a little
		// (randomised, so contenders spread out) and look again.
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("reserve %s on %s: %w (%v)", req.ID, req.Host, ErrContention, ctx.Err())
		case <-time.After(time.Duration(1+rand.IntN(10)) * time.Millisecond):
		}
	}
	return nil, fmt.Errorf("reserve %s on %s: %w after %d attempts", req.ID, req.Host, lastReason, MaxAttempts)
}

// commit writes the reservation if the host's guard key is unchanged since
// v was read. ok is false when it changed.
func (t *Table) commit(ctx context.Context, req Request, v *view) (*statev1.Reservation, bool, error) {
	now := t.now()
	r := &statev1.Reservation{
		Id: req.ID, Owner: req.Owner, Host: req.Host, Vm: req.VM,
		Vcpus: int32(req.VCPUs), MemoryMib: req.MemoryMiB,
		CreatedAt: timestamppb.New(now), ExpiresAt: timestamppb.New(now.Add(req.TTL)),
	}
	b, err := marshal.Marshal(r)
	if err != nil {
		return nil, false, fmt.Errorf("encode reservation %s: %w", req.ID, err)
	}
	lease, err := t.c.Grant(ctx, int64((req.TTL+time.Second-1)/time.Second))
	if err != nil {
		return nil, false, fmt.Errorf("reserve %s: grant lease: %w", req.ID, err)
	}
	guard := GuardPrefix + req.Host
	ok, err := t.txn(ctx, []clientv3.Cmp{clientv3.Compare(clientv3.ModRevision(guard), "=", v.guardRev)},
		clientv3.OpPut(guard, req.ID),
		clientv3.OpPut(Prefix+req.ID, string(b), clientv3.WithLease(lease.ID)),
	)
	if err != nil || !ok {
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		_, _ = t.c.Revoke(rctx, lease.ID)
		cancel()
	}
	if err != nil {
		return nil, false, fmt.Errorf("reserve %s on %s: %w", req.ID, req.Host, err)
	}
	return r, ok, nil
}

// Release removes reservation id and its lease. Releasing an id that is
// not held is not an error (release is idempotent).
func (t *Table) Release(ctx context.Context, id string) error {
	resp, err := t.c.Get(ctx, Prefix+id)
	if err != nil {
		return fmt.Errorf("release reservation %s: %w", id, err)
	}
	if len(resp.Kvs) == 0 {
		return nil
	}
	kv := resp.Kvs[0]
	if _, err := t.txn(ctx, nil, clientv3.OpDelete(Prefix+id)); err != nil {
		return fmt.Errorf("release reservation %s: %w", id, err)
	}
	if kv.Lease != 0 {
		// The key is gone already; a failed revoke only leaves a lease
		// that expires on its own.
		_, _ = t.c.Revoke(ctx, clientv3.LeaseID(kv.Lease))
	}
	return nil
}

// Renew extends reservation id to expire ttl from now (for an operation
// that runs longer than it first asked for). ErrNotFound if it is gone.
func (t *Table) Renew(ctx context.Context, id string, ttl time.Duration) error {
	if ttl < MinTTL {
		ttl = MinTTL
	}
	resp, err := t.c.Get(ctx, Prefix+id)
	if err != nil {
		return fmt.Errorf("renew reservation %s: %w", id, err)
	}
	if len(resp.Kvs) == 0 {
		return fmt.Errorf("renew reservation %s: %w", id, ErrNotFound)
	}
	kv := resp.Kvs[0]
	r := &statev1.Reservation{}
	if err := unmarshal.Unmarshal(kv.Value, r); err != nil {
		return fmt.Errorf("decode reservation %s: %w", id, err)
	}
	r.ExpiresAt = timestamppb.New(t.now().Add(ttl))
	b, err := marshal.Marshal(r)
	if err != nil {
		return fmt.Errorf("encode reservation %s: %w", id, err)
	}
	lease, err := t.c.Grant(ctx, int64((ttl+time.Second-1)/time.Second))
	if err != nil {
		return fmt.Errorf("renew reservation %s: grant lease: %w", id, err)
	}
	ok, err := t.txn(ctx, []clientv3.Cmp{clientv3.Compare(clientv3.ModRevision(Prefix+id), "=", kv.ModRevision)},
		clientv3.OpPut(Prefix+id, string(b), clientv3.WithLease(lease.ID)))
	if err != nil || !ok {
		_, _ = t.c.Revoke(context.WithoutCancel(ctx), lease.ID)
		if err != nil {
			return fmt.Errorf("renew reservation %s: %w", id, err)
		}
		return fmt.Errorf("renew reservation %s: it changed meanwhile: %w", id, ErrContention)
	}
	if kv.Lease != 0 {
		_, _ = t.c.Revoke(ctx, clientv3.LeaseID(kv.Lease))
	}
	return nil
}

// List returns every unexpired reservation, sorted by host then id.
func (t *Table) List(ctx context.Context) ([]*statev1.Reservation, error) {
	resp, err := t.c.Get(ctx, Prefix, clientv3.WithPrefix())
	if err != nil {
		return nil, fmt.Errorf("list reservations: %w", err)
	}
	now := t.now()
	var out []*statev1.Reservation
	for _, kv := range resp.Kvs {
		r := &statev1.Reservation{}
		if err := unmarshal.Unmarshal(kv.Value, r); err != nil {
			return nil, fmt.Errorf("decode reservation %s: %w", kv.Key, err)
		}
		if r.ExpiresAt.AsTime().After(now) {
			out = append(out, r)
		}
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Host != out[j].Host {
			return out[i].Host < out[j].Host
		}
		return out[i].Id < out[j].Id
	})
	return out, nil
}

// HeldByHost sums the unexpired reservations per host.
func (t *Table) HeldByHost(ctx context.Context) (map[string]Held, error) {
	rs, err := t.List(ctx)
	if err != nil {
		return nil, err
	}
	return Allocated(nil, rs), nil
}
