package server

import (
	"context"
	"errors"
	"fmt"
	"github.com/ferryvm/ferry/internal/store"
	"time"

	agentv1 "github.com/ferryvm/ferry/gen/ferry/agent/v1"
	ferryv1 "github.com/ferryvm/ferry/gen/ferry/v1"
	"github.com/ferryvm/ferry/internal/migration/exec"
	"github.com/ferryvm/ferry/internal/planner"
	"google.golang.org/protobuf/proto"
)

// unlimitedBandwidth is QEMU's max-bandwidth for "no cap" (bytes/s).
const unlimitedBandwidth = int64(1) << 40

// newEngine builds the migration engine over the server's store and agents.
func (s *Server) newEngine() *exec.Engine {
	pool := exec.NewPool(exec.Timeouts{})
	return exec.New(exec.Config{
		Store:   s.store,
		Records: s.store,
		AgentFor: func(ctx context.Context, host string) (exec.Agent, error) {
			h, err := s.store.GetHost(ctx, host)
			if err != nil {
				return nil, fmt.Errorf("host %s of the migration: %w", host, err)
			}
			return pool.Get(h.Address), nil
		},
		Knobs:      knobs,
		Release:    s.releaseReservationErr, // reservations.go: the destination's room, held since beginMigration
		Controller: controller,
		Replan:     s.replanMigration, // replan.go: a stuck auto-chosen pre-copy retried as hybrid or converge
		Learn: func(from, to string, l exec.Learned) {
			// What QEMU really reaches between these hosts (and anywhere):
			// the planner's bandwidth for the next migration.
			s.bw.observe(from, to, l.LinkMibps)
			// What one stream and one mirror reach when the link is not
			// their limit (rates.go).
			s.bw.learnRates(from, to, l)
			// What the pair's outages cost it (telemetry.Links.ObserveStall).
			if l.StallKnown {
				s.bw.observeStall(from, to, l.Stalled)
			}
		},
		// A write refused by the leader fence: this replica no longer
		// leads; its engine stops and the new leader takes over.
		Fenced: func(err error) bool { return errors.Is(err, store.ErrNotLeader) },
		// Finished migrations are counted at the engine's terminal
		// transition (see migrationMetrics).
		Ended: func(m *ferryv1.Migration) {
			s.metrics.mig.migrationEnded(m)
			s.fix.observe(m) // evacuation ETAs include the fixed time
			s.reshareSoon()  // its share of bandwidthPerHost goes to the others
		},
		Bandwidth: s.bandwidthShare,
		Log:       s.log,
	})
}

// RunEngine recovers every in-flight migration from its record and runs
// the migration engine until ctx ends (the server stops, or this replica
// stops leading). Migrations can be started only while it runs.
func (s *Server) RunEngine(ctx context.Context) error {
	// The leader's reconcilers live as long as its engine.
	go s.runRetention(ctx)
	go s.linkProbeLoop(ctx)
	go s.runEvents(ctx)
	go s.runEventRetention(ctx)
	go s.reshareLoop(ctx)
	s.metrics.mig.leadingChanged(true)
	defer s.metrics.mig.leadingChanged(false)
	if s.drain != nil {
		go s.drain.Run(ctx) // evacuations resume from their records
	}
	if s.balancer != nil {
		go s.balancer.Run(ctx)
	}
	err := s.engine.Run(ctx)
	if err != nil && !errors.Is(err, context.Canceled) {
		return fmt.Errorf("migration engine: %w", err)
	}
	return nil
}

// HandOverWait bounds a stopping leader's handover (exec.HandOverWait).
const HandOverWait = exec.HandOverWait

// HandOver hands this leader's in-flight migrations over before it
// resigns (replica.HandOverer): each record is written with the
// handed-over fact of term and its runner stops acting; the next leader
// adopts them (internal/migration/core/handover.go).
func (s *Server) HandOver(ctx context.Context, term int64) {
	handed, left := s.engine.HandOver(ctx, term)
	s.log.Info("handed the migrations over to the next leader", "term", term, "handed_over", handed, "left_as_written", left)
}

