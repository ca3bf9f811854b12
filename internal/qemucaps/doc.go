// Package qemucaps finds out what a QEMU binary can do and answers
// questions about it:
//
//   - Parse turns the replies of query-version, query-machines,
//     query-cpu-definitions, query-migrate-capabilities, query-qmp-schema
//     and qom-list-types into Caps (pure; tested against replies recorded
//     from QEMU 10.0 and hand-written ones for 7.2);
//   - Probe runs the binary once as `-machine none` with a QMP socket,
//     collects those replies and caches the result by binary path, size and
//     modification time;
//   - Require refuses a feature the binary lacks, naming the QEMU version
//     that has it;
//   - ResolveMachine turns a machine alias such as "q35" into the versioned
//     type it stands for ("pc-q35-10.0"), which is what a VM is pinned to;
//   - CheckDestination says whether a host can receive a VM (machine type,
//     CPU model, devices) and what would fix it if not.
package qemucaps
