package bench

import (
	"context"
	"time"

	"github.com/ferryvm/ferry/bench/internal/report"
)

// System is one way of running and live-migrating the guest.
type System interface {
	// Name is "ferry", "qemu" or "libvirt".
	Name() string
	// Boot starts g on the source host and returns the source QEMU's PID.
	Boot(ctx context.Context, g Guest) (pid int, err error)
	// Migrate live-migrates g from the source to the destination host and
	// waits for the end; after limit it aborts the migration (the guest
	// stays on the source) and returns the aborted report.
	Migrate(ctx context.Context, g Guest, limit time.Duration) (Report, error)
	// Destroy removes g wherever it runs and everything made for it; it
	// is safe to call after a failed Boot and more than once.
	Destroy(ctx context.Context, g Guest) error
	// Close releases what the system keeps across runs (daemons).
	Close() error
}

// Planner is a system that can predict a migration without making it
// (Ferry's --dry-run); the harness asks it right before every migration.
type Planner interface {
	// DryRun predicts g's migration with the flags Migrate will use and
	// changes nothing; failures are recorded in the result's Error.
	DryRun(ctx context.Context, g Guest) *report.DryRun
}

// Report and Sample are the common result types (see package report).
type (
	Report = report.Migration
	Sample = report.Sample
)
