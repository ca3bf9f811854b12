package server

// Admission: every migration — ferry migrate, an evacuation's, the
// balancer's — passes the cluster policy's parallelism limits and gets
// its share of the policy's per-host bandwidth (internal/admit decides;
// this file feeds it the migrations in flight and applies its shares).

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"connectrpc.com/connect"
	ferryv1 "github.com/ferryvm/ferry/gen/ferry/v1"
	"github.com/ferryvm/ferry/internal/admit"
	"github.com/ferryvm/ferry/internal/migration/core"
	"github.com/ferryvm/ferry/internal/policy"
)

// reshareEvery re-computes the bandwidth shares even when no migration
// started or ended here (a policy change, a migration another leader
// recorded).
const reshareEvery = 10 * time.Second

// admission is the leader's admission state: starts are serialized from
// the limit check to the engine's start, so two cannot both take the last
// slot; shares are the bandwidth caps now in force, by migration id.
type admission struct {
	start sync.Mutex

	mu     sync.Mutex
	shares map[string]int64
}

// limitsOf are the cluster limits of a policy set (defaults applied).
func limitsOf(set policy.Set) admit.Limits {
	p := set.Cluster.WithDefaults()
	return admit.Limits{MaxParallelCluster: p.MaxParallelCluster, MaxParallelPerSource: p.MaxParallelPerSource,
		MaxParallelPerDest: p.MaxParallelPerDest, BandwidthPerHost: p.BandwidthPerHost}
}

// inFlight lists the migrations whose records are not terminal, each with
// its own bandwidth cap.
func (s *Server) inFlight(ctx context.Context) ([]admit.Flight, error) {
	prs, err := s.store.ListMigrations(ctx)
	if err != nil {
		return nil, fmt.Errorf("list the migrations in flight: %w", err)
	}
	var out []admit.Flight
	for _, pr := range prs {
		if core.State(pr.State).Terminal() {
			continue
		}
		out = append(out, admit.Flight{ID: pr.Id, From: pr.From, To: pr.To, Cap: float64(pr.GetReport().GetOptions().GetBandwidthMibps() << 20)})
	}
	return out, nil
}

// admitMigration refuses a migration from..to that the policy's limits do
// not allow now (a ResourceExhausted error wrapping admit.ErrLimit, which
// names the limit and how to wait or override), unless the request
// ignores them. The caller holds s.adm.start.
func (s *Server) admitMigration(ctx context.Context, vm, from, to string, opt *ferryv1.MigrationOptions) error {
	if opt.GetIgnoreLimits() {
		return nil
	}
	set, err := s.policies(ctx)
	if err != nil {
		return connectError(fmt.Errorf("read the migration policy: %w", err))
	}
	flights, err := s.inFlight(ctx)
	if err != nil {
		return connectError(err)
	}
	if err := admit.Check(limitsOf(set), flights, admit.Flight{ID: "new", From: from, To: to}); err != nil {
		return connect.NewError(connect.CodeResourceExhausted, fmt.Errorf("VM %s to %s: %w", vm, to, err))
	}
	return nil
}

// isLimit reports whether err is a refusal for a parallelism limit.
func isLimit(err error) bool { return errors.Is(err, admit.ErrLimit) }

// reshare recomputes every in-flight migration's share of the policy's
// bandwidthPerHost, counting extra too (a migration about to start, whose
// record is not written yet); the engine gives each its share at its
// start and on its next progress poll (exec.Config.Bandwidth).
func (s *Server) reshare(ctx context.Context, extra ...admit.Flight) error {
	set, err := s.policies(ctx)
	if err != nil {
		return fmt.Errorf("read the migration policy: %w", err)
	}
	flights, err := s.inFlight(ctx)
	if err != nil {
		return err
	}
	shares := admit.Shares(limitsOf(set), append(flights, extra...))
	next := make(map[string]int64, len(shares))
	for id, b := range shares {
		if b > 0 {
			next[id] = max(int64(b), 1<<20) // QEMU needs a usable floor: 1 MiB/s
		}
	}
	s.adm.mu.Lock()
	changed := len(next) != len(s.adm.shares)
	for id, b := range next {
		if s.adm.shares[id] != b {
			changed = true
		}
	}
	s.adm.shares = next
	s.adm.mu.Unlock()
	if changed && set.Cluster.BandwidthPerHost > 0 {
		s.log.Info("bandwidth per host re-shared", "bandwidth_per_host", set.Cluster.BandwidthPerHost, "shares", next)
	}
	return nil
}

// reshareSoon runs reshare in the background (from the engine's hooks,
// which must not block on the store).
func (s *Server) reshareSoon() {
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		s.adm.start.Lock() // not between a start's own reshare and its record
		defer s.adm.start.Unlock()
		if err := s.reshare(ctx); err != nil {
			s.log.Warn("bandwidth shares not recomputed; the next start, end or period does", "err", err)
		}
	}()
}

// reshareLoop recomputes the shares every reshareEvery until ctx ends.
func (s *Server) reshareLoop(ctx context.Context) {
	t := time.NewTicker(reshareEvery)
	defer t.Stop()
	for {
		s.adm.start.Lock()
		err := s.reshare(ctx)
		s.adm.start.Unlock()
		if err != nil && ctx.Err() == nil {
			s.log.Warn("bandwidth shares not recomputed", "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// bandwidthShare is migration id's bandwidth cap now (bytes/s; 0: its
// own options').
func (s *Server) bandwidthShare(id string) int64 {
	s.adm.mu.Lock()
	defer s.adm.mu.Unlock()
	return s.adm.shares[id]
}

// applyPolicy fills what the request leaves unset from the VM's effective
// policy: its bandwidth cap (bandwidthPerMigration), its downtime target
// (unless the VM spec sets one), and — when the policy sets them — the
// completion timeout (completionTimeoutPerGiB × the VM's GiB of RAM) and
// the progress timeout.
func applyPolicy(set policy.Set, vm *ferryv1.VM, opt *ferryv1.MigrationOptions) {
	eff := set.Resolve(vm.Spec.GetName(), vm.Spec.GetLabels())
	if opt.BandwidthMibps == 0 && eff.BandwidthPerMigration > 0 {
		opt.BandwidthMibps = max(int64(eff.BandwidthPerMigration/(1<<20)), 1)
	}
	if opt.MaxDowntimeMs == 0 && vm.Spec.GetMaxDowntimeMs() == 0 {
		opt.MaxDowntimeMs = eff.MaxDowntime.Milliseconds()
	}
	perGiB, progress := set.Timeouts(vm.Spec.GetName(), vm.Spec.GetLabels())
	if opt.TimeoutMs == 0 && perGiB > 0 {
		gib := max(float64(vm.Spec.GetMemoryMib())/1024, 1)
		opt.TimeoutMs = time.Duration(gib * float64(perGiB)).Milliseconds()
	}
	if opt.StallTimeoutMs == 0 && progress > 0 {
		opt.StallTimeoutMs = progress.Milliseconds()
	}
}
