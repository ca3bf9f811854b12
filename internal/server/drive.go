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
	"github.com/ferryvm/ferry/internal/migration"
	"github.com/ferryvm/ferry/internal/planner"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// errCancelled is the cause recorded when the user cancels.
var errCancelled = errors.New("cancelled by the user")

// driver drives one migration; only its goroutine touches its fields.
type driver struct {
	s         *Server
	r         *run
	vm        *ferryv1.VM // the record when the migration began
	src, dst  *agentClients
	prevState string // the VM's state to restore on rollback

	outgoingStarted bool
	transferStart   time.Time
	lastOut         *agentv1.OutgoingStatus

	ctrl           *planner.Controller // nil when migrating without a plan
	postcopyAsked  bool
	postcopyActive bool
	recoverURI     string // where the destination listens for a post-copy resume
}

// drive runs a migration to its end and forgets it.
func (s *Server) drive(r *run, vm *ferryv1.VM, src, dst *ferryv1.Host, prev string) {
	d := &driver{s: s, r: r, vm: vm, src: s.agents.get(src.Address), dst: s.agents.get(dst.Address), prevState: prev}
	ctx := context.Background()
	if r.m.Strategy == "cold" {
		d.cold(ctx)
	} else {
		d.live(ctx)
	}
	s.runsMu.Lock()
	delete(s.runs, r.m.Id)
	s.runsMu.Unlock()
}

func (d *driver) name() string { return d.r.m.Vm }
func (d *driver) id() string   { return d.r.m.Id }
func (d *driver) isCold() bool { return d.r.m.Strategy == "cold" }
func (d *driver) stepReq() *connect.Request[agentv1.MigrationStepRequest] {
	return connect.NewRequest(&agentv1.MigrationStepRequest{Name: d.name(), MigrationId: d.id()})
}

// step advances the state machine and persists the new state before the
// caller acts on it.
func (d *driver) step(ev migration.Event, msg string) error {
	return d.advance(ev, msg, true)
}

// advance is step with the persisting optional: inside the guest's pause
// (pre-switchover → commit → continue) the only write is the owner CAS on
// the VM record, which is itself the persisted commit point (recovery
// reads it); the migration record follows right after the continue.
func (d *driver) advance(ev migration.Event, msg string, persist bool) error {
	d.r.mu.Lock()
	next, err := migration.Step(migration.State(d.r.m.State), ev, d.isCold())
	if err == nil {
		d.r.m.State, d.r.m.Status = string(next), next.Status()
		d.r.event(string(next), msg)
		if next.Terminal() {
			d.r.m.FinishedAt = timestamppb.Now()
			d.r.m.TotalMs = time.Since(d.r.m.StartedAt.AsTime()).Milliseconds()
		}
	}
	d.r.mu.Unlock()
	if err != nil {
		d.s.log.Error("migration state machine", "id", d.id(), "err", err)
		return err
	}
	d.s.log.Info("migration step", "id", d.id(), "vm", d.name(), "state", next, "msg", msg)
	if persist {
		d.save(next.Terminal())
	}
	return nil
}

// save persists the migration record. The per-sample series is written
// only with the final record: while the migration runs, readers get it
// from memory, and rewriting it every second would grow each etcd write
// with the migration's length.
func (d *driver) save(withSamples bool) {
	m := d.r.snapshot(withSamples)
	m.UpdatedAt = timestamppb.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := d.s.store.PutMigration(ctx, m); err != nil {
		d.s.log.Error("persist migration", "id", d.id(), "err", err)
	}
	d.r.lastSave = time.Now()
}

// retry calls fn until it succeeds or the budget runs out.
func retry(ctx context.Context, budget time.Duration, fn func(context.Context) error) error {
	deadline := time.Now().Add(budget)
	for {
		cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		err := fn(cctx)
		cancel()
		if err == nil || time.Now().After(deadline) {
			return err
		}
		var ce *connect.Error
		if errors.As(err, &ce) && (ce.Code() == connect.CodeFailedPrecondition || ce.Code() == connect.CodeInvalidArgument || ce.Code() == connect.CodeNotFound) {
			return err // a refusal, not a transient failure
		}
		select {
		case <-ctx.Done():
			return err
		case <-time.After(500 * time.Millisecond):
		}
	}
}

