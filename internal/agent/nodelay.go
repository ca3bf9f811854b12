package agent

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"strings"
	"time"

	"github.com/ferryvm/ferry/internal/qemusock"
	"github.com/ferryvm/ferry/internal/qmp"
)

// noDelayEvery is how often keepNoDelay looks for QEMU's new migration
// sockets (post-copy opens its preempt channel at the switch, a recovery
// opens new ones).
const noDelayEvery = 200 * time.Millisecond

// uriEndpoint is the address of a "tcp:HOST:PORT" migration URI.
func uriEndpoint(uri string) (netip.AddrPort, error) {
	hp, ok := strings.CutPrefix(uri, "tcp:")
	if !ok {
		return netip.AddrPort{}, fmt.Errorf("migration URI %q: want tcp:IP:PORT", uri)
	}
	ap, err := netip.ParseAddrPort(hp)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("migration URI %q: %w", uri, err)
	}
	return ap, nil
}

// keepNoDelay turns Nagle's algorithm off on the migration sockets of the
// VM's QEMU (every TCP stream whose either end is the destination's
// address in uri, so a recovery's new port too; see package qemusock for
// why) until the migration has ended or QEMU has gone. It runs on both the
// source and the destination, at most one per VM at a time; errors are
// logged once, never fatal: the migration works without it, only its
// faulted pages wait longer.
func (v *vm) keepNoDelay(id, uri string) {
	ep, err := uriEndpoint(uri)
	if err != nil {
		v.a.log.Warn("TCP_NODELAY not set on the migration sockets", "vm", v.name, "migration", id, "err", err)
		return
	}
	v.mu.Lock()
	proc, mon := v.proc, v.mon
	v.mu.Unlock()
	if proc == nil || mon == nil || !v.noDelay.CompareAndSwap(false, true) {
		return
	}
	defer v.noDelay.Store(false)
	set := qemusock.NewSetter(proc.PID(), qemusock.Host(ep.Addr()))
	warned, seen := false, false
	total := 0
	for {
		n, err := set.Apply()
		total += n
		if n > 0 {
			v.a.log.Debug("TCP_NODELAY set on QEMU's migration sockets", "vm", v.name, "migration", id, "sockets", n)
		}
		if errors.Is(err, os.ErrNotExist) || errors.Is(err, qemusock.ErrUnsupported) {
			if errors.Is(err, qemusock.ErrUnsupported) {
				v.a.log.Warn("TCP_NODELAY not set on the migration sockets", "vm", v.name, "migration", id, "err", err)
			}
			return
		}
		if err != nil && !warned {
			warned = true
			v.a.log.Warn("TCP_NODELAY on a migration socket", "vm", v.name, "migration", id, "err", err)
		}
		if migrationEnded(mon, &seen) {
			v.a.log.Info("migration sockets had TCP_NODELAY set", "vm", v.name, "migration", id, "sockets", total)
			return
		}
		time.Sleep(noDelayEvery)
	}
}

// migrationEnded reports whether QEMU's migration (either direction) has
// completed, failed or been cancelled, is none after it had begun (*seen),
// or QEMU no longer answers.
func migrationEnded(mon *qmp.Monitor, seen *bool) bool {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	info, err := mon.QueryMigrate(ctx)
	if err != nil {
		return errors.Is(err, qmp.ErrClosed)
	}
	s := info.CurrentStatus()
	if s == qmp.MigrationStatusNone {
		return *seen
	}
	*seen = true
	return s.Finished()
}
