package server

// Fleet operations: maintenance mode with the evacuation of a host
// (internal/drain runs it; this file is its view of the cluster and the
// API), health-driven evacuation from the agents' reports, and the
// cluster's migration policies.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strings"
	"sync"
	"time"

	"connectrpc.com/connect"
	agentv1 "github.com/ferryvm/ferry/gen/ferry/agent/v1"
	ferryv1 "github.com/ferryvm/ferry/gen/ferry/v1"
	"github.com/ferryvm/ferry/internal/auth"
	"github.com/ferryvm/ferry/internal/drain"
	"github.com/ferryvm/ferry/internal/evacuate"
	"github.com/ferryvm/ferry/internal/migration/core"
	"github.com/ferryvm/ferry/internal/migration/exec"
	"github.com/ferryvm/ferry/internal/placement"
	"github.com/ferryvm/ferry/internal/policy"
	"github.com/ferryvm/ferry/internal/qemucaps"
	"github.com/ferryvm/ferry/internal/store"
	"github.com/ferryvm/ferry/internal/telemetry"
)

// policyStore keeps the migration policies (the etcd store does).
type policyStore interface {
	GetPolicies(ctx context.Context) (policy.Set, error)
	PutPolicies(ctx context.Context, set policy.Set) error
}

// newDrain builds the evacuation runner when the store keeps evacuation
// records (nil otherwise: unit-test stores).
func (s *Server) newDrain() *drain.Runner {
	recs, ok := s.store.(drain.Records)
	if !ok {
		return nil
	}
	return drain.New(drain.Config{Cluster: drainCluster{s}, Records: recs, IsNotFound: store.IsNotFound, Log: s.log.With("component", "evacuation")})
}

// policies returns the cluster's migration policies (every default when
// the store keeps none).
func (s *Server) policies(ctx context.Context) (policy.Set, error) {
	ps, ok := s.store.(policyStore)
	if !ok {
		return policy.Set{}, nil
	}
	return ps.GetPolicies(ctx)
}

// schedulable says a host may receive VMs: its agent holds its lease, it
// is not in maintenance and its health checks pass.
func schedulable(h *ferryv1.Host) bool {
	return h.GetState() == "ready" && !h.GetMaintenance() && hostHealth(h) == evacuate.Healthy
}

// hostHealth is the agent's verdict (an agent without checks reports
// none: healthy); an unreachable host is Unreachable whatever it said.
func hostHealth(h *ferryv1.Host) evacuate.Health {
	switch {
	case h.GetState() != "ready":
		return evacuate.Unreachable
	case h.GetHealth() == "" || h.GetHealth() == string(evacuate.Healthy):
		return evacuate.Healthy
	}
	return evacuate.Health(h.GetHealth())
}

// unschedulableWhy says why a host takes no VMs ("" when it does).
func unschedulableWhy(h *ferryv1.Host) string {
	switch {
	case h.GetState() != "ready":
		return h.GetState()
	case h.GetMaintenance():
		return "in maintenance (ferry host maintenance exit " + h.GetName() + ")"
	case hostHealth(h) != evacuate.Healthy:
		return fmt.Sprintf("%s (%s)", h.GetHealth(), h.GetHealthDetail())
	}
	return ""
}

// noteHealth starts the evacuation of a host whose agent reports it
// degraded or failed, when the policy says so and it is not in
// maintenance already (leader only; never for an unreachable host: its
// VMs may still run there).
func (s *Server) noteHealth(host *ferryv1.Host) {
	if s.drain == nil || !s.leading() || (host.GetHealth() != string(evacuate.Degraded) && host.GetHealth() != string(evacuate.Failed)) {
		return
	}
	if _, busy := s.entering.LoadOrStore(host.Name, true); busy {
		return
	}
	go func() {
		defer s.entering.Delete(host.Name)
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		if _, err := s.drain.Get(ctx, host.Name); err == nil || !errors.Is(err, drain.ErrNotFound) {
			return // in maintenance already (or the store cannot say)
		}
		set, err := s.policies(ctx)
		if err != nil {
			s.log.Warn("health-driven evacuation: read policies", "host", host.Name, "err", err)
			return
		}
		if set.Cluster.WithDefaults().OnDegraded != policy.OnDegradedEvacuate {
			return
		}
		s.log.Warn("host reports "+host.GetHealth()+": evacuating it", "host", host.Name, "detail", host.GetHealthDetail())
		if _, err := s.drain.Enter(ctx, host.Name, drain.ReasonDegraded); err != nil {
			s.log.Error("health-driven evacuation", "host", host.Name, "err", err)
		}
	}()
}

