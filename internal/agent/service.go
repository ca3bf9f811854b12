package agent

import (
	"context"
	"errors"
	"fmt"
	agentv1 "github.com/ferryvm/ferry/gen/ferry/agent/v1"
	"io"
	"os"
	"sort"
	"time"

	"connectrpc.com/connect"
	ferryv1 "github.com/ferryvm/ferry/gen/ferry/v1"
	"github.com/ferryvm/ferry/internal/spec"
)

// service implements agentv1connect.AgentServiceHandler.
type service struct{ a *Agent }

// StartVM boots a VM from its spec (idempotent when it already runs).
func (s *service) StartVM(ctx context.Context, req *connect.Request[agentv1.AgentStartVMRequest]) (*connect.Response[agentv1.AgentStartVMResponse], error) {
	sp := req.Msg.GetSpec()
	if sp == nil {
		return nil, connect.NewError(connect.CodeInvalidArgument, errors.New("spec: required"))
	}
	spec.Default(sp)
	if err := spec.Validate(sp); err != nil {
		return nil, connect.NewError(connect.CodeInvalidArgument, err)
	}
	arr := s.a.arrivalOf(sp.Name)
	if arr != nil {
		arr.mu.Lock()
		verified := arr.verified
		arr.mu.Unlock()
		if !verified {
			// Never boot on a copy the checksum did not verify (nor create
			// empty disks in its place).
			return nil, connect.NewError(connect.CodeFailedPrecondition, fmt.Errorf("VM %s: the copies of its local disks (migration %s) are not verified on host %s", sp.Name, arr.id, s.a.cfg.Name))
		}
	}
	st, err := s.a.getOrCreate(sp.Name).start(ctx, sp)
	if err != nil {
		s.a.forgetIfIdle(sp.Name)
		return nil, err
	}
	if arr != nil {
		s.a.adoptArrival(sp.Name) // the verified copies are the VM's disks now
	}
	return connect.NewResponse(&agentv1.AgentStartVMResponse{Status: st}), nil
}

// forgetIfIdle drops a VM handle whose start failed before it ever ran and
// left no directory behind.
func (a *Agent) forgetIfIdle(name string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	v, ok := a.vms[name]
	if !ok {
		return
	}
	if _, err := os.Stat(v.dir); os.IsNotExist(err) {
		delete(a.vms, name)
	}
}

// StopVM stops a VM's QEMU.
func (s *service) StopVM(ctx context.Context, req *connect.Request[agentv1.AgentStopVMRequest]) (*connect.Response[agentv1.AgentStopVMResponse], error) {
	v, ok := s.a.find(req.Msg.GetName())
	if !ok { // not there: nothing to stop
		return connect.NewResponse(&agentv1.AgentStopVMResponse{Status: &ferryv1.VMStatus{Name: req.Msg.GetName(), State: "stopped"}}), nil
	}
	st, err := v.stop(ctx, req.Msg.GetForce())
	if err != nil {
		return nil, err
	}
	return connect.NewResponse(&agentv1.AgentStopVMResponse{Status: st}), nil
}

// DeleteVM stops a VM and removes its directory (and the disks the agent
// created). Deleting an unknown VM is not an error.
func (s *service) DeleteVM(ctx context.Context, req *connect.Request[agentv1.AgentDeleteVMRequest]) (*connect.Response[agentv1.AgentDeleteVMResponse], error) {
	name := req.Msg.GetName()
	if req.Msg.GetRemoveLocalDisks() && s.a.removeArrival(name, req.Msg.GetMigrationId(), "deleted by the migration") {
		// A cold migration's disk copies arriving here (never a VM of this host).
		return connect.NewResponse(&agentv1.AgentDeleteVMResponse{}), nil
	}
	v, err := s.a.lookup(name)
	if err != nil {
		return connect.NewResponse(&agentv1.AgentDeleteVMResponse{}), nil
	}
	if _, err := v.stop(ctx, true); err != nil {
		return nil, err
	}
	v.archiveLogs("deleted")
	// The source of a cold migration keeps its local disks unless the
	// destination verified its copies (remove_local_disks).
	if err := v.removeDir(req.Msg.GetMigrationId() != "" && !req.Msg.GetRemoveLocalDisks(), "deleted"); err != nil {
		return nil, err
	}
	s.a.mu.Lock()
	delete(s.a.vms, name)
	s.a.mu.Unlock()
	s.a.log.Info("VM deleted", "vm", name)
	return connect.NewResponse(&agentv1.AgentDeleteVMResponse{}), nil
}

// GetVM reports one VM.
func (s *service) GetVM(_ context.Context, req *connect.Request[agentv1.AgentGetVMRequest]) (*connect.Response[agentv1.AgentGetVMResponse], error) {
	v, err := s.a.lookup(req.Msg.GetName())
	if err != nil {
		return nil, err
	}
	return connect.NewResponse(&agentv1.AgentGetVMResponse{Status: v.status()}), nil
}

// ListVMs reports every VM of the host.
func (s *service) ListVMs(_ context.Context, _ *connect.Request[agentv1.AgentListVMsRequest]) (*connect.Response[agentv1.AgentListVMsResponse], error) {
	s.a.mu.Lock()
	vms := make([]*vm, 0, len(s.a.vms))
	for _, v := range s.a.vms {
		vms = append(vms, v)
	}
	s.a.mu.Unlock()
	out := &agentv1.AgentListVMsResponse{}
	for _, v := range vms {
		out.Vms = append(out.Vms, v.status())
	}
	sort.Slice(out.Vms, func(i, j int) bool { return out.Vms[i].Name < out.Vms[j].Name })
	return connect.NewResponse(out), nil
}

// Console streams the serial log from an offset, and new output while
// follow is set and the client listens.
func (s *service) Console(ctx context.Context, req *connect.Request[ferryv1.ConsoleRequest], stream *connect.ServerStream[ferryv1.ConsoleChunk]) error {
	v, err := s.a.lookup(req.Msg.GetName())
	if err != nil {
		return err
	}
	f, err := os.Open(v.paths.SerialLog)
	if os.IsNotExist(err) && req.Msg.Follow {
		for os.IsNotExist(err) {
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(200 * time.Millisecond):
			}
			f, err = os.Open(v.paths.SerialLog)
		}
	}
	if err != nil {
		return connect.NewError(connect.CodeNotFound, fmt.Errorf("serial log of VM %s: %w", v.name, err))
	}
	defer f.Close()
	if _, err := f.Seek(req.Msg.GetOffset(), io.SeekStart); err != nil {
		return fmt.Errorf("seek serial log: %w", err)
	}
	buf := make([]byte, 32<<10)
	for {
		n, err := f.Read(buf)
		if n > 0 {
			if serr := stream.Send(&ferryv1.ConsoleChunk{Data: append([]byte(nil), buf[:n]...)}); serr != nil {
				return serr
			}
			continue
		}
		if err != nil && err != io.EOF {
			return fmt.Errorf("read serial log: %w", err)
		}
		if !req.Msg.Follow {
			return nil
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(200 * time.Millisecond):
		}
	}
}
