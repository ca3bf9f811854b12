package store_test

import (
	"context"
	"errors"
	"testing"
	"time"

	ferryv1 "github.com/ferryvm/ferry/gen/ferry/v1"
	"github.com/ferryvm/ferry/internal/etcdembed/etcdtest"
	"github.com/ferryvm/ferry/internal/store"
)

func newEtcdStore(t *testing.T) store.Store {
	t.Helper()
	return etcdtest.Store(t, t.TempDir())
}

func vm(name, host string) *ferryv1.VM {
	return &ferryv1.VM{Spec: &ferryv1.VMSpec{Name: name, Vcpus: 1, MemoryMib: 128}, Host: host, Generation: 1, State: "pending"}
}

func TestEtcdStore(t *testing.T) {
	s := newEtcdStore(t)
	ctx := context.Background()

	if err := s.CreateVM(ctx, vm("a", "h1")); err != nil {
		t.Fatal(err)
	}
	if err := s.CreateVM(ctx, vm("a", "h2")); !errors.Is(err, store.ErrExists) {
		t.Fatalf("second create: err = %v, want ErrExists", err)
	}
	if _, err := s.GetVM(ctx, "missing"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("get missing: err = %v, want ErrNotFound", err)
	}
	got, err := s.UpdateVM(ctx, "a", true, func(v *ferryv1.VM) error { v.State = "running"; return nil })
	if err != nil {
		t.Fatal(err)
	}
	if got.State != "running" || got.Generation != 2 {
		t.Fatalf("after update: state %q gen %d, want running 2", got.State, got.Generation)
	}

	// The owner changes only by a CAS on the generation.
	moved := vm("a", "h2")
	if err := s.SwapVM(ctx, moved, 1); !errors.Is(err, store.ErrConflict) {
		t.Fatalf("swap with stale generation: err = %v, want ErrConflict", err)
	}
	if err := s.SwapVM(ctx, moved, 2); err != nil {
		t.Fatal(err)
	}
	cur, _ := s.GetVM(ctx, "a")
	if cur.Host != "h2" || cur.Generation != 3 {
		t.Fatalf("after swap: host %q gen %d, want h2 3", cur.Host, cur.Generation)
	}

	// Concurrent updates never lose a write.
	if err := s.CreateVM(ctx, vm("b", "h1")); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 8)
	for i := 0; i < 8; i++ {
		go func() {
			_, err := s.UpdateVM(ctx, "b", true, func(*ferryv1.VM) error { return nil })
			done <- err
		}()
	}
	for i := 0; i < 8; i++ {
		if err := <-done; err != nil {
			t.Fatal(err)
		}
	}
	if b, _ := s.GetVM(ctx, "b"); b.Generation != 9 {
		t.Fatalf("after 8 concurrent bumps generation = %d, want 9", b.Generation)
	}
	vms, _ := s.ListVMs(ctx)
	if len(vms) != 2 || vms[0].Spec.Name != "a" {
		t.Fatalf("list = %v", vms)
	}
	if err := s.DeleteVM(ctx, "b"); err != nil {
		t.Fatal(err)
	}
	if err := s.DeleteVM(ctx, "b"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("delete twice: %v", err)
	}
}

func TestHostLeaseExpires(t *testing.T) {
	s := newEtcdStore(t)
	ctx := context.Background()
	if err := s.PutHost(ctx, &ferryv1.Host{Name: "h1", Address: "x"}, 1*time.Second); err != nil {
		t.Fatal(err)
	}
	h, err := s.GetHost(ctx, "h1")
	if err != nil || h.State != "ready" {
		t.Fatalf("host = %v, %v; want ready", h, err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		hs, err := s.ListHosts(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if len(hs) == 1 && hs[0].State == "unreachable" {
			return
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Fatal("host still ready 10s after its 1s lease")
}