// drainCluster is the cluster as the evacuation runner sees it.
type drainCluster struct{ s *Server }

func (c drainCluster) Snapshot(ctx context.Context, host string) (drain.Snapshot, error) {
	s := c.s
	snap := drain.Snapshot{Unmovable: map[string]string{}, Cold: map[string]bool{}, OtherInto: map[string]int{}}
	h, err := s.store.GetHost(ctx, host)
	if err != nil {
		return snap, fmt.Errorf("host %s: %w", host, err)
	}
	snap.SourceReachable = h.State == "ready"
	vms, err := s.store.ListVMs(ctx)
	if err != nil {
		return snap, err
	}
	for _, vm := range vms {
		if vm.Host != host {
			continue
		}
		name := vm.Spec.GetName()
		snap.OnHost = append(snap.OnHost, name)
		switch {
		case vm.Spec.GetPinned():
			snap.Unmovable[name] = "pinned: spec.pinned is set, so it is never migrated automatically (move it with ferry migrate, or stop it)"
		case vm.State == "stopped" && vm.MigrationId == "":
			snap.Cold[name] = true
		case vm.State == "failed" || vm.State == "pending":
			snap.Unmovable[name] = fmt.Sprintf("VM is %s: %s", vm.State, vm.Message)
		}
	}
	set, err := s.policies(ctx)
	if err != nil {
		return snap, err
	}
	migs, err := s.store.ListMigrations(ctx)
	if err != nil {
		return snap, err
	}
	running := 0
	for _, m := range migs {
		if core.State(m.State).Terminal() {
			continue
		}
		running++
		if m.From != host {
			snap.OtherInto[m.To]++
		}
	}
	// The evacuation's own in-flight migrations are counted by Admit.
	own := 0
	for _, m := range migs {
		if !core.State(m.State).Terminal() && m.From == host {
			own++
		}
	}
	snap.ClusterFree = max(set.Cluster.WithDefaults().MaxParallelCluster-(running-own), 0)
	return snap, nil
}

