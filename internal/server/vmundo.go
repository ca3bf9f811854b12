package server

import (
	"context"
	"errors"
	"fmt"
	"time"

	"connectrpc.com/connect"
	agentv1 "github.com/ferryvm/ferry/gen/ferry/agent/v1"
	ferryv1 "github.com/ferryvm/ferry/gen/ferry/v1"
	"github.com/ferryvm/ferry/internal/store"
)

// Bounds of a failed create's undo on its host (variables so tests can
// shorten them).
var (
	// undoDeleteBudget bounds all attempts to remove a failed create's VM
	// from its host.
	undoDeleteBudget = 45 * time.Second
	// undoDeleteCall bounds one DeleteVM call (it may wait for a start in
	// progress on the agent to end before stopping it).
	undoDeleteCall = 20 * time.Second
	// undoDeletePause is the wait between attempts.
	undoDeletePause = time.Second
)

// undoCreate rolls back a create. When a StartVM was sent (started), the
// agent may run the VM even though the server saw an error (the reply was
// lost, or timed out while QEMU came up), so the VM is first deleted on
// the host — DeleteVM is idempotent — with a bounded retry, and only then
// is the record removed. If the host cannot confirm the removal, the record
// is kept, failed, with what to do: an unrecorded QEMU is never left
// behind knowingly (the agent's orphan reaper is the second line).
//
// It returns what it did, for the create's error.
func (s *Server) undoCreate(ctx context.Context, name string, host *ferryv1.Host, started bool) string {
	ctx, cancel := context.WithTimeout(ctx, undoDeleteBudget+opMargin)
	defer cancel()
	if started {
		if err := s.deleteOnHost(ctx, name, host, undoDeleteBudget); err != nil {
			msg := fmt.Sprintf("create failed and removing the VM from host %s failed too (%v): its QEMU may still run there; run `ferry vm delete %s` once the host answers", host.Name, err, name)
			s.log.Error("undo create: VM kept on record", "vm", name, "host", host.Name, "err", err)
			if _, uerr := s.store.UpdateVM(ctx, name, false, func(cur *ferryv1.VM) error {
				cur.State, cur.DesiredState, cur.Message = "failed", "stopped", msg
				return nil
			}); uerr != nil && !store.IsNotFound(uerr) {
				s.log.Error("undo create: record the failure", "vm", name, "err", uerr)
			}
			return msg
		}
		s.log.Info("undo create: VM removed from its host", "vm", name, "host", host.Name)
	}
	if err := s.store.DeleteVM(ctx, name); err != nil && !store.IsNotFound(err) {
		s.log.Error("undo create: delete record", "vm", name, "err", err)
		return fmt.Sprintf("removing the record of VM %s failed (%v): delete it with `ferry vm delete %s`", name, err, name)
	}
	if started {
		return fmt.Sprintf("VM %s was removed from host %s and not recorded", name, host.Name)
	}
	return fmt.Sprintf("VM %s was not recorded", name)
}

// withNote appends note to err's message, keeping its Connect code and
// details.
func withNote(err error, note string) error {
	if note == "" {
		return err
	}
	var ce *connect.Error
	if !errors.As(err, &ce) {
		return fmt.Errorf("%w; %s", err, note)
	}
	out := connect.NewError(ce.Code(), fmt.Errorf("%s; %s", ce.Message(), note))
	for _, d := range ce.Details() {
		out.AddDetail(d)
	}
	return out
}

// deleteOnHost calls the host agent's DeleteVM until it succeeds, a
// refusal comes back, or budget runs out.
func (s *Server) deleteOnHost(ctx context.Context, name string, host *ferryv1.Host, budget time.Duration) error {
	deadline := time.Now().Add(budget)
	attempt := 0
	for {
		attempt++
		cctx, cancel := context.WithTimeout(ctx, min(undoDeleteCall, time.Until(deadline)))
		_, err := s.agents.get(host.Address).DeleteVM(cctx, connect.NewRequest(&agentv1.AgentDeleteVMRequest{Name: name}))
		cancel()
		if err == nil {
			return nil
		}
		var ce *connect.Error
		if errors.As(err, &ce) && (ce.Code() == connect.CodeInvalidArgument || ce.Code() == connect.CodeFailedPrecondition) {
			return fmt.Errorf("delete VM %s on host %s: refused: %w", name, host.Name, err)
		}
		if time.Until(deadline) < undoDeletePause {
			return fmt.Errorf("delete VM %s on host %s: %d attempts in %s: %w", name, host.Name, attempt, budget, err)
		}
		s.log.Warn("undo create: delete on host failed, retrying", "vm", name, "host", host.Name, "attempt", attempt, "err", err)
		select {
		case <-ctx.Done():
			return fmt.Errorf("delete VM %s on host %s: %w (last error %v)", name, host.Name, ctx.Err(), err)
		case <-time.After(undoDeletePause):
		}
	}
}

// opMargin is added to the agent call timeout and the undo budget to bound
// a whole VM operation (store reads and writes included).
const opMargin = 30 * time.Second

// boundOp bounds one VM operation, so no store or agent call in it waits
// forever even when the client set no deadline.
func (s *Server) boundOp(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, s.timeout+undoDeleteBudget+opMargin)
}
