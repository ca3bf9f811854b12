package server

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"time"

	"connectrpc.com/connect"
	ferryv1 "github.com/ferryvm/ferry/gen/ferry/v1"
	"github.com/ferryvm/ferry/internal/admit"
	"github.com/ferryvm/ferry/internal/migration/core"
	"github.com/ferryvm/ferry/internal/migration/exec"
	"github.com/ferryvm/ferry/internal/placement"
	"github.com/ferryvm/ferry/internal/policy"
	"github.com/ferryvm/ferry/internal/spec"
	"github.com/ferryvm/ferry/internal/store"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// Migration defaults.
const (
	DefaultStallTimeout     = 15 * time.Second
	DefaultMigrationTimeout = 10 * time.Minute
	DefaultRecoveryWindow   = 5 * time.Minute
	// DefaultGuestAliveTimeout bounds the check after the switchover that
	// the guest shows a sign of life.
	DefaultGuestAliveTimeout = 5 * time.Second
)

type migrationService struct{ s *Server }

func newMigrationID() string {
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	return "mig-" + hex.EncodeToString(b)
}

// Migrate validates the request, takes the VM's migration lock and starts
// driving the migration in the background.
func (h *migrationService) Migrate(ctx context.Context, req *connect.Request[ferryv1.MigrateRequest]) (*connect.Response[ferryv1.MigrateResponse], error) {
	m, plan, err := h.s.beginMigration(ctx, req.Msg)
	if err != nil {
		return nil, err
	}
	if m == nil { // a dry run: nothing changed
		return connect.NewResponse(&ferryv1.MigrateResponse{Plan: plan}), nil
	}
	return connect.NewResponse(&ferryv1.MigrateResponse{Migration: m, Plan: plan}), nil
}

func invalidArg(format string, args ...any) error {
	return connect.NewError(connect.CodeInvalidArgument, fmt.Errorf(format, args...))
}

func precondition(format string, args ...any) error {
	return connect.NewError(connect.CodeFailedPrecondition, fmt.Errorf(format, args...))
}