func (c drainCluster) PlanInput(ctx context.Context, host string, names []string) (evacuate.Input, error) {
	s := c.s
	in := evacuate.Input{Source: host}
	set, err := s.policies(ctx)
	if err != nil {
		return in, err
	}
	in.Policies = set
	hosts, err := s.store.ListHosts(ctx)
	if err != nil {
		return in, err
	}
	vms, err := s.store.ListVMs(ctx)
	if err != nil {
		return in, err
	}
	alloc, err := s.allocated(ctx)
	if err != nil {
		return in, err
	}
	groups := groupsByHost(vms, "")
	var src *ferryv1.Host
	var dests []*ferryv1.Host
	for _, h := range hosts {
		a := alloc[h.Name]
		eh := evacuate.Host{
			Host: placement.Host{Name: h.Name, CPUs: int(h.GetCapacity().GetCpus()), MemoryMiB: h.GetCapacity().GetMemoryMib(),
				AllocatedVCPUs: a.VCPUs, AllocatedMemoryMiB: a.MemoryMiB, Groups: groups[h.Name],
				DiskFreeBytes: h.GetCapacity().GetDiskFreeBytes()},
			Schedulable: h.State == "ready" && !h.Maintenance, Health: hostHealth(h),
		}
		if caps, ok := qemucaps.FromProto(h.GetQemu()); ok {
			eh.Caps = &caps
		}
		in.Hosts = append(in.Hosts, eh)
		if h.Name == host {
			src = h
		} else if schedulable(h) && h.MigrationIp != "" {
			dests = append(dests, h)
		}
	}
	if src == nil {
		return in, fmt.Errorf("host %s is not registered", host)
	}
	want := map[string]bool{}
	for _, n := range names {
		want[n] = true
	}
	var mu sync.Mutex
	var wg sync.WaitGroup
	for _, vm := range vms {
		if vm.Host != host || !want[vm.Spec.GetName()] {
			continue
		}
		ev := evacuate.VM{Name: vm.Spec.GetName(), VCPUs: int(vm.Spec.GetVcpus()), MemoryMiB: vm.Spec.GetMemoryMib(),
			AntiAffinity: vm.Spec.GetAntiAffinity(), Labels: vm.Spec.GetLabels(),
			// The spec's disk sizes until the source agent reports the
			// allocated ones (below): the figure the preflight checks.
			DiskBytes: newDiskBytes(vm.Spec)}
		if len(dests) > 0 {
			ev.Needs = vmNeeds(vm.Spec, dests[0])
			if vm.Accel != "" {
				ev.Needs.Accel = vm.Accel
			}
		}
		if vm.State != "running" || src.State != "ready" {
			in.VMs = append(in.VMs, ev)
			continue
		}
		wg.Add(1)
		go func() { // the agent's telemetry (measured now only when stale)
			defer wg.Done()
			mctx, cancel := context.WithTimeout(ctx, 15*time.Second)
			defer cancel()
			if disks, err := s.localDisks(mctx, vm, src, ""); err == nil {
				ev.DiskBytes = 0
				for _, d := range disks {
					ev.DiskBytes += d.AllocatedBytes
				}
			} else {
				s.log.Warn("evacuation plan: local disks; planning with their spec sizes", "vm", ev.Name, "err", err)
			}
			m, err := s.agents.get(src.Address).mig.Measure(mctx, connect.NewRequest(&agentv1.MeasureRequest{
				Name: ev.Name, Seconds: 1, MaxAgeMs: planDirtyMaxAge.Milliseconds(), MaxRamAgeMs: planRAMMaxAge.Milliseconds()}))
			if err == nil {
				ev.DirtyRateBytesPerSec = m.Msg.DirtyRateMibps * (1 << 20)
				ev.NonZeroBytes = m.Msg.NonZeroBytes
				if ev.NonZeroBytes == 0 {
					ev.NonZeroBytes = min(m.Msg.RssBytes, m.Msg.MemoryBytes)
				}
			} else {
				s.log.Warn("evacuation plan: measure VM; planning with all of its RAM", "vm", ev.Name, "err", err)
			}
			mu.Lock()
			in.VMs = append(in.VMs, ev)
			mu.Unlock()
		}()
	}
	wg.Wait()
	// Links with no figure yet are probed now, one after another and after
	// the measurements: probes run together share the source's NIC and
	// CPUs with each other and with calc-dirty-rate, and one taken so read
	// 13 MiB/s on a link QEMU then crossed at hundreds. At most
	// maxInlineProbes, the destinations with the most free memory first;
	// the planner places VMs on the measured ones (a VM it cannot place
	// for want of a figure is planned again later).
	if src.State == "ready" {
		sort.SliceStable(dests, func(i, j int) bool {
			return dests[i].GetCapacity().GetMemoryMib()-alloc[dests[i].Name].MemoryMiB > dests[j].GetCapacity().GetMemoryMib()-alloc[dests[j].Name].MemoryMiB
		})
		probed := 0
		for _, d := range dests {
			if _, ok := s.bw.figure(host, d.Name); ok {
				continue
			}
			if probed == maxInlineProbes || ctx.Err() != nil {
				break
			}
			probed++
			pctx, cancel := context.WithTimeout(ctx, 15*time.Second)
			pr, err := s.probeLink(pctx, src, d, telemetry.InlineProbe)
			cancel()
			if err != nil {
				s.log.Warn("evacuation plan: probe link", "from", host, "to", d.Name, "err", err)
				s.bw.probeFailed(host, d.Name)
				continue
			}
			s.bw.observeProbe(host, d.Name, pr, true)
		}
	}
	in.Bandwidth = bookRates{s}
	in.Setup = s.fix.setup()
	return in, nil
}

// maxInlineProbes bounds the links an evacuation plan probes before it
// plans (each telemetry.InlineProbe long, one at a time).
const maxInlineProbes = 6

