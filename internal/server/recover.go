package server

import (
	"context"
	"errors"
	"time"

	"github.com/ferryvm/ferry/internal/migration"
)

// errRestarted is the cause recorded for migrations a restart interrupted.
var errRestarted = errors.New("the control plane restarted during the migration")

// RecoverMigrations resumes the migrations a previous server left in flight:
// those past the point of no return are driven forward, the others rolled
// back. It returns once each has been handed to a driver.
func (s *Server) RecoverMigrations(ctx context.Context) error {
	ms, err := s.store.ListMigrations(ctx)
	if err != nil {
		return err
	}
	for _, m := range ms {
		st := migration.State(m.State)
		if st.Terminal() || m.Status != "running" {
			continue
		}
		vm, err := s.store.GetVM(ctx, m.Vm)
		if err != nil {
			s.log.Error("recover migration: VM record", "id", m.Id, "err", err)
			continue
		}
		src, err1 := s.store.GetHost(ctx, m.From)
		dst, err2 := s.store.GetHost(ctx, m.To)
		if err := errors.Join(err1, err2); err != nil {
			s.log.Error("recover migration: hosts", "id", m.Id, "err", err)
			continue
		}
		r := &run{m: m, cancel: make(chan struct{}), started: m.StartedAt.AsTime()}
		d := &driver{s: s, r: r, vm: vm, src: s.agents.get(src.Address), dst: s.agents.get(dst.Address),
			prevState: "running", outgoingStarted: true, transferStart: m.StartedAt.AsTime()}
		// The CAS is the commit: a server that died between the CAS and
		// persisting "resuming" left the owner already moved.
		ownerMoved := vm.Host == m.To && vm.MigrationId == m.Id
		s.runsMu.Lock()
		s.runs[m.Id] = r
		s.runsMu.Unlock()
		s.log.Warn("recovering migration", "id", m.Id, "vm", m.Vm, "state", st)
		go func() {
			defer func() {
				s.runsMu.Lock()
				delete(s.runs, m.Id)
				s.runsMu.Unlock()
				s.releaseReservation(m.Id)
			}()
			rctx := context.Background()
			switch {
			case (st == migration.Transferring || st == migration.Switchover || st == migration.Copying) && ownerMoved:
				// The switchover steps are persisted after the guest's pause;
				// the owner record says the CAS happened.
				if st != migration.Switchover {
					ev := migration.EvPreSwitchover
					if m.Strategy == "cold" {
						ev = migration.EvCopied
					}
					if d.advance(ev, "recovering after a control-plane restart", false) != nil {
						return
					}
				}
				if d.step(migration.EvCommitted, "recovering after a control-plane restart: the owner CAS had succeeded") != nil {
					return
				}
				if m.Strategy == "cold" {
					d.coldForward(rctx, time.Now())
				} else {
					d.forward(rctx)
				}
			case st == migration.RollingBack:
				d.undo(rctx, errRestarted)
			case st == migration.Unswitching:
				d.unswitchResume(rctx)
			case st.Committed() && m.Strategy != "cold":
				d.note("recovering after a control-plane restart: driving forward")
				d.forward(rctx)
			case st.Committed():
				d.note("recovering after a control-plane restart: the owner is the destination")
				d.coldForward(rctx, time.Now())
			default:
				d.rollback(rctx, errRestarted)
			}
		}()
	}
	return nil
}

// unswitchResume finishes an interrupted unswitch.
func (d *driver) unswitchResume(ctx context.Context) {
	m := d.r.snapshot(false)
	if cur, err := d.s.store.GetVM(ctx, m.Vm); err == nil && cur.Host != m.From {
		if err := d.switchOwner(ctx, m.From); err != nil {
			d.fail(err)
			return
		}
	}
	if err := d.step(migration.EvUnswitched, "owner back to "+m.From); err != nil {
		return
	}
	d.undo(ctx, errRestarted)
}
