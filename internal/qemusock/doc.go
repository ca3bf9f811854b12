// Package qemusock sets TCP options on sockets another process (QEMU)
// opened itself.
//
// QEMU 10 turns Nagle's algorithm off only on its multifd channels: a
// migration's main channel (which carries a post-copy's page requests
// back to the source) and its postcopy-preempt channel (which carries the
// pages the guest faulted on) keep it on. A faulted page is one write of
// a little more than 4 KiB, so its last segment is small; with Nagle on,
// the next page's last segment waits until that one is acknowledged, and
// the receiver may delay its ACK up to 40 ms. A post-copy guest whose vCPU
// stalls on every missing page pays that per fault (docs/migration.md,
// "Socket options").
//
// No QMP command or migration URI option sets TCP_NODELAY, so the agent
// copies each matching descriptor out of QEMU with pidfd_getfd(2) (root
// with CAP_SYS_PTRACE; QEMU is the agent's child or was found by it), sets
// the option on the copy and closes it: the option belongs to the socket,
// which QEMU goes on using unchanged.
package qemusock