// live drives a pre-copy live migration.
func (d *driver) live(ctx context.Context) {
	m := d.r.snapshot(false)
	if err := d.step(migration.EvBeginLive, "starting the destination QEMU on "+m.To); err != nil {
		return
	}
	sp := proto.Clone(d.vm.Spec).(*ferryv1.VMSpec)
	if d.vm.Accel != "" {
		sp.Accel = d.vm.Accel // the destination must emulate exactly like the source
	}
	pctx, cancel := context.WithTimeout(ctx, 90*time.Second)
	usePostcopy := m.Strategy == "postcopy" || m.Strategy == "hybrid"
	prep, err := d.dst.mig.PrepareIncoming(pctx, connect.NewRequest(&agentv1.PrepareIncomingRequest{
		Spec: sp, MigrationId: d.id(), MultifdChannels: m.Options.MultifdChannels, Postcopy: usePostcopy,
	}))
	cancel()
	if err != nil {
		d.rollback(ctx, fmt.Errorf("prepare destination on %s: %w", m.To, err))
		return
	}
	d.r.mu.Lock()
	d.r.m.DestUri = prep.Msg.Uri
	d.r.mu.Unlock()
	if d.r.cancelled() {
		d.rollback(ctx, errCancelled)
		return
	}
	if err := d.step(migration.EvPrepared, "sending RAM to "+prep.Msg.Uri); err != nil {
		return
	}
	bw := unlimitedBandwidth
	if m.Options.BandwidthMibps > 0 {
		bw = m.Options.BandwidthMibps << 20
	}
	d.transferStart = time.Now()
	d.outgoingStarted = true
	sctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	throttle := m.Strategy == "converge" || (m.Strategy == "hybrid" && !m.Options.NoThrottle)
	_, err = d.src.mig.StartOutgoing(sctx, connect.NewRequest(&agentv1.StartOutgoingRequest{
		Name: d.name(), MigrationId: d.id(), Uri: prep.Msg.Uri,
		MaxBandwidthBytes: bw, DowntimeLimitMs: qemuDowntimeLimit(m), MultifdChannels: m.Options.MultifdChannels,
		Postcopy: usePostcopy, AutoConverge: throttle, ThrottleInitial: throttleInitial, ThrottleIncrement: throttleIncrement,
		MaxPostcopyBandwidthBytes: postcopyBandwidth(m, bw),
	}))
	cancel()
	if err != nil {
		d.rollback(ctx, fmt.Errorf("start sending from %s: %w", m.From, err))
		return
	}
	if m.Plan != nil {
		pin := plannerInputs(m.Plan.Inputs, m.Options)
		pin.Policy.AllowConverge = throttle
		pin.Policy.AllowPostcopy = usePostcopy && m.Strategy == "hybrid"
		d.ctrl = planner.NewController(pin)
	}
	if err := d.transfer(ctx); err != nil {
		d.rollback(ctx, err)
		return
	}
	if err := d.advance(migration.EvPreSwitchover, "source paused with the last RAM sent; switching the owner", false); err != nil {
		return
	}
	if d.r.cancelled() {
		d.rollback(ctx, errCancelled)
		return
	}
	if err := d.switchOwner(ctx, m.To); err != nil {
		d.rollback(ctx, fmt.Errorf("ownership compare-and-swap: %w", err))
		return
	}
	if err := d.advance(migration.EvCommitted, "owner is now "+m.To+" (generation CAS succeeded)", false); err != nil {
		return
	}
	d.forward(ctx)
}

// switchOwner moves the VM record to host with a compare-and-swap on the
// generation the migration locked; any other write since makes it fail.
func (d *driver) switchOwner(ctx context.Context, host string) error {
	d.r.mu.Lock()
	gen := d.r.m.VmGeneration
	d.r.mu.Unlock()
	cur, err := d.s.store.GetVM(ctx, d.name())
	if err != nil {
		return err
	}
	cur.Host = host
	if err := d.s.store.SwapVM(ctx, cur, gen); err != nil {
		return err
	}
	d.r.mu.Lock()
	d.r.m.VmGeneration = cur.Generation
	d.r.mu.Unlock()
	if host == d.r.m.To {
		// The owner is the destination now: the HA e2e test kills the
		// leader here (the engine keeps a point of the same name).
		if err := failpoint.Inject("engine/after-owner-cas"); err != nil {
			return err
		}
	}
	return nil
}

