// Package guest is the home of Ferry's test guest: a tiny Linux initramfs
// whose PID 1 is the static Go program in ./cmd/ferry-guest.
//
// The guest is Ferry's measuring instrument for live migration: it dirties
// memory at a configured rate, writes sequence-numbered records to its disk
// and streams consecutive counters over TCP, so that a migration test can
// observe downtime, throughput and data integrity from the outside.
//
// The contract (kernel command line, ports, /status JSON, serial READY line,
// disk record format) is documented in README.md and encoded for host-side
// callers in package guestapi. Build the kernel+initrd with
// hack/build-guest.sh (or `make guest`).
package guest