// bookRates gives the planner the server's link book.
type bookRates struct{ s *Server }

// Estimate implements evacuate.Bandwidths.
func (b bookRates) Estimate(from, to string) (float64, bool) {
	f, ok := b.s.bw.figure(from, to)
	if !ok || f.BytesPerSec <= 0 {
		return 0, false
	}
	return f.BytesPerSec, true
}

func (c drainCluster) VM(ctx context.Context, name string) (drain.VMView, error) {
	vm, err := c.s.store.GetVM(ctx, name)
	if store.IsNotFound(err) {
		return drain.VMView{Gone: true}, nil
	}
	if err != nil {
		return drain.VMView{}, err
	}
	return drain.VMView{Host: vm.Host, State: vm.State, MigrationID: vm.MigrationId}, nil
}

func (c drainCluster) Migration(ctx context.Context, id string) (drain.Migration, error) {
	m, ok := c.s.engine.Get(id, false)
	if !ok {
		pr, err := c.s.store.GetMigration(ctx, id)
		if store.IsNotFound(err) {
			return drain.Migration{Gone: true}, nil
		}
		if err != nil {
			return drain.Migration{}, err
		}
		m = exec.Render(pr)
	}
	// A rollback by a control-plane restart is not the destination's fault.
	out := drain.Migration{Status: m.Status, Error: m.Error, NotDestination: strings.Contains(m.Error, core.ErrRestarted)}
	if m.TotalBytes > 0 {
		out.Progress = min(float64(m.TransferredBytes)/float64(m.TotalBytes), 1)
	}
	if m.StartedAt != nil && m.FinishedAt != nil {
		out.Took = m.FinishedAt.AsTime().Sub(m.StartedAt.AsTime())
	}
	return out, nil
}

// Migrate starts a migration; beginMigration applies the VM's effective
// policy (bandwidth cap, max downtime, timeouts) and its limits: a start
// refused for a limit waits (drain.ErrWait), it is not a failed attempt.
func (c drainCluster) Migrate(ctx context.Context, vm, to, strategy string) (string, error) {
	m, _, err := c.s.beginMigration(ctx, &ferryv1.MigrateRequest{Vm: vm, To: to, Options: &ferryv1.MigrationOptions{Strategy: strategy}})
	if isLimit(err) {
		return "", fmt.Errorf("%w: %w", drain.ErrWait, err)
	}
	if err != nil {
		return "", err
	}
	return m.Id, nil
}

func (c drainCluster) Cancel(ctx context.Context, id string) error {
	_, err := c.s.engine.Cancel(ctx, id)
	return err
}

// fleetService implements ferryv1connect.FleetServiceHandler.
type fleetService struct{ s *Server }

func (f *fleetService) runner() (*drain.Runner, error) {
	if f.s.drain == nil {
		return nil, connect.NewError(connect.CodeUnimplemented, fmt.Errorf("this server's store keeps no evacuation records"))
	}
	return f.s.drain, nil
}

func drainError(err error) error {
	switch {
	case errors.Is(err, drain.ErrNotFound):
		return connect.NewError(connect.CodeNotFound, fmt.Errorf("%w (the host is not in maintenance)", err))
	case errors.Is(err, drain.ErrBusy):
		return connect.NewError(connect.CodeFailedPrecondition, err)
	}
	return connectError(err)
}

// EnterMaintenance puts a host in maintenance and evacuates it.
func (f *fleetService) EnterMaintenance(ctx context.Context, req *connect.Request[ferryv1.EnterMaintenanceRequest]) (*connect.Response[ferryv1.EnterMaintenanceResponse], error) {
	r, err := f.runner()
	if err != nil {
		return nil, err
	}
	host := req.Msg.GetHost()
	if host == "" {
		return nil, invalidArg("host: required (ferry host maintenance enter HOST)")
	}
	if _, err := f.s.store.GetHost(ctx, host); err != nil {
		if store.IsNotFound(err) {
			return nil, connect.NewError(connect.CodeNotFound, fmt.Errorf("host %q is not registered (see ferry host list)", host))
		}
		return nil, connectError(err)
	}
	var e *ferryv1.Evacuation
	if req.Msg.DryRun {
		e, _, err = r.DryRun(ctx, host)
	} else {
		e, err = r.Enter(ctx, host, drain.ReasonManual)
	}
	if err != nil {
		return nil, drainError(err)
	}
	return connect.NewResponse(&ferryv1.EnterMaintenanceResponse{Evacuation: e}), nil
}

