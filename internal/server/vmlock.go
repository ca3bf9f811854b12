package server

import (
	"context"
	"errors"
	"fmt"
	"time"

	"connectrpc.com/connect"
	agentv1 "github.com/ferryvm/ferry/gen/ferry/agent/v1"
	ferryv1 "github.com/ferryvm/ferry/gen/ferry/v1"
	"github.com/ferryvm/ferry/internal/migration/exec"
	"github.com/ferryvm/ferry/internal/store"
)

// Bounds of clearing a stale migration lock.
const (
	// observeTimeout bounds asking the owner's agent what its QEMU does.
	observeTimeout = 5 * time.Second
	// staleAbortTimeout bounds asking a failed migration's destination to
	// remove what it may still hold.
	staleAbortTimeout = 10 * time.Second
	// settleTimeout bounds settleMigrationLock as a whole.
	settleTimeout = 30 * time.Second
)

// errMigrationInFlight is wrapped by the refusal of a VM operation while a
// migration of the VM really runs.
var errMigrationInFlight = errors.New("a migration of the VM is in flight")

// migrationInFlight reports whether migration id is still running: driven
// here, or with a persisted record that is not terminal (another replica,
// or the recovery of a restarted server, drives it). A missing record or a
// terminal one means the VM's lock on it is stale. m is the record, if any.
func (s *Server) migrationInFlight(ctx context.Context, id string) (bool, *ferryv1.Migration, error) {
	if m, ok := s.engine.Get(id, false); ok && m.Status == "running" {
		return true, m, nil
	}
	pr, err := s.store.GetMigration(ctx, id)
	switch {
	case store.IsNotFound(err):
		return false, nil, nil
	case err != nil:
		return false, nil, err
	}
	m := exec.Render(pr)
	return m.Status == "running", m, nil
}

// beginVMOp is the start of starting, stopping and deleting a VM: the
// operation's context bounded (boundOp), the VM's lockVM taken and its
// record read through settleMigrationLock. done releases both; it is
// never nil, also with an error (a Connect error), and the caller defers
// it.
func (s *Server) beginVMOp(ctx context.Context, name string) (_ context.Context, vm *ferryv1.VM, done func(), err error) {
	ctx, cancel := s.boundOp(ctx)
	unlock := s.lockVM(name)
	done = func() { unlock(); cancel() }
	if vm, err = s.store.GetVM(ctx, name); err != nil {
		return ctx, nil, done, connectError(err)
	}
	vm, err = s.settleMigrationLock(ctx, vm)
	return ctx, vm, done, err
}

