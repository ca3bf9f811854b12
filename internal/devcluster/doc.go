// Package devcluster builds a multi-host Ferry test bed on one machine out
// of network namespaces, and tears it down again. It is the library behind
// `ferry dev cluster up/down` and the end-to-end tests.
//
// For N hosts and the namespace name prefix P (default "ferry") Up makes:
//
//	P-seg      bridge seg0 (no address): the shared L2 segment
//	             ports h1..hN and client, the far ends of the veths below
//	P-h1..hN   bridge br0 = 198.18.0.i/15, veth uplink enslaved to br0
//	             (VM taps are added to br0 later by the agent)
//	P-client   veth eth0 = 198.18.0.250/15
//
// Every host bridge, the client and every guest (198.19.x.y/15, on taps in
// a host's br0) share one L2 segment and one /15 subnet, so everything is
// on-link: the only route in each namespace is the connected 198.18.0.0/15,
// and there is no default route anywhere, so nothing can leave the machine.
// Bridges have STP off and forward_delay 0 (ports forward at once);
// ip_forward is 0, rp_filter is 0 and bridge netfilter hooks are off in
// every namespace, whatever the root namespace's settings are (new
// namespaces copy the root's IPv4 settings).
//
// Up records what it made in DIR/cluster.json (DIR defaults to
// /run/ferry-dev/P) before making it, and undoes its work if it fails.
// StartProcess runs a daemon inside one of the namespaces, detached in its
// own session, and records it there too. Down stops the recorded processes
// (after checking /proc/PID/cmdline and start time, so a reused PID is left
// alone), then every process still inside the cluster's namespaces (found
// by namespace inode: this catches the QEMUs an agent started), then
// deletes the namespaces, which removes their links. Down finds namespaces
// both from the state file and by the prefix, so it also cleans up after a
// crash half-way through Up, and it is idempotent.
//
// Everything needs root and iproute2's ip.
package devcluster
