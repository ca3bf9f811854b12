package server

import (
	"context"
	"fmt"
	"github.com/ferryvm/ferry/internal/auth"
	"github.com/ferryvm/ferry/internal/version"
	"time"

	"connectrpc.com/connect"
	ferryv1 "github.com/ferryvm/ferry/gen/ferry/v1"
	"google.golang.org/protobuf/types/known/timestamppb"
)

type hostService struct{ s *Server }

// Heartbeat records an agent's report, renews its lease and reconciles the
// state of the VMs it owns with what it reports.
func (h *hostService) Heartbeat(ctx context.Context, req *connect.Request[ferryv1.HeartbeatRequest]) (*connect.Response[ferryv1.HeartbeatResponse], error) {
	host := req.Msg.GetHost()
	if host.GetName() == "" || host.GetAddress() == "" {
		return nil, connect.NewError(connect.CodeInvalidArgument, fmt.Errorf("heartbeat: host.name and host.address are required"))
	}
	if c, ok := auth.CallerFrom(ctx); ok && c.Role == auth.RoleAgent && c.Host != host.GetName() {
		return nil, connect.NewError(connect.CodePermissionDenied, fmt.Errorf("heartbeat: %s may report only host %s, not %s", c.ID, c.Host, host.GetName()))
	}
	if err := version.Compatible(h.s.version, host.GetFerryVersion()); err != nil {
		h.s.log.Warn("agent refused", "host", host.GetName(), "server_version", h.s.version, "agent_version", host.GetFerryVersion())
		return nil, connect.NewError(connect.CodeFailedPrecondition, fmt.Errorf("heartbeat of host %s: %w", host.GetName(), err))
	}
	if c, ok := auth.CallerFrom(ctx); ok && c.Role == auth.RoleAgent {
		h.s.sec.notePeer(host.GetAddress(), c.Host)
	}
	prev, err := h.s.store.GetHost(ctx, host.Name)
	switch {
	case err == nil:
		host.RegisteredAt = prev.RegisteredAt
		if prev.State == "unreachable" {
			h.s.log.Info("host is back", "host", host.Name)
		}
	default:
		host.RegisteredAt = timestamppb.Now()
		h.s.log.Info("host registered", "host", host.Name, "address", host.Address)
	}
	host.LastSeen = timestamppb.Now()
	if err := h.s.store.PutHost(ctx, host, HostLeaseTTL); err != nil {
		return nil, connectError(err)
	}
	h.s.reconcileHost(ctx, host)
	h.s.noteHealth(host)
	h.s.sampler.Observe(host.Vms, time.Now(), sampleKeep)
	resp := &ferryv1.HeartbeatResponse{LeaseTtlSeconds: int64(HostLeaseTTL / time.Second), ServerVersion: h.s.version}
	h.s.hostExpectation(ctx, host.Name, resp)
	return connect.NewResponse(resp), nil
}

// reconcileHost updates the records of VMs owned by host from its report.
// VMs in a transition (pending, migrating) are left to the operation that
// owns the transition.
func (s *Server) reconcileHost(ctx context.Context, host *ferryv1.Host) {
	if !s.leading() {
		return // a follower stores the heartbeat; the leader reconciles
	}
	reported := map[string]*ferryv1.VMStatus{}
	for _, st := range host.Vms {
		reported[st.Name] = st
	}
	vms, err := s.store.ListVMs(ctx)
	if err != nil {
		s.log.Warn("reconcile: list VMs", "host", host.Name, "err", err)
		return
	}
	for _, vm := range vms {
		if vm.Host != host.Name || vm.State == "pending" || vm.State == "migrating" {
			continue
		}
		st := reported[vm.Spec.GetName()]
		want := observedState(st)
		if want == vm.State && (st == nil || st.Pid == vm.Pid) {
			continue
		}
		unlock := s.lockVM(vm.Spec.GetName())
		_, err := s.store.UpdateVM(ctx, vm.Spec.GetName(), false, func(cur *ferryv1.VM) error {
			if cur.Host != host.Name || cur.State == "pending" || cur.State == "migrating" {
				return errSkip
			}
			applyStatus(cur, st)
			if cur.State == "failed" && cur.Message == "" {
				cur.Message = fmt.Sprintf("QEMU is not running on %s (it exited or was killed)", host.Name)
			}
			return nil
		})
		unlock()
		if err != nil && err != errSkip {
			s.log.Warn("reconcile VM", "vm", vm.Spec.GetName(), "err", err)
		}
	}
}

var errSkip = fmt.Errorf("skip")

// observedState maps an agent's report to a VM record state.
func observedState(st *ferryv1.VMStatus) string {
	switch {
	case st == nil:
		return "failed"
	case st.State == "running":
		return "running"
	case st.State == "paused": // the record says what QEMU does
		return "paused"
	case st.State == "stopped":
		return "stopped"
	default:
		return "failed"
	}
}

// applyStatus copies an agent's report into a VM record.
func applyStatus(vm *ferryv1.VM, st *ferryv1.VMStatus) {
	next := observedState(st)
	// A VM the user stopped is stopped, not failed, when its QEMU is gone.
	if next == "failed" && vm.DesiredState == "stopped" {
		next = "stopped"
	}
	vm.State = next
	if st == nil {
		vm.Pid = 0
		return
	}
	vm.Pid = st.Pid
	vm.Accel = st.Accel
	if st.StartedAt != nil && (next == "running" || next == "paused") {
		vm.StartedAt = st.StartedAt
	}
	if next == "running" || next == "paused" {
		vm.Message = ""
	} else if st.Message != "" {
		vm.Message = st.Message
	}
}

// ListHosts returns every host with its state.
func (h *hostService) ListHosts(ctx context.Context, _ *connect.Request[ferryv1.ListHostsRequest]) (*connect.Response[ferryv1.ListHostsResponse], error) {
	hosts, err := h.s.store.ListHosts(ctx)
	if err != nil {
		return nil, connectError(err)
	}
	return connect.NewResponse(&ferryv1.ListHostsResponse{Hosts: hosts}), nil
}

// GetHost returns one host.
func (h *hostService) GetHost(ctx context.Context, req *connect.Request[ferryv1.GetHostRequest]) (*connect.Response[ferryv1.GetHostResponse], error) {
	host, err := h.s.store.GetHost(ctx, req.Msg.GetName())
	if err != nil {
		return nil, connectError(err)
	}
	return connect.NewResponse(&ferryv1.GetHostResponse{Host: host}), nil
}