// transfer polls both sides until the source reaches pre-switchover, and
// fails on cancel, a stall, a timeout, or either side going away.
func (d *driver) transfer(ctx context.Context) error {
	opt := d.r.snapshot(false).Options
	stall := time.Duration(opt.StallTimeoutMs) * time.Millisecond
	deadline := d.r.started.Add(time.Duration(opt.TimeoutMs) * time.Millisecond)
	var lastTransferred int64 = -1
	lastProgress := time.Now()
	var srcDownSince, dstDownSince time.Time
	lastDstCheck := time.Time{}
	for {
		if d.r.cancelled() {
			return errCancelled
		}
		resp, err := d.pollSource(ctx, 100*time.Millisecond)
		now := time.Now()
		if err != nil {
			if srcDownSince.IsZero() {
				srcDownSince = now
			}
			if now.Sub(srcDownSince) > 5*time.Second {
				return fmt.Errorf("source agent unreachable for 5s: %w", err)
			}
			time.Sleep(100 * time.Millisecond)
		} else {
			srcDownSince = time.Time{}
			out := resp.Msg.Status
			d.record(out)
			switch out.Status {
			case "pre-switchover":
				return nil
			case "failed", "cancelled", "completed":
				return fmt.Errorf("source QEMU reports the migration %s: %s", out.Status, orUnknown(out.Error))
			}
			if out.TransferredBytes > lastTransferred {
				lastTransferred, lastProgress = out.TransferredBytes, now
			}
			if err := d.steer(ctx, out); err != nil {
				return err
			}
		}
		if now.Sub(lastProgress) > stall {
			return fmt.Errorf("no progress for %s (%d bytes sent): the link between the hosts may be down", stall, lastTransferred)
		}
		if now.After(deadline) {
			return fmt.Errorf("migration timeout of %s reached", time.Duration(opt.TimeoutMs)*time.Millisecond)
		}
		if now.Sub(lastDstCheck) >= 300*time.Millisecond {
			lastDstCheck = now
			qctx, cancel := context.WithTimeout(ctx, 2*time.Second)
			in, err := d.dst.mig.QueryIncoming(qctx, d.stepReq())
			cancel()
			switch {
			case err != nil && connect.CodeOf(err) == connect.CodeNotFound:
				return errors.New("destination QEMU is gone (it exited or was killed)")
			case err != nil:
				if dstDownSince.IsZero() {
					dstDownSince = now
				}
				if now.Sub(dstDownSince) > 2*time.Second {
					return fmt.Errorf("destination agent unreachable for 2s: %w", err)
				}
			case in.Msg.Status.GetVm().GetPid() == 0:
				return errors.New("destination QEMU is gone (it exited or was killed)")
			default:
				dstDownSince = time.Time{}
			}
		}
		if now.Sub(d.r.lastSave) > time.Second {
			d.save(false)
		}
	}
}

func orUnknown(s string) string {
	if s == "" {
		return "no reason given"
	}
	return s
}

// postcopyBandwidth caps post-copy's background stream at 80% of the link
// the planner measured (or of --bandwidth), so pages the running guest
// faults in do not wait behind a full queue of background pages.
func postcopyBandwidth(m *ferryv1.Migration, capBytes int64) int64 {
	link := float64(capBytes)
	if in := m.GetPlan().GetInputs(); in != nil && in.BandwidthMibps > 0 {
		link = min(link, in.BandwidthMibps*(1<<20))
	}
	return int64(link * 0.8)
}

// qemuDowntimeLimit is QEMU's downtime-limit: the target less what the
// planner expects for the device state and the switchover, so the whole
// pause meets the target (the target itself without a plan).
func qemuDowntimeLimit(m *ferryv1.Migration) int64 {
	if p := m.GetPredicted(); p != nil && p.DowntimeLimitMs > 0 {
		return p.DowntimeLimitMs
	}
	return m.Options.MaxDowntimeMs
}

// pollSource is a long poll of the source: the agent answers at once when
// QEMU's migration status moves (pre-switchover above all), else after
// wait with the current progress.
func (d *driver) pollSource(ctx context.Context, wait time.Duration) (*connect.Response[agentv1.OutgoingStatusResponse], error) {
	req := d.stepReq()
	req.Msg.WaitMs = wait.Milliseconds()
	if d.lastOut != nil {
		req.Msg.KnownStatus = d.lastOut.Status
	}
	qctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	return d.src.mig.QueryOutgoing(qctx, req)
}

