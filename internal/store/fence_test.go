package store_test

import (
	"context"
	"errors"
	"reflect"
	"testing"
	"time"

	ferryv1 "github.com/ferryvm/ferry/gen/ferry/v1"
	"github.com/ferryvm/ferry/internal/etcdembed/etcdtest"
	"github.com/ferryvm/ferry/internal/store"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
)

// TestFencedWrites: while the fence's key exists with its revision every
// write goes through; once the key is gone (the leader was deposed) every
// control-plane write fails with ErrNotLeader and changes nothing, and host
// heartbeats still work.
func TestFencedWrites(t *testing.T) {
	ctx := context.Background()
	s := etcdtest.Store(t, t.TempDir())
	c := s.Client()

	put, err := c.Put(ctx, "/ferry/leader/a", "a")
	if err != nil {
		t.Fatal(err)
	}
	s.SetFence(store.Fence{Key: "/ferry/leader/a", Rev: put.Header.Revision})
	if err := s.CreateVM(ctx, vm("v", "h1")); err != nil {
		t.Fatalf("create under a valid fence: %v", err)
	}
	if _, err := s.UpdateVM(ctx, "v", true, func(v *ferryv1.VM) error { v.State = "running"; return nil }); err != nil {
		t.Fatalf("update under a valid fence: %v", err)
	}
	if err := s.CreateVM(ctx, vm("v", "h2")); !errors.Is(err, store.ErrExists) {
		t.Fatalf("second create under a valid fence: %v, want ErrExists", err)
	}
	if err := putMigration(ctx, s, "m1", "v", "transferring"); err != nil {
		t.Fatal(err)
	}

	// Depose: the key goes away (lease expired) and another leader's key
	// appears under the same prefix.
	if _, err := c.Delete(ctx, "/ferry/leader/a"); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Put(ctx, "/ferry/leader/b", "b"); err != nil {
		t.Fatal(err)
	}
	before, _ := s.GetVM(ctx, "v")
	checks := map[string]error{
		"create":  s.CreateVM(ctx, vm("w", "h1")),
		"swap":    s.SwapVM(ctx, vm("v", "h2"), before.Generation),
		"delete":  s.DeleteVM(ctx, "v"),
		"migrate": putMigration(ctx, s, "m1", "v", "failed"),
	}
	_, err = s.UpdateVM(ctx, "v", true, func(v *ferryv1.VM) error { v.State = "stopped"; return nil })
	checks["update"] = err
	for op, err := range checks {
		if !errors.Is(err, store.ErrNotLeader) {
			t.Errorf("%s by a deposed leader: err = %v, want ErrNotLeader", op, err)
		}
	}
	after, err := s.GetVM(ctx, "v")
	if err != nil || after.State != "running" || after.Host != "h1" || after.Generation != before.Generation {
		t.Fatalf("VM after deposed writes = %v, %v; want it unchanged (running on h1, gen %d)", after, err, before.Generation)
	}
	if _, err := s.GetVM(ctx, "w"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("VM created by a deposed leader exists: %v", err)
	}
	if st := migrationState(ctx, t, s, "m1"); st != "transferring" {
		t.Fatalf("migration written by a deposed leader: state %q", st)
	}
	if err := s.PutHost(ctx, &ferryv1.Host{Name: "h1", Address: "x"}, 5*time.Second); err != nil {
		t.Fatalf("heartbeat must stay unfenced: %v", err)
	}

	// The comparison other tables use fails like the store's own writes.
	if cmp, ok := s.FenceCmp(); !ok {
		t.Fatal("FenceCmp: not fenced")
	} else if r, err := c.Txn(ctx).If(cmp).Then().Commit(); err != nil || r.Succeeded {
		t.Fatalf("deposed FenceCmp held: %v %v", r, err)
	}

	// A closed fence refuses without asking etcd; unfencing writes again.
	s.CloseFence()
	if err := s.CreateVM(ctx, vm("w", "h1")); !errors.Is(err, store.ErrNotLeader) {
		t.Fatalf("create with a closed fence: %v", err)
	}
	if cmp, ok := s.FenceCmp(); !ok {
		t.Fatal("closed FenceCmp: not fenced")
	} else if r, err := c.Txn(ctx).If(cmp).Then().Commit(); err != nil || r.Succeeded {
		t.Fatalf("closed FenceCmp held: %v %v", r, err)
	}
	s.Unfence()
	if _, ok := s.FenceCmp(); ok {
		t.Fatal("FenceCmp fenced after Unfence")
	}
	if err := s.CreateVM(ctx, vm("w", "h1")); err != nil {
		t.Fatalf("create unfenced: %v", err)
	}
}

// The migration record's message type belongs to the engine and changes
// with it; these helpers build and read it through reflection on the
// store's PutMigration/GetMigration (every version has id, vm and state).
func putMigration(ctx context.Context, s *store.Etcd, id, vm, state string) error {
	put := reflect.ValueOf(s).MethodByName("PutMigration")
	msg := reflect.New(put.Type().In(1).Elem()).Interface().(proto.Message)
	r := msg.ProtoReflect()
	fs := r.Descriptor().Fields()
	r.Set(fs.ByName("id"), protoreflect.ValueOfString(id))
	r.Set(fs.ByName("vm"), protoreflect.ValueOfString(vm))
	r.Set(fs.ByName("state"), protoreflect.ValueOfString(state))
	out := put.Call([]reflect.Value{reflect.ValueOf(ctx), reflect.ValueOf(msg)})
	err, _ := out[0].Interface().(error)
	return err
}

func migrationState(ctx context.Context, t *testing.T, s *store.Etcd, id string) string {
	t.Helper()
	out := reflect.ValueOf(s).MethodByName("GetMigration").Call([]reflect.Value{reflect.ValueOf(ctx), reflect.ValueOf(id)})
	if err, _ := out[1].Interface().(error); err != nil {
		t.Fatalf("get migration %s: %v", id, err)
	}
	r := out[0].Interface().(proto.Message).ProtoReflect()
	return r.Get(r.Descriptor().Fields().ByName("state")).String()
}
