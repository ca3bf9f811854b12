// Package qmp is Ferry's client for the QEMU Machine Protocol (QMP).
//
// The package is layered in three parts:
//
//   - the wire layer (unexported) owns the unix socket: it reads the
//     greeting, negotiates capabilities, tags every command with a unique
//     id and runs a single reader goroutine that routes replies to the
//     goroutine waiting for that id and fans asynchronous events out to
//     subscribers;
//   - [Monitor] is the exported, concurrency-safe handle built on top of
//     it: [Monitor.Run] executes any command with context support, and
//     [Monitor.Events], [Monitor.Subscribe] and [Monitor.WaitEvent] expose
//     the event stream;
//   - typed helpers ([Monitor.QueryStatus], [Monitor.QueryMigrate],
//     [Monitor.Migrate], ...) wrap the commands Ferry needs, using the
//     exact QAPI wire names and the types of QEMU 7.2's qapi/migration.json.
//
// # Out of band
//
// Where QEMU's greeting offers "oob" the session enables it
// ([WithoutOOB] declines). [Monitor.RunOOB] then sends a command with
// "exec-oob": QEMU runs it in the monitor's own thread, also while its
// main thread is blocked (a post-copy destination waiting on a page the
// broken link does not bring); [Monitor.MigrateRecover] and
// [Monitor.MigratePause] go that way. In-band commands still go through
// QEMU's main thread, at most [MaxInBand] unanswered at once, so that
// QEMU never stops reading the socket and an out-of-band command always
// gets through.
//
// # Errors
//
// Every error returned by the package reads "qmp: <command>: <detail>".
// Errors reported by QEMU itself are [*CommandError] values and match the
// per-class sentinels ([ErrGenericError], [ErrCommandNotFound], ...) with
// [errors.Is]. Transport failures match [ErrClosed]; an unexpected loss of
// the socket additionally matches [ErrDisconnected].
//
// # Events
//
// Event channels never block the reader: each subscriber owns a bounded
// buffer and, when it is full, the OLDEST queued event is dropped to make
// room for the new one (see [Subscription.Dropped]). Channels are closed
// when the connection ends.
//
// # Logging
//
// With [WithLog] or [WithLogFile] every message crossing the socket
// (greeting, commands, replies, events) is written as one line:
//
//	2026-01-02T15:04:05.000000Z [vm-name] -> {"execute":"query-status","id":"ferry-3"}
//
// The direction is "->" for sent commands, "<-" for received replies and
// the greeting, "event" for asynchronous events and "--" for local
// connection life-cycle notes. The payload is always compact JSON.
package qmp