// knobs are the QEMU parameters of a migration, from its options and plan.
func knobs(m *ferryv1.Migration, vm *ferryv1.VM) exec.Knobs {
	sp := proto.Clone(vm.GetSpec()).(*ferryv1.VMSpec)
	if vm.GetAccel() != "" {
		sp.Accel = vm.Accel // the destination must emulate exactly like the source
	}
	opt := m.GetOptions()
	bw := unlimitedBandwidth
	if opt.GetBandwidthMibps() > 0 {
		bw = opt.GetBandwidthMibps() << 20
	}
	k := exec.Knobs{
		Spec: sp, MaxBandwidthBytes: bw, DowntimeLimitMs: qemuDowntimeLimit(m), MultifdChannels: opt.GetMultifdChannels(),
		MaxPostcopyBandwidthBytes: postcopyBandwidth(m, bw), ThrottleInitial: throttleInitial, ThrottleIncrement: throttleIncrement,
		NoThrottle: opt.GetNoThrottle(), LocalDisks: localDiskKnobs(m),
		GuestAliveTimeout: time.Duration(opt.GetGuestAliveTimeoutMs()) * time.Millisecond,
		InsecureTransport: opt.GetInsecureTransport(),
	}
	applyTuning(&k, m.GetPlan().GetTuning(), m.Strategy)
	return k
}

// localDiskKnobs are the local disks the destination creates and the
// source mirrors (from the migration's record).
func localDiskKnobs(m *ferryv1.Migration) []*agentv1.LocalDisk {
	var out []*agentv1.LocalDisk
	for _, d := range m.GetDisks() {
		out = append(out, &agentv1.LocalDisk{Name: d.Name, Format: d.Format, VirtualSizeBytes: d.VirtualSizeBytes, AllocatedBytes: d.AllocatedBytes})
	}
	return out
}

// controller is the adaptive controller of a planned pre-copy, hybrid or
// converge migration (nil otherwise). Each steps QEMU's downtime-limit up
// from planner.DowntimeStepStart only as far as convergence needs (capped
// by the VM's max downtime); plain pre-copy does nothing else, except that
// one auto chose asks to be retried as hybrid or converge when it cannot
// converge at the cap (planner.ControllerOptions.AutoChosen).
func controller(m *ferryv1.Migration) *planner.Controller {
	if m.GetPlan().GetInputs() == nil || (m.Strategy != "hybrid" && m.Strategy != "converge" && m.Strategy != "precopy") {
		return nil
	}
	opt := m.GetOptions()
	// The model's rate is that of the tuning that runs: zstd channels
	// only where the plan's tuning asked QEMU for them.
	pin := plannerInputs(m.Plan.Inputs, opt, m.GetPlan().GetTuning().GetMultifdCompression() == "zstd")
	if m.Strategy == "precopy" {
		// A pre-copy the planner chose (auto) that cannot converge at its
		// downtime cap is retried as hybrid (or converge) when the policy
		// allows it; one the operator named is never changed.
		return planner.NewSteppedController(pin, planner.ControllerOptions{DowntimeOnly: true,
			AutoChosen: m.GetPlan().GetRequested() == "auto"})
	}
	pin.Policy.AllowConverge = m.Strategy == "converge" || !opt.GetNoThrottle()
	pin.Policy.AllowPostcopy = m.Strategy == "hybrid"
	return planner.NewSteppedController(pin, planner.ControllerOptions{StepDowntime: true})
}

// postcopyBandwidth caps post-copy's background stream at the tuning's
// share of the link the planner measured (or of --bandwidth): 80%, 90%
// with postcopy-preempt, so pages the running guest faults in do not wait
// behind a full queue of background pages.
func postcopyBandwidth(m *ferryv1.Migration, capBytes int64) int64 {
	link := float64(capBytes)
	if in := m.GetPlan().GetInputs(); in != nil && in.BandwidthMibps > 0 {
		link = min(link, in.BandwidthMibps*(1<<20))
	}
	share := planner.PostcopyBackgroundShare
	if t := m.GetPlan().GetTuning(); t.GetPostcopyBackgroundShare() > 0 {
		share = t.PostcopyBackgroundShare
	}
	if share >= 1 {
		return capBytes // faulted pages have their own channel: no reserve
	}
	return int64(link * share)
}

// qemuDowntimeLimit is QEMU's downtime-limit: the target less what the
// planner expects for the device state and the switchover, so the whole
// pause meets the target (the target itself without a plan).
func qemuDowntimeLimit(m *ferryv1.Migration) int64 {
	if p := m.GetPredicted(); p != nil && p.DowntimeLimitMs > 0 {
		return p.DowntimeLimitMs
	}
	return m.GetOptions().GetMaxDowntimeMs()
}

// coreOptions are the engine's time bounds from the request's options.
func coreOptions(opt *ferryv1.MigrationOptions) (stall, timeout, window time.Duration) {
	return time.Duration(opt.StallTimeoutMs) * time.Millisecond, time.Duration(opt.TimeoutMs) * time.Millisecond,
		time.Duration(opt.RecoveryWindowMs) * time.Millisecond
}
