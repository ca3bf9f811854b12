package telemetry

import "time"

// Defaults of the agent's per-VM sampler.
const (
	// DefaultDirtyEvery is how often a running VM's dirty rate is sampled.
	DefaultDirtyEvery = 15 * time.Second
	// DefaultRAMEvery is how often its non-zero RAM is counted.
	DefaultRAMEvery = 60 * time.Second
	// DefaultSettle is how long a VM runs (or has stopped migrating)
	// before its first sample, so a start or an arrival is not measured.
	DefaultSettle = time.Second
	// DefaultWindow is how many samples a series keeps (5 min at 15 s).
	DefaultWindow = 20
	// DefaultYoungFor and DefaultYoungDirtyEvery: for its first minute
	// after starting, arriving or a cancelled migration, a VM's dirty rate
	// is sampled every 3 s, so a VM migrated soon after its workload
	// started is planned from a sample of that workload, not of its boot.
	// A dirty-rate sample costs little (QEMU hashes 512 pages per GiB);
	// the RAM count, the costly part, keeps its period.
	DefaultYoungFor        = time.Minute
	DefaultYoungDirtyEvery = 3 * time.Second
)

// Kind is what the sampler measures next.
type Kind int

const (
	// Nothing is due.
	Nothing Kind = iota
	// Dirty is a dirty-rate sample (calc-dirty-rate).
	Dirty
	// RAM is a non-zero RAM count (a scan of the guest's memory).
	RAM
)

// String names the kind as logs and reports show it.
func (k Kind) String() string {
	switch k {
	case Dirty:
		return "dirty-rate"
	case RAM:
		return "non-zero-RAM"
	}
	return "nothing"
}

// Schedule is the per-VM sampler's policy.
type Schedule struct {
	// DirtyEvery and RAMEvery are the sampling periods; ≤ 0 switches that
	// figure's sampling off.
	DirtyEvery, RAMEvery time.Duration
	// Settle is how long the VM must have been quietly running (since its
	// QEMU started or its last migration ended) before any sample.
	Settle time.Duration
	// YoungFor and YoungDirtyEvery: for YoungFor after QuietSince the
	// dirty rate is sampled every YoungDirtyEvery when that is shorter
	// than DirtyEvery (0: no young period).
	YoungFor, YoungDirtyEvery time.Duration
}

// VMView is what the sampler knows about one VM at a moment.
type VMView struct {
	// Running: the VM's QEMU runs here as this host's VM (not arriving,
	// not paused).
	Running bool
	// Migrating: a migration of the VM is in progress (or has not yet been
	// cleaned up). The sampler never measures then: it would compete with
	// the migration and its figures would be the migration's.
	Migrating bool
	// QuietSince is when the VM started running here or its last
	// migration ended, whichever is later.
	QuietSince time.Time
	// LastDirty and LastRAM are when each figure was last attempted (zero:
	// never). Attempts, not successes, so a failing sample waits its turn.
	LastDirty, LastRAM time.Time
}

// Next says what to sample at now: the dirty rate first (it changes
// fastest), then the RAM count, each only when its period (the young
// period's for the dirty rate while the VM is young) has passed since its
// last attempt; nothing while the VM is not running quietly.
func (s Schedule) Next(now time.Time, v VMView) Kind {
	if !v.Running || v.Migrating || now.Sub(v.QuietSince) < s.Settle {
		return Nothing
	}
	dirtyEvery := s.DirtyEvery
	if s.YoungDirtyEvery > 0 && now.Sub(v.QuietSince) < s.YoungFor {
		dirtyEvery = min(dirtyEvery, s.YoungDirtyEvery)
	}
	if s.DirtyEvery > 0 && (v.LastDirty.IsZero() || now.Sub(v.LastDirty) >= dirtyEvery) {
		return Dirty
	}
	if s.RAMEvery > 0 && (v.LastRAM.IsZero() || now.Sub(v.LastRAM) >= s.RAMEvery) {
		return RAM
	}
	return Nothing
}