// steer applies the strategy while RAM moves: post-copy switches after the
// first full round; the adaptive controller may throttle (QEMU's
// auto-converge does it), switch to post-copy (hybrid) or give up.
func (d *driver) steer(ctx context.Context, out *agentv1.OutgoingStatus) error {
	strategy := d.r.snapshot(false).Strategy
	if strategy == "postcopy" && !d.postcopyAsked && out.DirtySyncCount >= 2 {
		return d.startPostcopy(ctx, "post-copy: the first full round is done")
	}
	if d.ctrl == nil || d.postcopyAsked {
		return nil
	}
	act := d.ctrl.Observe(planner.Sample{
		Elapsed: time.Since(d.transferStart), Round: int(out.DirtySyncCount),
		RemainingBytes: out.RemainingBytes, TransferredBytes: out.TransferredBytes,
		DirtyRateBytesPerSec: out.DirtyPagesRate * float64(out.PageSize), RateBytesPerSec: out.Mbps / 8 * 1e6,
		Throttle: int(out.ThrottlePercent),
	})
	if act.Kind == planner.None {
		return nil
	}
	d.decide(act.Kind.String(), act.Reason)
	switch act.Kind {
	case planner.StartPostcopy:
		return d.startPostcopy(ctx, act.Reason)
	case planner.Abort:
		// With QEMU throttling, give up only once the throttle is at its
		// maximum: until then the controller's view of a round is noisy
		// and QEMU is still slowing the guest down.
		if strategy == "converge" && out.ThrottlePercent < 99 {
			d.decide("wait", fmt.Sprintf("not aborting yet: QEMU's throttle is %d%%, below its 99%% maximum", out.ThrottlePercent))
			return nil
		}
		return fmt.Errorf("the migration cannot finish within policy: %s", act.Reason)
	}
	return nil
}

// decide records a controller decision in the report.
func (d *driver) decide(action, reason string) {
	d.r.mu.Lock()
	defer d.r.mu.Unlock()
	d.r.m.Decisions = append(d.r.m.Decisions, &ferryv1.ControllerDecision{TMs: time.Since(d.r.started).Milliseconds(), Action: action, Reason: reason})
}

// startPostcopy asks the source to switch to post-copy; it then pauses at
// pre-switchover like any switchover, so the owner CAS comes first.
func (d *driver) startPostcopy(ctx context.Context, why string) error {
	d.postcopyAsked = true
	if d.r.snapshot(false).Strategy == "postcopy" {
		d.decide("start-postcopy", why)
	}
	sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if _, err := d.src.mig.StartPostcopy(sctx, d.stepReq()); err != nil {
		return fmt.Errorf("switch to post-copy: %w", err)
	}
	d.postcopyActive = true
	return nil
}

// record folds a source status into the report and its samples.
func (d *driver) record(out *agentv1.OutgoingStatus) {
	if out.TotalBytes == 0 && d.lastOut != nil {
		return // a failed or cancelled QEMU reports no RAM figures: keep the last real ones
	}
	d.lastOut = out
	dirty := out.DirtyPagesRate * float64(out.PageSize) / (1 << 20)
	d.r.mu.Lock()
	defer d.r.mu.Unlock()
	m := d.r.m
	m.TransferredBytes, m.RemainingBytes, m.TotalBytes = out.TransferredBytes, out.RemainingBytes, out.TotalBytes
	m.Rounds, m.DirtyRateMibps, m.ExpectedDowntimeMs, m.SetupMs = out.DirtySyncCount, dirty, out.ExpectedDowntimeMs, out.SetupMs
	m.ThrottlePercent = max(m.ThrottlePercent, out.ThrottlePercent)
	m.PostcopyRequests = max(m.PostcopyRequests, out.PostcopyRequests)
	if el := time.Since(d.transferStart).Seconds(); el > 0 {
		m.BandwidthMibps = float64(out.TransferredBytes) / (1 << 20) / el
	}
	m.Samples = append(m.Samples, &ferryv1.MigrationSample{
		TMs: time.Since(d.r.started).Milliseconds(), RemainingBytes: out.RemainingBytes, TransferredBytes: out.TransferredBytes,
		DirtyRateMibps: dirty, RateMibps: out.Mbps / 8 * 1e6 / (1 << 20), Round: out.DirtySyncCount,
	})
	if len(m.Samples) > 4000 { // keep long migrations bounded: drop every other sample
		kept := m.Samples[:0]
		for i, s := range m.Samples {
			if i%2 == 0 {
				kept = append(kept, s)
			}
		}
		m.Samples = kept
	}
}
