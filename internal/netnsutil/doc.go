// Package netnsutil helps code in one network namespace work in another,
// named one (the kind `ip netns add NAME` makes under /run/netns).
//
// Linux keeps the network namespace per thread, so every switch happens on
// a goroutine locked to its OS thread:
//
//   - Do runs a function inside a namespace and always switches back. If
//     switching back fails it leaves the thread locked, so the Go runtime
//     throws that thread away instead of reusing it in the wrong namespace.
//   - Dial, Listen and ListenPacket create sockets inside a namespace. A
//     socket keeps its namespace for life, so the returned connection can
//     be used from any goroutine afterwards. This is how a test running in
//     the root namespace talks to guests on a segment it has no route to.
//   - HTTPClient is an http.Client whose connections are made that way.
//   - Command runs a program in a namespace with `ip netns exec`.
//
// Add, Delete, Exists, List, Inode and PIDs manage named namespaces and find
// the processes living in them. Namespaces are created and removed with
// iproute2's `ip netns`, which also makes /run/netns a shared mount so that
// deleting a namespace is seen by processes started with `ip netns exec`.
//
// Addresses given to Dial and friends must be IP literals: name resolution
// would run on other threads, outside the namespace.
package netnsutil