// beginMigration checks everything that can be checked before acting, so a
// refused migration changes nothing.
func (s *Server) beginMigration(ctx context.Context, req *ferryv1.MigrateRequest) (*ferryv1.Migration, *ferryv1.Plan, error) {
	opt := proto.Clone(req.GetOptions()).(*ferryv1.MigrationOptions)
	if opt == nil {
		opt = &ferryv1.MigrationOptions{}
	}
	if opt.Strategy == "" {
		opt.Strategy = "auto"
	}
	switch opt.Strategy {
	case "auto", "precopy", "converge", "postcopy", "hybrid", "cold":
	default:
		return nil, nil, invalidArg("strategy: must be auto, precopy, converge, postcopy, hybrid or cold, got %q", opt.Strategy)
	}
	if opt.NoPostcopy && (opt.Strategy == "postcopy" || opt.Strategy == "hybrid") {
		return nil, nil, invalidArg("strategy %s needs post-copy, which --no-postcopy forbids", opt.Strategy)
	}
	if opt.NoThrottle && opt.Strategy == "converge" {
		return nil, nil, invalidArg("strategy converge throttles the guest, which --no-throttle forbids")
	}
	if opt.BandwidthMibps < 0 {
		return nil, nil, invalidArg("bandwidth: must be >= 0 MiB/s (0 = unlimited), got %d", opt.BandwidthMibps)
	}
	if opt.MaxDowntimeMs < 0 || opt.MaxDowntimeMs > 60000 {
		return nil, nil, invalidArg("max-downtime: must be between 1ms and 60s, got %dms", opt.MaxDowntimeMs)
	}
	if opt.MultifdChannels < 0 || opt.MultifdChannels > 16 {
		return nil, nil, invalidArg("multifd: must be between 0 and 16 channels, got %d", opt.MultifdChannels)
	}
	if err := checkRetryPolicy(opt); err != nil {
		return nil, nil, err
	}
	if req.GetVm() == "" || req.GetTo() == "" {
		return nil, nil, invalidArg("vm and to: required")
	}
	unlock := s.lockVM(req.Vm)
	defer unlock()
	vm, err := s.store.GetVM(ctx, req.Vm)
	if err != nil {
		if store.IsNotFound(err) {
			return nil, nil, connect.NewError(connect.CodeNotFound, fmt.Errorf("VM %q not found (see ferry vm list)", req.Vm))
		}
		return nil, nil, connectError(err)
	}
	if vm, err = s.settleMigrationLock(ctx, vm); err != nil {
		return nil, nil, err
	}
	if vm.Host == req.To {
		return nil, nil, invalidArg("VM %s is already on host %s: choose another destination", req.Vm, req.To)
	}
	if !opt.InsecureTransport {
		plain, err := s.clusterInsecureTransport(ctx)
		if err != nil {
			return nil, nil, connectError(err)
		}
		opt.InsecureTransport = plain
	}
	switch {
	case vm.State == "migrating":
		return nil, nil, precondition("VM %s is already migrating (%s)", req.Vm, vm.MigrationId)
	case opt.Strategy != "cold" && vm.State != "running":
		return nil, nil, precondition("VM %s is %s: live migration needs a running VM (use --strategy cold, or start it)", req.Vm, vm.State)
	case opt.Strategy == "cold" && vm.State != "running" && vm.State != "stopped":
		return nil, nil, precondition("VM %s is %s: cold migration needs a running or stopped VM (stop it first: ferry vm stop %s)", req.Vm, vm.State, req.Vm)
	}
	hosts, err := s.store.ListHosts(ctx)
	if err != nil {
		return nil, nil, connectError(err)
	}
	var src, dst *ferryv1.Host
	for _, h := range hosts {
		switch h.Name {
		case vm.Host:
			src = h
		case req.To:
			dst = h
		}
	}
	if dst == nil {
		return nil, nil, connect.NewError(connect.CodeNotFound, fmt.Errorf("destination host %q is not registered (see ferry host list)", req.To))
	}
	if why := unschedulableWhy(dst); why != "" {
		return nil, nil, precondition("destination host %s is %s", dst.Name, why)
	}
	if src == nil || src.State != "ready" {
		return nil, nil, precondition("VM %s's host %s is not ready: its agent must take part in the migration", req.Vm, vm.Host)
	}
	if opt.Strategy != "cold" && dst.MigrationIp == "" {
		return nil, nil, precondition("destination host %s has no migration address (agent --migration-ip)", dst.Name)
	}
	if err := checkHostPair(vm, dst); err != nil { // compat.go
		return nil, nil, err
	}
	if err := s.checkRoom(ctx, vm, dst); err != nil {
		return nil, nil, err
	}
	if err := s.checkSharedDisks(ctx, vm, src, dst); err != nil {
		return nil, nil, err
	}
	localDisks, err := s.localDisks(ctx, vm, src, opt.Strategy)
	if err != nil {
		return nil, nil, err
	}
	if err := checkDiskRoom(vm, dst, localDisks); err != nil {
		return nil, nil, err
	}
	if opt.Strategy == "cold" && len(localDisks) > 0 && dst.MigrationIp == "" {
		return nil, nil, precondition("destination host %s has no migration address (agent --migration-ip): VM %s's %d local disk(s) are copied over it", dst.Name, req.Vm, len(localDisks))
	}
	set, err := s.policies(ctx)
	if err != nil {
		return nil, nil, connectError(fmt.Errorf("read the migration policy: %w", err))
	}
	applyPolicy(set, vm, opt) // admission.go: bandwidth, downtime and timeouts the request leaves unset
	if !req.DryRun {
		// Refused now, before any measurement, when a limit is reached
		// (checked again, serialized, just before the start).
		if err := s.admitMigration(ctx, req.Vm, vm.Host, req.To, opt); err != nil {
			return nil, nil, err
		}
	}
	if opt.MaxDowntimeMs == 0 {
		opt.MaxDowntimeMs = vm.Spec.GetMaxDowntimeMs()
		if opt.MaxDowntimeMs == 0 {
			opt.MaxDowntimeMs = 300
		}
	}
	if opt.StallTimeoutMs == 0 {
		opt.StallTimeoutMs = DefaultStallTimeout.Milliseconds()
	}
	if opt.MaxAttempts == 0 && opt.Strategy != "cold" {
		opt.MaxAttempts = core.DefaultMaxAttempts
	}
	if opt.RetryBackoffMs == 0 {
		opt.RetryBackoffMs = core.DefaultRetryBackoff.Milliseconds()
	}
	if opt.TimeoutMs == 0 {
		opt.TimeoutMs = DefaultMigrationTimeout.Milliseconds()
	}
	if opt.RecoveryWindowMs == 0 {
		opt.RecoveryWindowMs = DefaultRecoveryWindow.Milliseconds()
	}
	if t := opt.GuestAliveTimeoutMs; t < 0 || t > (10*time.Minute).Milliseconds() {
		return nil, nil, invalidArg("options.guest_alive_timeout_ms: must be between 0 (default %v) and 600000, got %d", DefaultGuestAliveTimeout, t)
	}
	if opt.GuestAliveTimeoutMs == 0 {
		opt.GuestAliveTimeoutMs = DefaultGuestAliveTimeout.Milliseconds()
	}
	// Before any agent is asked anything (transport.go).
	if err := checkStreamTransport(opt, src, dst, len(localDisks)); err != nil {
		return nil, nil, err
	}
	if err := checkPostcopyHost(opt, dst); err != nil {
		return nil, nil, err
	}

	// Plan live migrations: measure, predict every strategy, choose for auto.
	var plan *ferryv1.Plan
	planStart := time.Now()
	if opt.Strategy != "cold" {
		in, err := s.measurePlanInputs(ctx, vm, src, dst, opt)
		if in != nil {
			for _, d := range localDisks {
				in.DiskBytes += d.AllocatedBytes
			}
		}
		if err != nil {
			if req.DryRun || opt.Strategy == "auto" {
				return nil, nil, connect.NewError(connect.CodeUnavailable, err)
			}
			s.log.Warn("planning measurement failed; migrating without a prediction", "vm", req.Vm, "err", err)
		} else {
			var perr error
			plan, perr = makePlan(in, opt, bothZstd(src, dst))
			plan.Requested = opt.Strategy // auto, or the strategy named (replan.go)
			// The QEMU tuning of the strategy that will run.
			if st := tunedStrategy(opt.Strategy, plan.Choice); st != "" {
				plan.Tuning = tunePlan(st, in, opt, src, dst)
			}
			if req.DryRun {
				return nil, plan, nil
			}
			if opt.Strategy == "auto" {
				if perr != nil {
					return nil, plan, noPlanError(req.Vm, perr)
				}
				opt.Strategy = plan.Choice
			}
		}
	} else {
		plan = s.coldPlan(ctx, vm, src, dst, localDisks, opt) // coldplan.go
		if req.DryRun {
			return nil, plan, nil
		}
	}
	planningMs := time.Since(planStart).Milliseconds()

	id := newMigrationID()
	s.adm.start.Lock() // from the limit check to the engine's start (admission.go)
	defer s.adm.start.Unlock()
	if err := s.admitMigration(ctx, req.Vm, vm.Host, req.To, opt); err != nil {
		return nil, nil, err
	}
	if err := s.reshare(ctx, admit.Flight{ID: id, From: vm.Host, To: req.To, Cap: float64(opt.BandwidthMibps << 20)}); err != nil {
		s.log.Warn("bandwidth shares not recomputed before the start; the next poll corrects them", "vm", req.Vm, "err", err)
	}
	if err := s.reserveMigration(ctx, id, vm, dst, opt); err != nil {
		return nil, nil, err
	}
	now := time.Now()
	locked, err := s.store.UpdateVM(ctx, req.Vm, true, func(cur *ferryv1.VM) error {
		if cur.State != vm.State || cur.Host != vm.Host || cur.MigrationId != "" {
			return precondition("VM %s changed while the migration was being set up; try again", req.Vm)
		}
		cur.State, cur.MigrationId = "migrating", id
		return nil
	})
	if err != nil {
		s.releaseReservation(id)
		return nil, nil, connectError(err)
	}
	stall, timeout, window := coreOptions(opt)
	rec, err := core.New(id, req.Vm, vm.Host, req.To, core.Strategy(opt.Strategy), core.VMState(vm.State), locked.Generation,
		core.Options{StallTimeout: stall, Timeout: timeout, RecoveryWindow: window, MaxAttempts: opt.MaxAttempts,
			RetryBackoff: time.Duration(opt.RetryBackoffMs) * time.Millisecond}, now)
	if err != nil {
		s.unlockVMRecord(context.WithoutCancel(ctx), req.Vm, id, vm.State)
		s.releaseReservation(id)
		return nil, nil, invalidArg("%v", err)
	}
	rec.Options.PostcopyAtFraction, rec.Options.PostcopyAtBytes = postcopyAt(plan, opt.Strategy)
	rec.Options.Auto = plan.GetRequested() == "auto" // the planner chose: a stuck pre-copy may be re-planned
	rec.CopyDisks = opt.Strategy == "cold" && len(localDisks) > 0
	m := &ferryv1.Migration{
		Id: id, Vm: req.Vm, From: vm.Host, To: req.To, Strategy: opt.Strategy,
		Status: "running", State: string(core.Pending), StartedAt: timestamppb.New(now),
		Options: opt, VmGeneration: locked.Generation, Plan: plan, PlanningMs: planningMs,
		Disks: localDisks, Transport: streamTransport(opt),
	}
	for _, d := range localDisks {
		m.DiskBytesTotal += d.AllocatedBytes
	}
	if plan != nil {
		m.Predicted = predictionFor(plan, opt.Strategy)
		if w := predictionWarning(m.Predicted); w != "" {
			m.Warnings = append(m.Warnings, w)
		}
	}
	if err := s.engine.Start(ctx, rec, m); err != nil {
		// Undo the lock so the VM is as it was.
		s.unlockVMRecord(context.WithoutCancel(ctx), req.Vm, id, vm.State)
		s.releaseReservation(id)
		return nil, nil, connectError(err)
	}
	s.metrics.mig.migrationStarted(opt.Strategy)
	s.log.Info("migration started", "id", id, "vm", req.Vm, "from", vm.Host, "to", req.To, "strategy", opt.Strategy, "transport", m.Transport)
	if live, ok := s.engine.Get(id, false); ok {
		m = live
	}
	return m, plan, nil
}

