// Package exec is the executor of the migration engine: it runs the pure
// core (internal/migration/core) for every in-flight migration, one
// goroutine each, and is the only part of the engine that does I/O. For a
// migration it loads the persisted record, feeds the core observations
// (agent replies and their errors, polls of both QEMUs, timers, a cancel,
// "recovered after a restart") and performs the actions the core returns:
// agent RPCs through the Agent interface (every call under a deadline),
// the owner compare-and-swap and VM record updates through the store, and
// timers on a Clock. The record a step returns is written before any of
// its actions runs (write-ahead), so a server that dies anywhere is
// replaced by one that resumes from the record alone. When its context
// ends (the process stops, or this replica is no longer the leader) the
// executor stops acting; whoever leads next recovers from the records.
package exec
