package server

import (
	"context"
	"errors"
	"fmt"
	agentv1 "github.com/ferryvm/ferry/gen/ferry/agent/v1"
	"time"

	"connectrpc.com/connect"
	ferryv1 "github.com/ferryvm/ferry/gen/ferry/v1"
	"github.com/ferryvm/ferry/internal/failpoint"
	"github.com/ferryvm/ferry/internal/placement"
	"github.com/ferryvm/ferry/internal/revert"
	"github.com/ferryvm/ferry/internal/spec"
	"github.com/ferryvm/ferry/internal/store"
	"google.golang.org/protobuf/types/known/timestamppb"
)

type vmService struct{ s *Server }

// invalidSpec turns a validation error into InvalidArgument with a
// BadRequest detail listing every bad field.
func invalidSpec(err error) error {
	ce := connect.NewError(connect.CodeInvalidArgument, err)
	var ve *spec.ValidationError
	if errors.As(err, &ve) {
		if d, derr := connect.NewErrorDetail(spec.ToBadRequest(ve)); derr == nil {
			ce.AddDetail(d)
		}
	}
	return ce
}

// CreateVM validates the spec, places the VM (holding its room with a
// reservation until it is recorded), records it and starts it on its host.
// If starting fails or its reply is lost, the undo removes the VM from the
// host (undoCreate) and only then the record: nothing is left behind.
func (v *vmService) CreateVM(ctx context.Context, req *connect.Request[ferryv1.CreateVMRequest]) (*connect.Response[ferryv1.CreateVMResponse], error) {
	ctx, cancel := v.s.boundOp(ctx)
	defer cancel()
	s := v.s
	sp := req.Msg.GetSpec()
	if sp == nil {
		return nil, connect.NewError(connect.CodeInvalidArgument, errors.New("spec: required"))
	}
	spec.Default(sp)
	if err := spec.Validate(sp); err != nil {
		return nil, invalidSpec(err)
	}
	name := sp.Name
	unlock := s.lockVM(name)
	defer unlock()
	if _, err := s.store.GetVM(ctx, name); err == nil {
		return nil, connect.NewError(connect.CodeAlreadyExists, fmt.Errorf("VM %q already exists: delete it first or choose another spec.name", name))
	} else if !store.IsNotFound(err) {
		return nil, connectError(err)
	}
	host, release, err := s.placeAndReserve(ctx, sp, req.Msg.GetHost())
	if err != nil {
		return nil, err
	}
	defer release()
	if err := pinMachineType(sp, host); err != nil { // compat.go
		return nil, err
	}
	desired := "running"
	if req.Msg.NoStart {
		desired = "stopped"
	}
	vm := &ferryv1.VM{Spec: sp, Host: host.Name, Generation: 1, DesiredState: desired, State: "pending", CreatedAt: timestamppb.Now()}
	if req.Msg.NoStart {
		vm.State = "stopped"
	}
	r := revert.New()
	defer r.Fail()
	if err := s.store.CreateVM(ctx, vm); err != nil {
		return nil, connectError(err)
	}
	started := false // a StartVM was sent: its QEMU may run even if the reply never came
	undone := ""     // what the undo did, for the error
	r.Add(func() { undone = s.undoCreate(context.WithoutCancel(ctx), name, host, started) })
	if !req.Msg.NoStart {
		started = true
		vm, err = s.startOn(ctx, vm, host)
		if err != nil {
			r.Fail()
			return nil, withNote(err, undone)
		}
	}
	r.Success()
	s.log.Info("VM created", "vm", name, "host", host.Name, "state", vm.State)
	return connect.NewResponse(&ferryv1.CreateVMResponse{Vm: vm}), nil
}

// pickHost returns the pinned host (which must be ready) or lets placement
// choose among ready hosts, excluding those in exclude. VMs placed on a
// host and the reservations held there both count.
func (s *Server) pickHost(ctx context.Context, sp *ferryv1.VMSpec, pinned string, exclude []string) (*ferryv1.Host, error) {
	hosts, err := s.store.ListHosts(ctx)
	if err != nil {
		return nil, connectError(err)
	}
	alloc, err := s.allocated(ctx)
	if err != nil {
		return nil, connectError(err)
	}
	groups, err := s.antiAffinityGroups(ctx, sp)
	if err != nil {
		return nil, connectError(err)
	}
	byName := map[string]*ferryv1.Host{}
	cands := make([]placement.Host, 0, len(hosts))
	for _, h := range hosts {
		byName[h.Name] = h
		a := alloc[h.Name]
		cands = append(cands, placement.Host{
			Name: h.Name, Ready: schedulable(h),
			CPUs: int(h.GetCapacity().GetCpus()), MemoryMiB: h.GetCapacity().GetMemoryMib(),
			AllocatedVCPUs: a.VCPUs, AllocatedMemoryMiB: a.MemoryMiB, Groups: groups[h.Name],
			DiskFreeBytes: h.GetCapacity().GetDiskFreeBytes(),
		})
	}
	if pinned != "" {
		h, ok := byName[pinned]
		if !ok {
			return nil, connect.NewError(connect.CodeNotFound, fmt.Errorf("host %q is not registered (see `ferry host list`)", pinned))
		}
		if why := unschedulableWhy(h); why != "" {
			return nil, connect.NewError(connect.CodeFailedPrecondition, fmt.Errorf("host %q is %s: choose a ready host (see `ferry host list`)", pinned, why))
		}
		return h, nil
	}
	name, err := placement.Choose(cands, placement.Request{VCPUs: int(sp.Vcpus), MemoryMiB: sp.MemoryMib, Exclude: exclude, AntiAffinity: sp.GetAntiAffinity(),
		DiskBytes: newDiskBytes(sp)})
	if err != nil {
		return nil, connect.NewError(connect.CodeResourceExhausted, err)
	}
	return byName[name], nil
}

