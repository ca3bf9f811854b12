package store_test

import (
	"context"
	"errors"
	"testing"

	statev1 "github.com/ferryvm/ferry/gen/ferry/state/v1"
	ferryv1 "github.com/ferryvm/ferry/gen/ferry/v1"
	"github.com/ferryvm/ferry/internal/store"
	"google.golang.org/protobuf/proto"
)

// TestSwitchOwner: the owner and the migration record are written in one
// transaction, or neither when a guard (VM revision, generation, migration
// record revision) no longer holds.
func TestSwitchOwner(t *testing.T) {
	s := newEtcdStore(t)
	ctx := context.Background()
	if err := s.CreateVM(ctx, vm("a", "h1")); err != nil {
		t.Fatal(err)
	}
	migRev, err := s.PutMigrationRevision(ctx, &statev1.MigrationRecord{Id: "m1", State: "transferring"})
	if err != nil || migRev <= 0 {
		t.Fatalf("put migration: rev %d, err %v", migRev, err)
	}
	cur, vmRev, err := s.GetVMRevision(ctx, "a")
	if err != nil || vmRev <= 0 {
		t.Fatalf("get VM: rev %d, err %v", vmRev, err)
	}
	switched := &statev1.MigrationRecord{Id: "m1", State: "resuming"}
	moved := proto.Clone(cur).(*ferryv1.VM)
	moved.Host = "h2"

	check := func(what, host string, gen int64, state string) {
		t.Helper()
		got, err := s.GetVM(ctx, "a")
		if err != nil {
			t.Fatal(err)
		}
		m, err := s.GetMigration(ctx, "m1")
		if err != nil {
			t.Fatal(err)
		}
		if got.Host != host || got.Generation != gen || m.State != state {
			t.Fatalf("%s: VM on %s gen %d, migration %s; want %s gen %d, %s", what, got.Host, got.Generation, m.State, host, gen, state)
		}
	}
	// A stale migration record revision (the record was written since).
	if _, err := s.SwitchOwner(ctx, proto.Clone(moved).(*ferryv1.VM), vmRev, 1, switched, migRev-1); !errors.Is(err, store.ErrConflict) {
		t.Fatalf("stale migration revision: err = %v, want ErrConflict", err)
	}
	check("after a stale migration revision", "h1", 1, "transferring")
	// A wrong generation.
	if _, err := s.SwitchOwner(ctx, proto.Clone(moved).(*ferryv1.VM), vmRev, 0, switched, migRev); !errors.Is(err, store.ErrConflict) {
		t.Fatalf("wrong generation: err = %v, want ErrConflict", err)
	}
	check("after a wrong generation", "h1", 1, "transferring")
	// The VM record changed since it was read (same generation).
	if _, err := s.UpdateVM(ctx, "a", false, func(v *ferryv1.VM) error { v.Message = "touched"; return nil }); err != nil {
		t.Fatal(err)
	}
	if _, err := s.SwitchOwner(ctx, proto.Clone(moved).(*ferryv1.VM), vmRev, 1, switched, migRev); !errors.Is(err, store.ErrConflict) {
		t.Fatalf("VM changed since read: err = %v, want ErrConflict", err)
	}
	check("after the VM changed", "h1", 1, "transferring")
	// Read again: both written, generation bumped, the revision returned.
	cur, vmRev, _ = s.GetVMRevision(ctx, "a")
	moved = proto.Clone(cur).(*ferryv1.VM)
	moved.Host = "h2"
	rev, err := s.SwitchOwner(ctx, moved, vmRev, 1, switched, migRev)
	if err != nil || rev <= vmRev || moved.Generation != 2 {
		t.Fatalf("switch: rev %d (VM read at %d), generation %d, err %v", rev, vmRev, moved.Generation, err)
	}
	check("after the switch", "h2", 2, "resuming")
}
