// Package qemu is Ferry's QEMU driver: it renders a VM's command line as
// data (Args), runs and re-attaches to QEMU processes (Start, Attach,
// Process) and picks the accelerator (ResolveAccel).
//
// A VM's QEMU lives in its own directory (PathsFor) holding the QMP
// socket, serial log, pidfile and QEMU's own log. QEMU runs detached from
// the agent: its own process group, output to a file, so it survives an
// agent crash or restart, after which Attach finds it again through the
// pidfile. The command line is deterministic so the source and destination
// of a live migration get the same devices, ids and block node names.
package qemu