// startOn asks host's agent to start vm and records the result. On failure
// the record is marked failed with the agent's error and the error returned.
func (s *Server) startOn(ctx context.Context, vm *ferryv1.VM, host *ferryv1.Host) (*ferryv1.VM, error) {
	actx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	began := time.Now()
	resp, err := s.agents.get(host.Address).StartVM(actx, connect.NewRequest(&agentv1.AgentStartVMRequest{Spec: vm.Spec}))
	if err == nil {
		s.fix.observeStart(time.Since(began)) // a migration's destination starts a QEMU too
	}
	if err == nil {
		// A lost reply: the agent started the VM but the server never hears.
		err = failpoint.Inject("server/after-agent-start")
	}
	name := vm.Spec.Name
	if err != nil {
		err = fmt.Errorf("start VM %s on host %s: %w", name, host.Name, err)
		if _, uerr := s.store.UpdateVM(context.WithoutCancel(ctx), name, false, func(cur *ferryv1.VM) error {
			cur.State = "failed"
			cur.Message = err.Error()
			return nil
		}); uerr != nil && !store.IsNotFound(uerr) {
			s.log.Error("record start failure", "vm", name, "err", uerr)
		}
		return nil, agentError(err)
	}
	return s.store.UpdateVM(ctx, name, true, func(cur *ferryv1.VM) error {
		cur.DesiredState = "running"
		applyStatus(cur, resp.Msg.Status)
		return nil
	})
}

// agentError keeps an agent's Connect code (e.g. InvalidArgument for a
// kernel missing on that host) and wraps the message with context.
func agentError(err error) error {
	var ce *connect.Error
	if errors.As(err, &ce) {
		out := connect.NewError(ce.Code(), err)
		for _, d := range ce.Details() {
			out.AddDetail(d)
		}
		return out
	}
	return connect.NewError(connect.CodeUnavailable, err)
}

// GetVM returns one VM record.
func (v *vmService) GetVM(ctx context.Context, req *connect.Request[ferryv1.GetVMRequest]) (*connect.Response[ferryv1.GetVMResponse], error) {
	vm, err := v.s.store.GetVM(ctx, req.Msg.GetName())
	if err != nil {
		return nil, connectError(err)
	}
	return connect.NewResponse(&ferryv1.GetVMResponse{Vm: vm}), nil
}

// ListVMs returns every VM record.
func (v *vmService) ListVMs(ctx context.Context, _ *connect.Request[ferryv1.ListVMsRequest]) (*connect.Response[ferryv1.ListVMsResponse], error) {
	vms, err := v.s.store.ListVMs(ctx)
	if err != nil {
		return nil, connectError(err)
	}
	return connect.NewResponse(&ferryv1.ListVMsResponse{Vms: vms}), nil
}

// StartVM starts a stopped or failed VM on the host that owns it.
func (v *vmService) StartVM(ctx context.Context, req *connect.Request[ferryv1.StartVMRequest]) (*connect.Response[ferryv1.StartVMResponse], error) {
	s := v.s
	name := req.Msg.GetName()
	ctx, vm, done, err := s.beginVMOp(ctx, name)
	defer done()
	if err != nil {
		return nil, err
	}
	switch vm.State {
	case "running":
		return connect.NewResponse(&ferryv1.StartVMResponse{Vm: vm}), nil
	case "paused":
		return nil, connect.NewError(connect.CodeFailedPrecondition, fmt.Errorf("VM %s is paused on host %s (its state may have been sent to another host by a migration): stop it (`ferry vm stop %s`) and start it again for a new boot", name, vm.Host, name))
	}
	host, err := s.store.GetHost(ctx, vm.Host)
	if err != nil {
		return nil, connectError(err)
	}
	if host.State != "ready" {
		return nil, connect.NewError(connect.CodeFailedPrecondition, fmt.Errorf("VM %s's host %s is %s", name, host.Name, host.State))
	}
	if vm, err = s.store.UpdateVM(ctx, name, false, func(cur *ferryv1.VM) error {
		cur.State, cur.DesiredState, cur.Message = "pending", "running", ""
		return nil
	}); err != nil {
		return nil, connectError(err)
	}
	vm, err = s.startOn(ctx, vm, host)
	if err != nil {
		return nil, err
	}
	return connect.NewResponse(&ferryv1.StartVMResponse{Vm: vm}), nil
}