// ExitMaintenance makes a host schedulable again.
func (f *fleetService) ExitMaintenance(ctx context.Context, req *connect.Request[ferryv1.ExitMaintenanceRequest]) (*connect.Response[ferryv1.ExitMaintenanceResponse], error) {
	r, err := f.runner()
	if err != nil {
		return nil, err
	}
	if err := r.Exit(ctx, req.Msg.GetHost()); err != nil {
		return nil, drainError(err)
	}
	return connect.NewResponse(&ferryv1.ExitMaintenanceResponse{}), nil
}

// GetEvacuation returns a host's evacuation record.
func (f *fleetService) GetEvacuation(ctx context.Context, req *connect.Request[ferryv1.GetEvacuationRequest]) (*connect.Response[ferryv1.GetEvacuationResponse], error) {
	r, err := f.runner()
	if err != nil {
		return nil, err
	}
	e, err := r.Get(ctx, req.Msg.GetHost())
	if err != nil {
		return nil, drainError(err)
	}
	return connect.NewResponse(&ferryv1.GetEvacuationResponse{Evacuation: e}), nil
}

// CancelEvacuation stops a host's evacuation.
func (f *fleetService) CancelEvacuation(ctx context.Context, req *connect.Request[ferryv1.CancelEvacuationRequest]) (*connect.Response[ferryv1.CancelEvacuationResponse], error) {
	r, err := f.runner()
	if err != nil {
		return nil, err
	}
	e, err := r.Cancel(ctx, req.Msg.GetHost())
	if err != nil {
		return nil, drainError(err)
	}
	return connect.NewResponse(&ferryv1.CancelEvacuationResponse{Evacuation: e}), nil
}

// GetPolicies returns the migration policies as JSON.
func (f *fleetService) GetPolicies(ctx context.Context, _ *connect.Request[ferryv1.GetPoliciesRequest]) (*connect.Response[ferryv1.GetPoliciesResponse], error) {
	set, err := f.s.policies(ctx)
	if err != nil {
		return nil, connectError(err)
	}
	b, err := json.MarshalIndent(set, "", "  ")
	if err != nil {
		return nil, connectError(err)
	}
	return connect.NewResponse(&ferryv1.GetPoliciesResponse{Json: string(b)}), nil
}

// SetPolicies validates and stores the migration policies.
func (f *fleetService) SetPolicies(ctx context.Context, req *connect.Request[ferryv1.SetPoliciesRequest]) (*connect.Response[ferryv1.SetPoliciesResponse], error) {
	ps, ok := f.s.store.(policyStore)
	if !ok {
		return nil, connect.NewError(connect.CodeUnimplemented, fmt.Errorf("this server's store keeps no policies"))
	}
	var set policy.Set
	if err := json.Unmarshal([]byte(req.Msg.GetJson()), &set); err != nil {
		return nil, invalidArg("policies: not a policy set in JSON: %v", err)
	}
	if err := set.Validate(); err != nil {
		return nil, invalidArg("%v", err)
	}
	old, err := ps.GetPolicies(ctx)
	if err != nil {
		return nil, connectError(err)
	}
	if err := ps.PutPolicies(ctx, set); err != nil {
		return nil, connectError(err)
	}
	if old.Cluster.InsecureTransport != set.Cluster.InsecureTransport {
		// The event recorder records it too (events.go).
		by := "?"
		if c, ok := auth.CallerFrom(ctx); ok {
			by = c.ID
		}
		f.s.log.Warn("cluster policy insecureTransport changed", "insecure_transport", set.Cluster.InsecureTransport, "by", by)
	}
	b, _ := json.MarshalIndent(set, "", "  ")
	return connect.NewResponse(&ferryv1.SetPoliciesResponse{Json: string(b)}), nil
}