// settleMigrationLock is the first step of every VM operation (start,
// stop, delete, migrate). A VM locked by a migration that is really in
// flight is refused with a message naming the migration and how to cancel
// it. A VM left `migrating` (or holding a migration id) by a migration
// whose record is terminal or missing is unlocked first — logged — and its
// state taken from what its host's agent reports, so the operation can go
// on from there. The caller holds the VM's lockVM.
func (s *Server) settleMigrationLock(ctx context.Context, vm *ferryv1.VM) (*ferryv1.VM, error) {
	name, id := vm.Spec.GetName(), vm.MigrationId
	if vm.State != "migrating" && id == "" {
		return vm, nil
	}
	ctx, cancel := context.WithTimeout(ctx, settleTimeout)
	defer cancel()
	var m *ferryv1.Migration
	if id != "" {
		inFlight, rec, err := s.migrationInFlight(ctx, id)
		if err != nil {
			return nil, connectError(fmt.Errorf("VM %s: read its migration %s: %w", name, id, err))
		}
		if inFlight {
			return nil, connect.NewError(connect.CodeFailedPrecondition, fmt.Errorf(
				"VM %s is being migrated by %s (%s → %s, %s): %w; wait for it to end (`ferry migration get %s`) or cancel it with `ferry migration cancel %s`",
				name, id, rec.GetFrom(), rec.GetTo(), rec.GetState(), errMigrationInFlight, id, id))
		}
		m = rec
	}
	why := "its migration record is missing"
	if m != nil {
		why = fmt.Sprintf("its migration ended %s (state %s)", m.Status, m.State)
	}
	s.log.Warn("clearing a stale migration lock", "vm", name, "migration", id, "state", vm.State, "why", why)
	if m != nil && m.To != "" && m.To != vm.Host {
		s.abortStaleDestination(ctx, name, m)
	}
	st, serr := s.observeOwner(ctx, vm)
	out, err := s.store.UpdateVM(ctx, name, false, func(cur *ferryv1.VM) error {
		if cur.MigrationId != id || (cur.State != "migrating" && id == "") {
			return errSkip // changed meanwhile: take it as it is now
		}
		cur.MigrationId = ""
		if serr != nil {
			cur.State = "failed"
			cur.Message = fmt.Sprintf("lock of migration %s cleared (%s); the state on host %s is unknown: %v", id, why, cur.Host, serr)
			return nil
		}
		applyStatus(cur, st)
		if cur.State == "failed" && cur.Message == "" {
			cur.Message = fmt.Sprintf("QEMU is not running on %s (lock of migration %s cleared: %s)", cur.Host, id, why)
		}
		return nil
	})
	if errors.Is(err, errSkip) {
		return s.store.GetVM(ctx, name)
	}
	if err != nil {
		return nil, connectError(fmt.Errorf("VM %s: clear the stale lock of migration %s: %w", name, id, err))
	}
	s.log.Info("stale migration lock cleared", "vm", name, "migration", id, "state", out.State, "host", out.Host)
	return out, nil
}

// observeOwner asks the VM's host what its QEMU does (nil status: not
// there). When the agent cannot be asked, the host's last heartbeat report
// answers if the host is ready.
func (s *Server) observeOwner(ctx context.Context, vm *ferryv1.VM) (*ferryv1.VMStatus, error) {
	name := vm.Spec.GetName()
	host, err := s.store.GetHost(ctx, vm.Host)
	if err != nil {
		return nil, fmt.Errorf("host %s: %w", vm.Host, err)
	}
	cctx, cancel := context.WithTimeout(ctx, observeTimeout)
	defer cancel()
	resp, err := s.agents.get(host.Address).GetVM(cctx, connect.NewRequest(&agentv1.AgentGetVMRequest{Name: name}))
	switch {
	case err == nil:
		return resp.Msg.Status, nil
	case connect.CodeOf(err) == connect.CodeNotFound:
		return nil, nil
	case host.State == "ready":
		for _, st := range host.Vms {
			if st.Name == name {
				return st, nil
			}
		}
		return nil, nil
	}
	return nil, fmt.Errorf("agent of host %s: %w", host.Name, err)
}

// abortStaleDestination asks an ended migration's destination to remove
// what it may still hold of the VM. AbortIncoming is idempotent and refuses
// (FailedPrecondition) to kill a destination that has run, so this never
// removes a VM that is the real one. Best effort, bounded, logged.
func (s *Server) abortStaleDestination(ctx context.Context, name string, m *ferryv1.Migration) {
	dst, err := s.store.GetHost(ctx, m.To)
	if err != nil || dst.State != "ready" {
		s.log.Warn("stale lock: destination not asked to clean up", "vm", name, "migration", m.Id, "host", m.To, "err", err)
		return
	}
	cctx, cancel := context.WithTimeout(ctx, staleAbortTimeout)
	defer cancel()
	if _, err := s.agents.get(dst.Address).mig.AbortIncoming(cctx, connect.NewRequest(&agentv1.MigrationStepRequest{Name: name, MigrationId: m.Id})); err != nil {
		s.log.Warn("stale lock: destination cleanup", "vm", name, "migration", m.Id, "host", m.To, "err", err)
	}
}