// StopVM stops a VM's QEMU on its host; the VM keeps its host and disks.
func (v *vmService) StopVM(ctx context.Context, req *connect.Request[ferryv1.StopVMRequest]) (*connect.Response[ferryv1.StopVMResponse], error) {
	s := v.s
	name := req.Msg.GetName()
	ctx, vm, done, err := s.beginVMOp(ctx, name)
	defer done()
	if err != nil {
		return nil, err
	}
	host, err := s.store.GetHost(ctx, vm.Host)
	if err != nil {
		return nil, connectError(err)
	}
	if _, err := s.store.UpdateVM(ctx, name, false, func(cur *ferryv1.VM) error { cur.DesiredState = "stopped"; return nil }); err != nil {
		return nil, connectError(err)
	}
	actx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	resp, err := s.agents.get(host.Address).StopVM(actx, connect.NewRequest(&agentv1.AgentStopVMRequest{Name: name, Force: req.Msg.Force}))
	if err != nil {
		return nil, agentError(fmt.Errorf("stop VM %s on host %s: %w", name, host.Name, err))
	}
	vm, err = s.store.UpdateVM(ctx, name, true, func(cur *ferryv1.VM) error {
		applyStatus(cur, resp.Msg.Status)
		return nil
	})
	if err != nil {
		return nil, connectError(err)
	}
	return connect.NewResponse(&ferryv1.StopVMResponse{Vm: vm}), nil
}

// DeleteVM stops the VM, removes its files on its host and its record.
func (v *vmService) DeleteVM(ctx context.Context, req *connect.Request[ferryv1.DeleteVMRequest]) (*connect.Response[ferryv1.DeleteVMResponse], error) {
	s := v.s
	name := req.Msg.GetName()
	ctx, vm, done, err := s.beginVMOp(ctx, name)
	defer done()
	if err != nil {
		return nil, err
	}
	host, err := s.store.GetHost(ctx, vm.Host)
	if err != nil && !store.IsNotFound(err) {
		return nil, connectError(err)
	}
	if host != nil {
		if host.State != "ready" {
			return nil, connect.NewError(connect.CodeFailedPrecondition, fmt.Errorf("VM %s's host %s is unreachable: its QEMU may still run; bring the host back, then delete", name, host.Name))
		}
		actx, cancel := context.WithTimeout(ctx, s.timeout)
		defer cancel()
		if _, err := s.agents.get(host.Address).DeleteVM(actx, connect.NewRequest(&agentv1.AgentDeleteVMRequest{Name: name})); err != nil {
			return nil, agentError(fmt.Errorf("delete VM %s on host %s: %w", name, host.Name, err))
		}
	}
	if err := s.store.DeleteVM(ctx, name); err != nil {
		return nil, connectError(err)
	}
	s.log.Info("VM deleted", "vm", name)
	return connect.NewResponse(&ferryv1.DeleteVMResponse{}), nil
}

// Console relays the VM's serial output from its host's agent.
func (v *vmService) Console(ctx context.Context, req *connect.Request[ferryv1.ConsoleRequest], stream *connect.ServerStream[ferryv1.ConsoleChunk]) error {
	s := v.s
	vm, err := s.store.GetVM(ctx, req.Msg.GetName())
	if err != nil {
		return connectError(err)
	}
	host, err := s.store.GetHost(ctx, vm.Host)
	if err != nil {
		return connectError(err)
	}
	in, err := s.agents.get(host.Address).Console(ctx, connect.NewRequest(req.Msg))
	if err != nil {
		return agentError(err)
	}
	defer in.Close()
	for in.Receive() {
		if err := stream.Send(in.Msg()); err != nil {
			return err
		}
	}
	if err := in.Err(); err != nil {
		return agentError(err)
	}
	return nil
}

// antiAffinityGroups counts, per host, the other VMs of each of sp's
// anti-affinity groups placed there (none when sp has no group).
func (s *Server) antiAffinityGroups(ctx context.Context, sp *ferryv1.VMSpec) (map[string]map[string]int, error) {
	if len(sp.GetAntiAffinity()) == 0 {
		return map[string]map[string]int{}, nil
	}
	vms, err := s.store.ListVMs(ctx)
	if err != nil {
		return nil, err
	}
	return groupsByHost(vms, sp.GetName()), nil
}

// groupsByHost counts, per host, the VMs of each anti-affinity group
// placed there (skip: a VM not to count).
func groupsByHost(vms []*ferryv1.VM, skip string) map[string]map[string]int {
	out := map[string]map[string]int{}
	for _, vm := range vms {
		if vm.Spec.GetName() == skip && skip != "" {
			continue
		}
		for _, g := range vm.Spec.GetAntiAffinity() {
			if out[vm.Host] == nil {
				out[vm.Host] = map[string]int{}
			}
			out[vm.Host][g]++
		}
	}
	return out
}
