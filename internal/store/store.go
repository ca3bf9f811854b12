// Package store defines Ferry's cluster state (hosts and VMs) and keeps it
// in etcd. Every write of a VM record is a compare-and-swap, so two writers
// never silently overwrite each other, and a VM's owner changes only through
// a CAS on its generation.
package store

import (
	"context"
	"errors"
	"time"

	statev1 "github.com/ferryvm/ferry/gen/ferry/state/v1"
	ferryv1 "github.com/ferryvm/ferry/gen/ferry/v1"
)

// Sentinel errors callers branch on.
var (
	// ErrNotFound means the record does not exist.
	ErrNotFound = errors.New("not found")
	// ErrExists means a record with that name already exists.
	ErrExists = errors.New("already exists")
	// ErrConflict means a compare-and-swap lost: the record changed since it
	// was read.
	ErrConflict = errors.New("conflict: record changed concurrently")
)

// Store is the cluster state. Implementations must be safe for concurrent use.
type Store interface {
	// PutHost records a host's registration and latest report, and renews
	// its liveness lease for ttl.
	PutHost(ctx context.Context, h *ferryv1.Host, ttl time.Duration) error
	// GetHost returns a host with State "ready" or "unreachable".
	GetHost(ctx context.Context, name string) (*ferryv1.Host, error)
	// ListHosts returns all hosts sorted by name, with their State set.
	ListHosts(ctx context.Context) ([]*ferryv1.Host, error)

	// CreateVM stores a new VM record; ErrExists if the name is taken.
	CreateVM(ctx context.Context, vm *ferryv1.VM) error
	// GetVM returns a VM record.
	GetVM(ctx context.Context, name string) (*ferryv1.VM, error)
	// ListVMs returns all VM records sorted by name.
	ListVMs(ctx context.Context) ([]*ferryv1.VM, error)
	// UpdateVM applies fn to the current record and writes it back with a
	// compare-and-swap, retrying on conflict. fn may return an error to
	// abort. The stored generation is incremented when bump is true.
	UpdateVM(ctx context.Context, name string, bump bool, fn func(*ferryv1.VM) error) (*ferryv1.VM, error)
	// SwapVM writes vm only if the stored generation equals
	// expectGeneration (ErrConflict otherwise); vm.Generation is set to
	// expectGeneration+1.
	SwapVM(ctx context.Context, vm *ferryv1.VM, expectGeneration int64) error
	// GetVMRevision is GetVM with the store revision the record was last
	// written at.
	GetVMRevision(ctx context.Context, name string) (*ferryv1.VM, int64, error)
	// SwitchOwner writes vm (generation expectGeneration+1) and a migration
	// record in one transaction, guarded by revisions (switch.go).
	SwitchOwner(ctx context.Context, vm *ferryv1.VM, vmRev, expectGeneration int64, m *statev1.MigrationRecord, migRev int64) (int64, error)
	// DeleteVM removes a VM record; ErrNotFound if absent.
	DeleteVM(ctx context.Context, name string) error

	// PutMigration writes a migration record (the engine's persisted state
	// of one migration, with its report).
	PutMigration(ctx context.Context, m *statev1.MigrationRecord) error
	// PutMigrationRevision is PutMigration that returns the revision it
	// wrote at (the guard of SwitchOwner).
	PutMigrationRevision(ctx context.Context, m *statev1.MigrationRecord) (int64, error)
	// GetMigration returns a migration record.
	GetMigration(ctx context.Context, id string) (*statev1.MigrationRecord, error)
	// ListMigrations returns all migration records, oldest first.
	ListMigrations(ctx context.Context) ([]*statev1.MigrationRecord, error)
	// DeleteMigration removes a migration record (retention); deleting one
	// that is gone is not an error.
	DeleteMigration(ctx context.Context, id string) error

	// Close releases the store's connections.
	Close() error
	// PutEvent records an event (see events.go), ListEvents returns the
	// kept ones oldest first, LastEvent the newest, DeleteEvents removes
	// some, WatchEvents streams new ones.
	PutEvent(ctx context.Context, e *ferryv1.Event) error
	ListEvents(ctx context.Context) ([]*ferryv1.Event, error)
	LastEvent(ctx context.Context) (*ferryv1.Event, error)
	DeleteEvents(ctx context.Context, ids []string) error
	WatchEvents(ctx context.Context, ready func() error, fn func(*ferryv1.Event) error) error
	// Revision is the store's current revision; WatchStateChanges streams
	// the changes of hosts, VMs and migrations from a revision on.
	Revision(ctx context.Context) (int64, error)
	WatchStateChanges(ctx context.Context, from int64, fn func(StateChange) error) error
}