// checkRoom verifies the destination can hold the VM, counting the VMs
// placed there and the capacity reservations hold there.
func (s *Server) checkRoom(ctx context.Context, vm *ferryv1.VM, dst *ferryv1.Host) error {
	c := placement.Host{Name: dst.Name, Ready: true, CPUs: int(dst.GetCapacity().GetCpus()), MemoryMiB: dst.GetCapacity().GetMemoryMib()}
	if err := s.setAllocated(ctx, &c); err != nil { // VMs there and reservations held there
		return err
	}
	if _, err := placement.Choose([]placement.Host{c}, placement.Request{VCPUs: int(vm.Spec.GetVcpus()), MemoryMiB: vm.Spec.GetMemoryMib()}); err != nil {
		return connect.NewError(connect.CodeResourceExhausted, fmt.Errorf("destination host %s cannot take VM %s: %w", dst.Name, vm.Spec.GetName(), err))
	}
	return nil
}

// checkDiskRoom verifies the destination's data directory has room for
// the VM's local disks (their allocated size, as the source reports it)
// and the margin, when its agent reports its free space.
func checkDiskRoom(vm *ferryv1.VM, dst *ferryv1.Host, disks []*ferryv1.MigrationDisk) error {
	var need int64
	for _, d := range disks {
		need += d.AllocatedBytes
	}
	free := dst.GetCapacity().GetDiskFreeBytes()
	if free <= 0 {
		return nil // not reported: not checked
	}
	if r := placement.CheckDiskRoom(free, need); r != nil {
		return connect.NewError(connect.CodeResourceExhausted, fmt.Errorf("destination host %s cannot take VM %s's %d local disk(s): %s (free space there, or choose another host)", dst.Name, vm.Spec.GetName(), len(disks), r.Detail))
	}
	return nil
}

