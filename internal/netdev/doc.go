// Package netdev creates the tap devices and bridges that connect QEMU
// guests to a host's network.
//
// Every function works in the network namespace of the calling thread: in
// the agent that is the agent's own namespace. To work in another one, call
// it inside netnsutil.Do.
//
// Taps are made persistent with IFF_TAP|IFF_NO_PI, single queue and
// without IFF_VNET_HDR, owned by root, so that a QEMU running as root in the
// same namespace attaches to them with
//
//	-netdev tap,id=ID,ifname=NAME,script=no,downscript=no,vhost=off
//
// QEMU re-sets IFF_VNET_HDR itself when it attaches (the kernel lets each
// attach choose it), but the multi-queue flag must match: a single-queue
// QEMU netdev cannot attach to a tap created with IFF_MULTI_QUEUE (EINVAL,
// "could not configure /dev/net/tun"). QEMU must run in the namespace that
// holds the tap: elsewhere it silently creates a new, unbridged tap of the
// same name.
//
// Bridges made by CreateBridge have STP off and a forward delay of 0, so a
// new port forwards as soon as its carrier is up.
package netdev
