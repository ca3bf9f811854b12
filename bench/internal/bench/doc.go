// Package bench is the side-by-side live-migration benchmark behind
// `make bench`: Ferry, plain QEMU with its defaults, and libvirt migrate
// the same test guest between the same two namespaced hosts of one dev
// cluster, under the same shaped link, and every run is measured from the
// outside the same way (client-seen stream gap, guest boot_id, achieved
// dirty rate, non-zero guest memory).
//
// Layout:
//
//   - run.go: the benchmark loop (scenarios × runs × systems) and results;
//   - env.go: the dev cluster, link shaping (tc) and the bandwidth probe;
//   - guest.go: the guest definition and the outside measurements;
//   - ferry.go, qemu.go, libvirt.go: the three Systems;
//   - proc.go: running commands and daemons inside namespaces.
//
// Everything the benchmark starts (processes, namespaces, taps, libvirt
// mount namespaces, qdiscs) is stopped or removed on every path, and the
// namespaced addresses (198.18.0.0/15) are only ever dialled from inside
// the cluster's namespaces.
package bench
