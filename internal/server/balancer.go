package server

// The load balancer's view of the cluster (internal/rebalance runs it):
// hosts and VMs with their capacity and placement, the use the agents
// report (folded in by the heartbeat), and the API.

import (
	"context"
	"errors"
	"time"

	"connectrpc.com/connect"
	ferryv1 "github.com/ferryvm/ferry/gen/ferry/v1"
	"github.com/ferryvm/ferry/internal/balance"
	"github.com/ferryvm/ferry/internal/migration/core"
	"github.com/ferryvm/ferry/internal/placement"
	"github.com/ferryvm/ferry/internal/qemucaps"
	"github.com/ferryvm/ferry/internal/rebalance"
)

// sampleKeep is how long heartbeat samples are kept for the balancer's
// window (longer than any sensible window).
const sampleKeep = 15 * time.Minute

var errNoBalancer = errors.New("this server's store keeps no balancer state")

// newBalancer builds the balancer when the store keeps its state.
func (s *Server) newBalancer() *rebalance.Runner {
	st, ok := s.store.(rebalance.Store)
	if !ok {
		return nil
	}
	return rebalance.New(rebalance.Config{Cluster: balanceCluster{s}, Store: st, Sampler: s.sampler, Log: s.log.With("component", "balancer")})
}

// balanceCluster is the cluster as the balancer sees it.
type balanceCluster struct{ s *Server }

func (c balanceCluster) Inputs(ctx context.Context) (balance.Inputs, []balance.VM, map[string]int, error) {
	s := c.s
	var in balance.Inputs
	set, err := s.policies(ctx)
	if err != nil {
		return in, nil, nil, err
	}
	in.Policies = set
	hosts, err := s.store.ListHosts(ctx)
	if err != nil {
		return in, nil, nil, err
	}
	vms, err := s.store.ListVMs(ctx)
	if err != nil {
		return in, nil, nil, err
	}
	alloc, err := s.allocated(ctx)
	if err != nil {
		return in, nil, nil, err
	}
	groups := groupsByHost(vms, "")
	byName := map[string]*ferryv1.Host{}
	for _, h := range hosts {
		byName[h.Name] = h
		a := alloc[h.Name]
		bh := balance.Host{Host: placement.Host{Name: h.Name, Ready: schedulable(h) && h.MigrationIp != "", CPUs: int(h.GetCapacity().GetCpus()),
			MemoryMiB: h.GetCapacity().GetMemoryMib(), AllocatedVCPUs: a.VCPUs, AllocatedMemoryMiB: a.MemoryMiB, Groups: groups[h.Name],
			DiskFreeBytes: h.GetCapacity().GetDiskFreeBytes()}}
		if caps, ok := qemucaps.FromProto(h.GetQemu()); ok {
			bh.Caps = &caps
		}
		in.Hosts = append(in.Hosts, bh)
	}
	var fixed []balance.VM
	for _, vm := range vms {
		h, ok := byName[vm.Host]
		if !ok || vm.State != "running" && vm.State != "migrating" {
			continue
		}
		bv := balance.VM{Name: vm.Spec.GetName(), Host: vm.Host, VCPUs: int(vm.Spec.GetVcpus()), MemoryMiB: vm.Spec.GetMemoryMib(),
			AntiAffinity: vm.Spec.GetAntiAffinity(), Labels: vm.Spec.GetLabels(), Needs: vmNeeds(vm.Spec, h),
			DiskBytes: newDiskBytes(vm.Spec)} // the spec's sizes (no agent call per VM here): at least what sparse disks hold
		if vm.Accel != "" {
			bv.Needs.Accel = vm.Accel
		}
		if vm.Spec.GetPinned() || vm.State != "running" || !schedulable(h) {
			fixed = append(fixed, bv)
			continue
		}
		in.VMs = append(in.VMs, bv)
	}
	migs, err := s.store.ListMigrations(ctx)
	if err != nil {
		return in, nil, nil, err
	}
	inFlight := map[string]int{}
	for _, m := range migs {
		if !core.State(m.State).Terminal() {
			inFlight[m.From]++
			inFlight[m.To]++
		}
	}
	in.Bandwidth = bookRates{s}
	return in, fixed, inFlight, nil
}

func (c balanceCluster) Migrate(ctx context.Context, vm, to, strategy string) (string, error) {
	return drainCluster(c).Migrate(ctx, vm, to, strategy)
}

// Balance plans now and, unless a dry run, starts the proposals.
func (f *fleetService) Balance(ctx context.Context, req *connect.Request[ferryv1.BalanceRequest]) (*connect.Response[ferryv1.BalanceResponse], error) {
	if f.s.balancer == nil {
		return nil, connect.NewError(connect.CodeUnimplemented, errNoBalancer)
	}
	resp, _, err := f.s.balancer.Plan(ctx, !req.Msg.DryRun, req.Msg.DryRun)
	if err != nil {
		return nil, connectError(err)
	}
	return connect.NewResponse(resp), nil
}

// ListRecommendations returns the background balancer's last plan.
func (f *fleetService) ListRecommendations(ctx context.Context, _ *connect.Request[ferryv1.ListRecommendationsRequest]) (*connect.Response[ferryv1.BalanceResponse], error) {
	if f.s.balancer == nil {
		return nil, connect.NewError(connect.CodeUnimplemented, errNoBalancer)
	}
	if r := f.s.balancer.Recommendations(); r != nil {
		return connect.NewResponse(r), nil
	}
	set, err := f.s.policies(ctx)
	if err != nil {
		return nil, connectError(err)
	}
	return connect.NewResponse(&ferryv1.BalanceResponse{Mode: set.Cluster.WithDefaults().Balancer.Mode, Why: "no plan yet (the balancer plans every period on the leader; ferry balance --dry-run plans now)"}), nil
}