// newDiskBytes is the space a new VM's local disks may take: the size of
// each disk created with size: (sparse, but it can fill it); a copy of a
// source: image is not counted (its size is known only where it is).
func newDiskBytes(sp *ferryv1.VMSpec) int64 {
	var n int64
	for _, d := range sp.GetDisks() {
		if d.GetShared() || d.GetPath() != "" || d.GetSize() == "" {
			continue
		}
		if b, err := spec.ParseSize(d.GetSize()); err == nil {
			n += b
		}
	}
	return n
}

// unlockVMRecord clears the VM's migration lock and restores its state.
func (s *Server) unlockVMRecord(ctx context.Context, vm, id, state string) {
	if _, err := s.store.UpdateVM(ctx, vm, false, func(cur *ferryv1.VM) error {
		if cur.MigrationId != id {
			return errSkip
		}
		cur.State, cur.MigrationId = state, ""
		return nil
	}); err != nil && !errors.Is(err, errSkip) {
		s.log.Error("unlock VM record", "vm", vm, "migration", id, "err", err)
	}
}

// GetMigration returns a migration: live from the engine while it runs
// here, rendered from its stored record otherwise.
func (h *migrationService) GetMigration(ctx context.Context, req *connect.Request[ferryv1.GetMigrationRequest]) (*connect.Response[ferryv1.GetMigrationResponse], error) {
	if m, ok := h.s.engine.Get(req.Msg.Id, !req.Msg.WithoutSamples); ok {
		m.BandwidthShareBytes = h.s.bandwidthShare(m.Id)
		return connect.NewResponse(&ferryv1.GetMigrationResponse{Migration: m}), nil
	}
	pr, err := h.s.store.GetMigration(ctx, req.Msg.Id)
	if err != nil {
		if store.IsNotFound(err) {
			return nil, connect.NewError(connect.CodeNotFound, fmt.Errorf("migration %q not found (see ferry migration list)", req.Msg.Id))
		}
		return nil, connectError(err)
	}
	m := exec.Render(pr)
	if req.Msg.WithoutSamples {
		m.Samples = nil
	}
	return connect.NewResponse(&ferryv1.GetMigrationResponse{Migration: m}), nil
}

