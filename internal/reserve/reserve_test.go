package reserve

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	statev1 "github.com/ferryvm/ferry/gen/ferry/state/v1"
	"github.com/ferryvm/ferry/internal/etcdembed"
	"github.com/ferryvm/ferry/internal/placement"
	clientv3 "go.etcd.io/etcd/client/v3"
)

func newTable(t *testing.T) *Table {
	t.Helper()
	ctx := context.Background()
	e, err := etcdembed.Start(ctx, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.Close)
	c, err := clientv3.New(clientv3.Config{Endpoints: []string{e.Endpoint}, DialTimeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return New(c)
}

func noUsage(context.Context, string) (Claims, error) { return nil, nil }

// room is a host with memory for exactly k VMs of 256 MiB and vCPUs to spare.
func room(k int) Capacity {
	return Capacity{CPUs: 16, MemoryMiB: placement.ReservedMiB + int64(k)*256}
}

func req(id, host string, k int) Request {
	return Request{ID: id, Owner: "test " + id, Host: host, Capacity: room(k), VM: "vm-" + id, VCPUs: 1, MemoryMiB: 256, TTL: time.Minute}
}

// TestConcurrentReservationsTakeExactlyK: N requests racing for a host with
// room for K: exactly K succeed, the others get ErrNoRoom, and the table
// holds exactly K reservations.
func TestConcurrentReservationsTakeExactlyK(t *testing.T) {
	tb := newTable(t)
	for _, tc := range []struct{ n, k int }{{20, 5}, {12, 1}, {8, 8}} {
		host := fmt.Sprintf("h-%d-%d", tc.n, tc.k)
		var wg sync.WaitGroup
		errs := make([]error, tc.n)
		start := make(chan struct{})
		for i := range tc.n {
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-start
				_, errs[i] = tb.Reserve(context.Background(), req(fmt.Sprintf("%s-r%d", host, i), host, tc.k), noUsage)
			}()
		}
		close(start)
		wg.Wait()
		ok := 0
		for i, err := range errs {
			switch {
			case err == nil:
				ok++
			case errors.Is(err, ErrNoRoom):
			default:
				t.Errorf("%s request %d: unexpected error %v", host, i, err)
			}
		}
		if ok != tc.k {
			t.Errorf("%s: %d of %d requests got a reservation, want exactly %d", host, ok, tc.n, tc.k)
		}
		held, err := tb.HeldByHost(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		if got := held[host]; got.VCPUs != tc.k || got.MemoryMiB != int64(tc.k)*256 {
			t.Errorf("%s: held %+v, want %d vCPUs and %d MiB", host, got, tc.k, tc.k*256)
		}
	}
}

// TestReserveCountsVMsReleaseFreesIdempotent: the VMs already on the host
// count, the same id is not reserved twice, Release frees the room and is
// idempotent.
func TestReserveCountsVMsReleaseFreesIdempotent(t *testing.T) {
	tb := newTable(t)
	ctx := context.Background()
	oneVM := func(context.Context, string) (Claims, error) { return Claims{"other": {VCPUs: 1, MemoryMiB: 256}}, nil }
	if _, err := tb.Reserve(ctx, req("a", "h1", 2), oneVM); err != nil {
		t.Fatalf("first reservation on a host with room for 2 and one VM: %v", err)
	}
	if _, err := tb.Reserve(ctx, req("a", "h1", 2), oneVM); err != nil {
		t.Fatalf("same id again (idempotent): %v", err)
	}
	if _, err := tb.Reserve(ctx, req("b", "h1", 2), oneVM); !errors.Is(err, ErrNoRoom) {
		t.Fatalf("second id on a full host: err %v, want ErrNoRoom", err)
	}
	if _, err := tb.Reserve(ctx, req("a", "h2", 2), noUsage); err == nil {
		t.Fatal("id a reserved on a second host")
	}
	if err := tb.Release(ctx, "a"); err != nil {
		t.Fatal(err)
	}
	if err := tb.Release(ctx, "a"); err != nil {
		t.Fatalf("second release: %v", err)
	}
	if _, err := tb.Reserve(ctx, req("b", "h1", 2), oneVM); err != nil {
		t.Fatalf("after release: %v", err)
	}
	rs, err := tb.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(rs) != 1 || rs[0].Id != "b" || rs[0].Owner != "test b" || rs[0].Host != "h1" {
		t.Fatalf("List = %v, want only b on h1", rs)
	}
	failing := func(context.Context, string) (Claims, error) { return nil, errors.New("store down") }
	if _, err := tb.Reserve(ctx, req("c", "h3", 2), failing); err == nil {
		t.Fatal("Reserve ignored a usage error")
	}
}

// TestExpiredReservationsDoNotCount: past its expiry a reservation holds
// nothing (a crashed owner cannot block a host); Renew moves the expiry.
func TestExpiredReservationsDoNotCount(t *testing.T) {
	tb := newTable(t)
	ctx := context.Background()
	if _, err := tb.Reserve(ctx, req("old", "h1", 1), noUsage); err != nil {
		t.Fatal(err)
	}
	if _, err := tb.Reserve(ctx, req("new", "h1", 1), noUsage); !errors.Is(err, ErrNoRoom) {
		t.Fatalf("full host: err %v, want ErrNoRoom", err)
	}
	if err := tb.Renew(ctx, "old", 2*time.Hour); err != nil {
		t.Fatal(err)
	}
	later := time.Now().Add(90 * time.Minute)
	tb.now = func() time.Time { return later }
	if _, err := tb.Reserve(ctx, req("new", "h1", 1), noUsage); !errors.Is(err, ErrNoRoom) {
		t.Fatalf("renewed reservation no longer counts 90 min later: err %v", err)
	}
	tb.now = func() time.Time { return later.Add(time.Hour) }
	if _, err := tb.Reserve(ctx, req("new", "h1", 1), noUsage); err != nil {
		t.Fatalf("an expired reservation still blocks the host: %v", err)
	}
	if err := tb.Renew(ctx, "nosuch", time.Minute); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Renew of a missing id: err %v, want ErrNotFound", err)
	}
}

// TestReserveKeyBoundToLease: the reservation's key carries a lease, so
// etcd removes it when the expiry passes even if nobody releases it.
func TestReserveKeyBoundToLease(t *testing.T) {
	tb := newTable(t)
	ctx := context.Background()
	if _, err := tb.Reserve(ctx, req("x", "h1", 1), noUsage); err != nil {
		t.Fatal(err)
	}
	resp, err := tb.c.Get(ctx, Prefix+"x")
	if err != nil || len(resp.Kvs) != 1 {
		t.Fatalf("get key: %v %v", resp, err)
	}
	ttl, err := tb.c.TimeToLive(ctx, clientv3.LeaseID(resp.Kvs[0].Lease))
	if err != nil {
		t.Fatal(err)
	}
	if ttl.TTL <= 0 || ttl.TTL > 60 {
		t.Fatalf("lease TTL %d s, want within (0, 60]", ttl.TTL)
	}
}

// TestAllocatedCountsAVMOnce: a VM with both a record and a reservation on
// one host counts once; on two hosts (a migration before its owner switch)
// it counts on each.
func TestAllocatedCountsAVMOnce(t *testing.T) {
	vms := map[string]Claims{"h1": {"a": {1, 256}, "b": {2, 512}}, "h2": {"c": {1, 128}}}
	rs := []*statev1.Reservation{
		{Host: "h1", Vm: "a", Vcpus: 1, MemoryMib: 256}, // a create not yet released
		{Host: "h2", Vm: "a", Vcpus: 1, MemoryMib: 256}, // a migrating to h2
		{Host: "h3", Vm: "d", Vcpus: 4, MemoryMib: 1024},
	}
	got := Allocated(vms, rs)
	want := map[string]Held{"h1": {3, 768}, "h2": {2, 384}, "h3": {4, 1024}}
	for h, w := range want {
		if got[h] != w {
			t.Errorf("%s: %+v, want %+v", h, got[h], w)
		}
	}
}

// TestReserveCountsAVMOnce: a reservation for a VM already recorded on the
// host (a create between its record and its release) does not count twice.
func TestReserveCountsAVMOnce(t *testing.T) {
	tb := newTable(t)
	ctx := context.Background()
	if _, err := tb.Reserve(ctx, req("a", "h1", 2), noUsage); err != nil {
		t.Fatal(err)
	}
	recorded := func(context.Context, string) (Claims, error) { return Claims{"vm-a": {1, 256}}, nil }
	if _, err := tb.Reserve(ctx, req("b", "h1", 2), recorded); err != nil {
		t.Fatalf("vm-a counted twice (record and reservation): %v", err)
	}
}

// TestFencedWritesRefusedWhenTheFenceFails: with a fence whose key is
// gone (a deposed leader), Reserve and Release write nothing.
func TestFencedWritesRefusedWhenTheFenceFails(t *testing.T) {
	tb := newTable(t)
	ctx := context.Background()
	if _, err := tb.c.Put(ctx, "/leader", "me"); err != nil {
		t.Fatal(err)
	}
	tb.Fence = func() (clientv3.Cmp, bool) { return clientv3.Compare(clientv3.Value("/leader"), "=", "me"), true }
	if _, err := tb.Reserve(ctx, req("a", "h1", 2), noUsage); err != nil {
		t.Fatalf("reserve under a holding fence: %v", err)
	}
	if _, err := tb.c.Put(ctx, "/leader", "someone else"); err != nil {
		t.Fatal(err)
	}
	if _, err := tb.Reserve(ctx, req("b", "h1", 2), noUsage); !errors.Is(err, ErrFenced) {
		t.Fatalf("reserve under a failed fence: %v, want ErrFenced", err)
	}
	if err := tb.Release(ctx, "a"); !errors.Is(err, ErrFenced) {
		t.Fatalf("release under a failed fence: %v, want ErrFenced", err)
	}
	tb.Fence = nil
	rs, _ := tb.List(ctx)
	if len(rs) != 1 || rs[0].Id != "a" {
		t.Fatalf("reservations after fenced writes: %v, want only a", rs)
	}
}
