// Package sim is a deterministic simulation of Ferry's migration engine:
// the real pure core (internal/migration/core) driven by a small in-process
// executor against clearly named fakes — FakeAgent (one per host, the agent
// contract), FakeQEMU (QEMU's run states and migration statuses, including
// that QEMU restarts a source whose migration failed before completing and
// that a destination whose stream failed exits), FakeStore (VM record with
// generation and CAS, migration record as proto bytes, the destination's
// reservation) and FakeClock. Single-threaded: one event queue in simulated
// time; the seed only orders what would race.
//
// Explore records each scenario's happy path (precopy, converge, postcopy,
// hybrid with its post-copy switch, cold of a running VM, cold of a stopped
// VM; with a local disk: pre-copy and post-copy mirroring it, cold of a
// running and of a stopped VM copying it), then replays it once for every step index × every fault kind
// (AllFaults): server crash + restart (record reloaded, memory lost),
// source/destination agent crash + restart, a request lost, a reply lost, a
// request delayed past its caller's timeout, source/destination QEMU
// killed, the server cut off from one agent while the agents still reach
// each other, the agents cut off from each other, a store write failing, a
// timeout firing (the server stalls past the stall timeout), a timer firing
// early, a user cancel, a graceful leader change (hand-over: the leader
// resigns, the next one adopts). ExplorePairs samples cases with a second fault
// landing in the path the first one caused.
//
// The fakes also model the two control-plane/agent loops the engine relies
// on: the host heartbeat reconciler (a VM record no migration holds whose
// QEMU exited becomes failed) and the agent's orphan reaper (an arrival
// that never ran and no migration in flight names is removed after
// OrphanGrace).
//
// The checker asserts after every simulated instant that at most one QEMU
// of the VM runs and that a QEMU runs on a host its record does not name
// for at most OwnerLag while the server can act, and at the end: the migration is terminal; the VM record
// is unlocked, names one host, and matches that host's QEMU (running with
// the same boot for live strategies, paused recorded paused, stopped with no
// QEMU, failed with a reason and only if a fault killed a QEMU); nothing is
// left on the other host (QEMU, tap, directory, incoming state); the
// reservation is released.
//
//	go test ./internal/migration/sim -run TestFaultExploration -v
//	FERRY_SIM_SEEDS=20 go test ./internal/migration/sim -run TestFaultExploration
//
// Each seed draws the network's latency jitter, so seeds order concurrent
// replies differently.
package sim