// ListMigrations returns every migration (without samples), oldest first.
func (h *migrationService) ListMigrations(ctx context.Context, req *connect.Request[ferryv1.ListMigrationsRequest]) (*connect.Response[ferryv1.ListMigrationsResponse], error) {
	prs, err := h.s.store.ListMigrations(ctx)
	if err != nil {
		return nil, connectError(err)
	}
	out := &ferryv1.ListMigrationsResponse{}
	for _, pr := range prs {
		if req.Msg.Vm != "" && pr.Vm != req.Msg.Vm {
			continue
		}
		m, ok := h.s.engine.Get(pr.Id, false)
		if ok {
			m.BandwidthShareBytes = h.s.bandwidthShare(m.Id)
		} else {
			m = exec.Render(pr)
		}
		m.Samples = nil
		out.Migrations = append(out.Migrations, m)
	}
	return connect.NewResponse(out), nil
}

// CancelMigration asks a running migration to roll back. Past the
// switchover it is too late, and the error says so.
func (h *migrationService) CancelMigration(ctx context.Context, req *connect.Request[ferryv1.CancelMigrationRequest]) (*connect.Response[ferryv1.CancelMigrationResponse], error) {
	if _, ok := h.s.engine.Get(req.Msg.Id, false); !ok {
		pr, err := h.s.store.GetMigration(ctx, req.Msg.Id)
		if err != nil {
			if store.IsNotFound(err) {
				return nil, connect.NewError(connect.CodeNotFound, fmt.Errorf("migration %q not found", req.Msg.Id))
			}
			return nil, connectError(err)
		}
		m := exec.Render(pr)
		if m.Status != "running" {
			return nil, precondition("migration %s is %s: nothing to cancel", m.Id, m.Status)
		}
		return nil, connect.NewError(connect.CodeUnavailable, fmt.Errorf("migration %s is not driven by this server right now (is it the leader?); try again", m.Id))
	}
	m, err := h.s.engine.Cancel(ctx, req.Msg.Id)
	if err != nil {
		return nil, err
	}
	h.s.log.Info("migration cancel requested", "id", m.Id)
	return connect.NewResponse(&ferryv1.CancelMigrationResponse{Migration: m}), nil
}

// streamTransport names how a migration's streams cross the network: TLS
// unless its options explicitly ask for plaintext.
func streamTransport(opt *ferryv1.MigrationOptions) string {
	if opt.GetInsecureTransport() {
		return "plain"
	}
	return "tls"
}

// policyReader is a store that holds the cluster's migration policies.
type policyReader interface {
	GetPolicies(ctx context.Context) (policy.Set, error)
}

// clusterInsecureTransport reports whether the cluster policy sends every
// migration in plaintext (insecureTransport: true).
func (s *Server) clusterInsecureTransport(ctx context.Context) (bool, error) {
	ps, ok := s.store.(policyReader)
	if !ok {
		return false, nil
	}
	set, err := ps.GetPolicies(ctx)
	if err != nil {
		return false, fmt.Errorf("read the cluster policy (insecureTransport): %w", err)
	}
	return set.Cluster.InsecureTransport, nil
}
