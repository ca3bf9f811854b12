// Package linkemu emulates a network link between two Ethernet interfaces:
// one-way delay with jitter, random loss, a rate limit (a token-bucket
// transmitter with a bounded queue) and "down" (every frame dropped). It
// exists because the dev cluster's kernel has no netem qdisc.
//
// The package has two layers:
//
//   - Pipe is one direction of the link as a pure value: frames are pushed
//     with the current time and popped when due. It never reads a clock or
//     starts a goroutine, so its tests drive it with explicit times.
//   - Forwarder is the thin executor: two AF_PACKET sockets bound to two
//     interfaces, one Pipe per direction, the wall clock and a goroutine per
//     direction for reading and for sending. Serve exposes the forwarder's
//     parameters and counters on a unix control socket; Get and Set are the
//     matching clients.
//
// Frames must stay within the MTU for loss and rate to be per packet, so
// DisableOffloads turns off segmentation, receive coalescing and checksum
// offload on the interfaces that transmit into the forwarder (with the
// legacy ethtool ioctls): checksums are then filled in before a frame
// reaches the forwarder, which passes it on byte for byte.
package linkemu
