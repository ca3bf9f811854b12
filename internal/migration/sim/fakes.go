package sim

import (
	"time"

	"github.com/ferryvm/ferry/internal/migration/core"
)

// FakeClock is the simulation's time: it moves only when the event loop
// takes the next event.
type FakeClock struct{ now time.Time }

// Now is the simulated time.
func (c *FakeClock) Now() time.Time { return c.now }

// FakeQEMU is one simulated QEMU process: its run state (query-status) and
// its migration status (query-migrate), as QEMU 10 reports them. A QEMU
// survives its agent's restart; killing it loses everything.
type FakeQEMU struct {
	// reconnectSince: a resumed post-copy source reconnects since then
	// (status postcopy-recover) while the link is down.
	reconnectSince time.Time
	// stuck: that reconnect neither connects nor gives up until the source
	// is paused (a relay took QEMU's connection at once and its channel
	// died with the link: the script's "stuck" fault).
	stuck bool

	PID   int64
	Boot  int // the guest's boot: the same number after a live migration
	Alive bool
	// Run is QEMU's run state: running, paused, inmigrate, finish-migrate,
	// postmigrate.
	Run string
	// Mig is the outgoing migration status: none, active, pre-switchover,
	// device (after migrate-continue), completed, failed, cancelled,
	// postcopy-active, postcopy-paused, postcopy-recover.
	Mig    string
	Rounds int64
	Sent   int64
	// RAM is the RAM bytes sent (Sent without the mirror's), as QEMU's
	// ram.transferred; ramTicks counts the ticks of RAM transfer.
	RAM      int64
	ramTicks int64
	// pcAskedRound and pcAskedRAM are Rounds and RAM when post-copy was
	// first asked for.
	pcAskedRound, pcAskedRAM int64
	Postcopy                 bool // postcopy-ram
	PCPending                bool // migrate-start-postcopy asked: switches at pre-switchover
	AutoConverge             bool // QEMU throttles the guest (a stuck pre-copy converges with it)
	pcLeft                   int  // post-copy ticks until every page is on the destination
	peer                     *FakeQEMU
	// In is the incoming side: "" (not incoming), listening, receiving,
	// loaded (complete, paused), postcopy (device state in, pages pending),
	// postcopy-paused, postcopy-recover, done (the migration is over).
	In string
	// loadedTicks counts the ticks since the state arrived: the agent
	// resumes an armed destination on the tick after (its reaction time).
	loadedTicks int
	// mirrorLeft counts the ticks until the source's disk mirrors are
	// ready (Mig "mirroring"); diskPeer is the destination QEMU whose NBD
	// export they write to.
	mirrorLeft int
	diskPeer   *FakeQEMU
}

func (q *FakeQEMU) running() bool { return q != nil && q.Alive && q.Run == "running" }

// vmOnHost is what an agent has of the VM on its host: the QEMU, the tap,
// the directory and the small files in it (which survive an agent restart).
type vmOnHost struct {
	qemu *FakeQEMU
	tap  bool
	dir  bool
	// disk: the VM's local disk image is in the directory (scenarios with
	// local disks); diskSynced: the destination's copy holds every write
	// (its mirror completed while the source was paused).
	disk       bool
	diskSynced bool
	// incoming migration (the agent's small files)
	inID    string
	inState string // listening, armed, running, adopted
	ran     bool
	uri     string
	diskURI string // the NBD export of the local disk (incoming with disks); a cold copy's receiver
	// diskInID: a cold migration's disk copy arriving (PrepareDisks): the
	// copy (diskSynced once verified) without a QEMU; "" once booted here.
	diskInID string
	// outgoing migration id (a small file: rebuilt with query-migrate after a restart)
	outID string
	// orphanSince: the reaper saw no migration in flight name this arrival since
	orphanSince time.Time
}

// FakeAgent is one host's agent as the engine sees it through the agent
// contract (docs in internal/migration/core/doc.go). Every RPC is keyed by
// migration id, idempotent, and answers the same after a restart.
type FakeAgent struct {
	w    *World
	side core.Side
	Host string
	Up   bool
	vm   *vmOnHost // the simulation has one VM
	// cancelled are the ids CancelOutgoing saw (small files, kept across restarts)
	cancelled map[string]bool
	// ended are the incoming ids AbortIncoming removed (kept across restarts)
	ended map[string]bool
	// copyJob is the source agent's cold disk copy (in the agent's memory:
	// lost with its process).
	copyJob *fakeCopy
}

// fakeCopy is a source agent's copy of the local disk to a destination's
// receiver (CopyDisks): copying for a few ticks, then completed once the
// destination verified the checksum, or failed.
type fakeCopy struct {
	id, uri string
	status  string
	err     string
	left    int
	sent    int64
}

// FakeStoreVM is the VM record in the fake store.
type FakeStoreVM struct {
	Host        string
	Generation  int64
	State       string
	MigrationID string
	Message     string
}

// FakeStore is the control plane's store: the VM record (with its
// generation and CAS), the migration record (persisted as proto bytes) and
// the destination's capacity reservation.
type FakeStore struct {
	VM          FakeStoreVM
	Record      []byte
	Reservation bool
	failNext    bool // the next write fails (fault)
}

func (s *FakeStore) snapshot() *core.StoreVM {
	return &core.StoreVM{Host: s.VM.Host, Generation: s.VM.Generation, MigrationID: s.VM.MigrationID, State: s.VM.State}
}
