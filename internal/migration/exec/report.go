package exec

import (
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	agentv1 "github.com/ferryvm/ferry/gen/ferry/agent/v1"
	ferryv1 "github.com/ferryvm/ferry/gen/ferry/v1"
	"github.com/ferryvm/ferry/internal/migration/core"
	"github.com/ferryvm/ferry/internal/planner"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// maxSamples bounds a report's progress series: beyond it every other
// sample is dropped.
const maxSamples = 4000

// reporter builds a migration's public report (ferryv1.Migration) from the
// record the core keeps and the agent replies the performer sees: figures,
// samples, downtime phases, the controller's decisions. It also runs the
// adaptive controller and hands its decisions to the core (steer).
type reporter struct {
	mu       sync.Mutex
	m        *ferryv1.Migration
	ctrl     *planner.Controller // nil without a plan or for strategies it does not steer
	steered  bool                // a decision went to the core: no more
	steer    func(s core.Steer, as core.Strategy, why string)
	lastOut  *agentv1.OutgoingStatus
	lastIn   *agentv1.IncomingStatus
	transfer time.Time // when StartOutgoing answered first
	stopAt   time.Time // cold: the source stopped
	dstVM    *ferryv1.VMStatus
	postcopy bool
	// precopyMibps is the live rate of a post-copy migration's pre-copy
	// phase (round 1) when it ran at least minLearnPhase: what the link
	// carried before the switch (0: none).
	precopyMibps float64
	extra        []*ferryv1.MigrationEvent // warning events (see Alive)
	// The live phase's progress, for a learned rate without outages:
	// when (since the transfer began) bytes last grew, to how many, and
	// the stalls of stallMin or more seen before that.
	progressAt, liveAt, stalled time.Duration
	lastBytes, liveBytes        int64
	progressSet                 bool
}

// minLearnPhase is how long a migration's live phase (a post-copy's
// pre-copy phase) must have run for its rate to be learned: a shorter one
// is mostly setup, ramp-up and the final sync, and taught the bench's idle
// scenario 117-440 MiB/s of a 1.4 GiB/s link — a figure that then capped
// the plans of every guest after it.
const minLearnPhase = 2 * time.Second

func newReporter(m *ferryv1.Migration, ctrl *planner.Controller) *reporter {
	r := &reporter{m: m, ctrl: ctrl, extra: warningEvents(m)}
	if m.StartedAt != nil {
		r.transfer = m.StartedAt.AsTime()
	}
	return r
}

// snapshot returns a copy of the report (without samples unless asked).
func (r *reporter) snapshot(withSamples bool) *ferryv1.Migration {
	r.mu.Lock()
	defer r.mu.Unlock()
	m := proto.Clone(r.m).(*ferryv1.Migration)
	if !withSamples {
		m.Samples = nil
	}
	return m
}

// render folds the core's record into the report: state, status, error,
// history, end time.
func (r *reporter) render(rec core.Record) *ferryv1.Migration {
	r.mu.Lock()
	defer r.mu.Unlock()
	m := r.m
	m.State, m.Status = string(rec.State), rec.State.Status()
	m.Strategy = string(rec.Strategy) // the re-planned attempt's, once it started
	m.Error = rec.Error
	m.CancelRequested = rec.CancelRequested
	m.VmGeneration = rec.Generation
	m.DestUri = rec.DestURI
	m.DiskUri = rec.DiskURI
	m.Events = m.Events[:0]
	for _, e := range rec.History {
		m.Events = append(m.Events, &ferryv1.MigrationEvent{At: timestamppb.New(e.At), State: string(e.State), Message: e.Message})
	}
	m.Events = mergeEvents(m.Events, r.extra)
	m.PostcopyPausedMs = pausedMs(rec.History, time.Now())
	renderRetries(m, rec)
	if rec.State.Terminal() && !rec.FinishedAt.IsZero() {
		m.FinishedAt = timestamppb.New(rec.FinishedAt)
		m.TotalMs = rec.FinishedAt.Sub(rec.StartedAt).Milliseconds()
	}
	m.UpdatedAt = timestamppb.Now()
	return proto.Clone(m).(*ferryv1.Migration)
}

// decide records a controller decision.
func (r *reporter) decideLocked(action, reason string) {
	r.m.Decisions = append(r.m.Decisions, &ferryv1.ControllerDecision{
		TMs: time.Since(r.m.StartedAt.AsTime()).Milliseconds(), Action: action, Reason: reason,
	})
}

// Outgoing implements Watcher: figures, a sample, the controller.
func (r *reporter) Outgoing(k core.ActionKind, out *agentv1.OutgoingStatus) {
	if out == nil {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if k == core.ActCopyDisks {
		r.disksLocked(out) // a cold migration's disk copy: no RAM figures
		return
	}
	if k == core.ActStartOutgoing && r.lastOut == nil {
		r.transfer = time.Now()
	}
	r.disksLocked(out)
	if (k == core.ActStartPostcopy || out.PostcopyStartedAt != nil) && !r.postcopy {
		r.postcopy = true
		if !r.transfer.IsZero() && time.Since(r.transfer) >= minLearnPhase && r.m.GetOptions().GetBandwidthMibps() == 0 {
			r.precopyMibps = r.liveMibpsLocked() // the pre-copy phase's average, before this status
		}
	}
	if prev := r.lastOut; prev != nil {
		if out.TotalBytes == 0 {
			// A failed, cancelled or finished QEMU reports no RAM figures:
			// keep the last real ones, but take its event times.
			keep := proto.Clone(prev).(*agentv1.OutgoingStatus)
			keep.Status, keep.DowntimeMs = out.Status, max(keep.DowntimeMs, out.DowntimeMs)
			mergeOutTimes(keep, out)
			r.lastOut = keep
			r.phasesLocked()
			return
		}
		out = proto.Clone(out).(*agentv1.OutgoingStatus)
		mergeOutTimes(out, prev)
	}
	r.lastOut = out
	m := r.m
	dirty := out.DirtyPagesRate * float64(out.PageSize) / (1 << 20)
	m.TransferredBytes, m.RemainingBytes, m.TotalBytes = out.TransferredBytes, out.RemainingBytes, out.TotalBytes
	m.Rounds, m.DirtyRateMibps, m.ExpectedDowntimeMs, m.SetupMs = out.DirtySyncCount, dirty, out.ExpectedDowntimeMs, out.SetupMs
	m.ThrottlePercent = max(m.ThrottlePercent, out.ThrottlePercent)
	m.PostcopyRequests = max(m.PostcopyRequests, out.PostcopyRequests)
	if el := time.Since(r.transfer).Seconds(); el > 0 && out.PreSwitchoverAt == nil {
		// Everything the link carried since the start: RAM and the local
		// disks' mirrors (which run first), so that a migration with disks
		// teaches the planner the link's rate, not RAM over the whole time.
		m.BandwidthMibps = float64(out.TransferredBytes+m.DiskBytesTransferred) / (1 << 20) / el
		if !r.postcopy {
			r.noteProgressLocked(time.Duration(el*float64(time.Second)), out.TransferredBytes+m.DiskBytesTransferred)
		}
	}
	if k == core.ActQueryOutgoing {
		m.Samples = append(m.Samples, &ferryv1.MigrationSample{
			TMs: time.Since(m.StartedAt.AsTime()).Milliseconds(), RemainingBytes: out.RemainingBytes, TransferredBytes: out.TransferredBytes,
			DirtyRateMibps: dirty, RateMibps: out.Mbps / 8 * 1e6 / (1 << 20), Round: out.DirtySyncCount,
		})
		if len(m.Samples) > maxSamples {
			kept := m.Samples[:0]
			for i, s := range m.Samples {
				if i%2 == 0 {
					kept = append(kept, s)
				}
			}
			m.Samples = kept
		}
		r.steerLocked(out)
	}
	r.phasesLocked()
}

// steerLocked feeds the adaptive controller one sample while RAM moves
// (pre-copy only) and hands a decision to the core.
func (r *reporter) steerLocked(out *agentv1.OutgoingStatus) {
	if r.ctrl == nil || r.steered || r.steer == nil || out.Status != "active" {
		return
	}
	act := r.ctrl.Observe(planner.Sample{
		Elapsed: time.Since(r.transfer), Round: int(out.DirtySyncCount),
		RemainingBytes: out.RemainingBytes, TransferredBytes: out.TransferredBytes,
		DirtyRateBytesPerSec: out.DirtyPagesRate * float64(out.PageSize), RateBytesPerSec: out.Mbps / 8 * 1e6,
		Throttle: int(out.ThrottlePercent),
	})
	switch act.Kind {
	case planner.None:
		return
	case planner.StartPostcopy:
		r.decideLocked(act.Kind.String(), act.Reason)
		r.steered = true
		go r.steer(core.SteerPostcopy, "", act.Reason)
	case planner.Abort:
		// With QEMU throttling, give up only once the throttle is at its
		// maximum: until then a round's figures are noisy and QEMU is still
		// slowing the guest down.
		if r.m.Strategy == "converge" && out.ThrottlePercent < 99 {
			r.decideLocked("wait", fmt.Sprintf("not aborting yet: QEMU's throttle is %d%%, below its 99%% maximum", out.ThrottlePercent))
			return
		}
		r.decideLocked(act.Kind.String(), act.Reason)
		r.steered = true
		if act.RetryAs != "" {
			// An auto-chosen pre-copy that cannot converge: this attempt
			// ends, the next one runs RetryAs (core replan.go).
			go r.steer(core.SteerReplan, core.Strategy(act.RetryAs), act.Reason)
			return
		}
		go r.steer(core.SteerAbort, "", "the migration cannot finish within policy: "+act.Reason)
	default:
		r.decideLocked(act.Kind.String(), act.Reason)
	}
}

// DowntimeLimitMs is the downtime-limit the source QEMU should have now:
// the adaptive controller's stepped target, or 0 (keep the knob's).
func (r *reporter) DowntimeLimitMs() int64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.ctrl == nil {
		return 0
	}
	return r.ctrl.DowntimeLimit().Milliseconds()
}

// Incoming implements Watcher.
func (r *reporter) Incoming(_ core.ActionKind, in *agentv1.IncomingStatus) {
	if in == nil {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if prev := r.lastIn; prev != nil {
		// An adopted destination may report no event times any more: keep
		// the arrival's.
		in = proto.Clone(in).(*agentv1.IncomingStatus)
		in.LoadedAt, in.ResumedAt = cmpTS(in.LoadedAt, prev.LoadedAt), cmpTS(in.ResumedAt, prev.ResumedAt)
	}
	r.lastIn = in
	if in.Vm != nil && in.Vm.Pid > 0 {
		r.dstVM = in.Vm
	}
	r.phasesLocked()
}

// VM implements Watcher: a cold migration's stop and start times.
func (r *reporter) VM(side core.Side, k core.ActionKind, st *ferryv1.VMStatus) {
	r.mu.Lock()
	defer r.mu.Unlock()
	switch {
	case side == core.Src && k == core.ActStopVM:
		r.stopAt = time.Now()
	case side == core.Dst && k == core.ActStartVM && st != nil:
		r.dstVM = st
		if !r.stopAt.IsZero() && st.StartedAt != nil {
			down := st.StartedAt.AsTime().Sub(r.stopAt).Milliseconds()
			if down < 0 {
				down = time.Since(r.stopAt).Milliseconds()
			}
			r.m.DowntimeMs = down
			r.m.DowntimePhases = &ferryv1.DowntimePhases{TotalMs: down}
		}
	}
}

// fillVM adds what the report knows of the destination QEMU (pid, start
// time, accel) to a VM record the engine moves to the destination.
func (r *reporter) fillVM(cur *ferryv1.VM, u core.VMUpdate, to string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if u.State != core.VMRunning || cur.Host != to || r.dstVM == nil {
		return
	}
	cur.Pid = r.dstVM.Pid
	if r.dstVM.StartedAt != nil && r.m.Strategy == "cold" {
		cur.StartedAt = r.dstVM.StartedAt
	}
	if r.dstVM.Accel != "" {
		cur.Accel = r.dstVM.Accel
	}
}

// mergeOutTimes fills the event times dst lacks from src.
func mergeOutTimes(dst, src *agentv1.OutgoingStatus) {
	dst.StoppedAt = cmpTS(dst.StoppedAt, src.StoppedAt)
	dst.PreSwitchoverAt = cmpTS(dst.PreSwitchoverAt, src.PreSwitchoverAt)
	dst.ContinuedAt = cmpTS(dst.ContinuedAt, src.ContinuedAt)
	dst.CompletedAt = cmpTS(dst.CompletedAt, src.CompletedAt)
	dst.PostcopyStartedAt = cmpTS(dst.PostcopyStartedAt, src.PostcopyStartedAt)
}

// cmpTS is a, or b when a is unset.
func cmpTS(a, b *timestamppb.Timestamp) *timestamppb.Timestamp {
	if a != nil {
		return a
	}
	return b
}

// phasesLocked computes QEMU's downtime and the downtime phases from the
// QMP event times of both QEMUs, once they are known.
func (r *reporter) phasesLocked() {
	out, in, m := r.lastOut, r.lastIn, r.m
	if out == nil {
		return
	}
	m.DowntimeMs = max(m.DowntimeMs, out.DowntimeMs)
	if out.PreSwitchoverAt != nil && !r.transfer.IsZero() {
		if el := out.PreSwitchoverAt.AsTime().Sub(r.transfer).Seconds(); el > 0 {
			// (With local disks their mirrors ran first, over the same link.)
			m.BandwidthMibps = float64(out.TransferredBytes-out.DowntimeBytes+m.DiskBytesTransferred) / (1 << 20) / el
		}
	}
	if in == nil || in.ResumedAt == nil {
		return
	}
	// The two QEMUs' event times come from two clocks (and QMP stamps them
	// to the microsecond): a phase of a few microseconds can come out
	// slightly negative, which is reported as 0, never as -1 ms.
	ms := func(a, b *timestamppb.Timestamp) int64 { return max(0, b.AsTime().Sub(a.AsTime()).Milliseconds()) }
	loaded := loadedAt(in)
	p := &ferryv1.DowntimePhases{FinalRoundBytes: out.DowntimeBytes}
	if out.StoppedAt != nil && out.PreSwitchoverAt != nil {
		p.StopMs = ms(out.StoppedAt, out.PreSwitchoverAt)
	}
	if out.PreSwitchoverAt != nil && out.ContinuedAt != nil {
		p.SwitchoverMs = ms(out.PreSwitchoverAt, out.ContinuedAt)
	}
	if r.postcopy {
		if out.ContinuedAt != nil {
			p.DeviceStateMs = ms(out.ContinuedAt, in.ResumedAt)
		}
		if out.PostcopyStartedAt != nil && out.CompletedAt != nil {
			m.PostcopyMs = ms(out.PostcopyStartedAt, out.CompletedAt)
		}
		p.FinalRoundBytes = 0
	} else if out.ContinuedAt != nil && loaded != nil {
		stream := ms(out.ContinuedAt, loaded)
		// QEMU sends the last RAM and the device state in one stream: split
		// it by the final round's bytes at the measured rate.
		if m.BandwidthMibps > 0 {
			p.FinalRoundMs = min(stream, int64(float64(out.DowntimeBytes)/(1<<20)/m.BandwidthMibps*1000))
		}
		p.DeviceStateMs = stream - p.FinalRoundMs
	}
	if loaded != nil {
		p.ResumeMs = ms(loaded, in.ResumedAt)
	}
	if out.StoppedAt != nil {
		p.TotalMs = ms(out.StoppedAt, in.ResumedAt)
	}
	m.DowntimePhases = p
	r.downtimeWarningLocked()
}

// loadedAt is when the destination had loaded the state: its incoming
// migration's completed event, but never after its resume. The agent arms
// the destination with cont while it loads (autostart), and QEMU then
// starts the guest before it announces completed (the RESUME event comes
// first, by the time vm_start takes): the state was loaded by the resume,
// so the resume phase is 0 and the time in vm_start stays in the total and
// is not counted twice in the device state (a report had resumeMs -1 and a
// device state longer than the whole pause).
func loadedAt(in *agentv1.IncomingStatus) *timestamppb.Timestamp {
	l, r := in.GetLoadedAt(), in.GetResumedAt()
	if l == nil || r == nil || !r.AsTime().Before(l.AsTime()) {
		return l
	}
	return r
}

// WarnDowntimeOverLimit starts the report's warning for a guest paused
// longer than the migration's maxDowntime.
const WarnDowntimeOverLimit = "downtime over the limit"

// downtimeWarningLocked warns when the guest's pause (the phases' total,
// from the source's stop to the destination's resume, or QEMU's own figure
// when larger) exceeded maxDowntime: QEMU sized the final round for the
// limit, but the stream after it (device state, data still queued on the
// link) or the switchover took longer. The warning names the phases.
func (r *reporter) downtimeWarningLocked() {
	m := r.m
	m.Warnings = slices.DeleteFunc(m.Warnings, func(w string) bool { return strings.HasPrefix(w, WarnDowntimeOverLimit) })
	limit := m.GetOptions().GetMaxDowntimeMs()
	p := m.GetDowntimePhases()
	paused := max(p.GetTotalMs(), m.DowntimeMs)
	if limit <= 0 || paused <= limit {
		return
	}
	m.Warnings = append(m.Warnings, fmt.Sprintf("%s: the guest paused %d ms, maxDowntime %d ms (stop %d, final round %d, switchover %d, device state %d, resume %d ms)",
		WarnDowntimeOverLimit, paused, limit, p.GetStopMs(), p.GetFinalRoundMs(), p.GetSwitchoverMs(), p.GetDeviceStateMs(), p.GetResumeMs()))
}

// learnable reports the live-phase rate of a completed migration the
// planner may learn from: a pre-copy's, or a post-copy's pre-copy phase
// (0 when there is none to learn).
func (r *reporter) learnable() float64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.m.Status != "completed" || r.m.Strategy == "cold" || r.m.GetOptions().GetBandwidthMibps() != 0 {
		return 0
	}
	if len(r.m.Retries) > 0 || r.m.PostcopyPausedMs > 0 {
		// A broken link's outage is in its rate (the bench's flaky
		// scenario taught 21 MiB/s of a 46 MiB/s link): not the link's.
		return 0
	}
	if r.postcopy {
		return r.precopyMibps
	}
	out := r.lastOut
	if out == nil || out.PreSwitchoverAt == nil || r.transfer.IsZero() || out.PreSwitchoverAt.AsTime().Sub(r.transfer) < minLearnPhase {
		return 0
	}
	return r.liveMibpsLocked()
}

// stallMin is the shortest stretch without a byte sent that counts as an
// outage of the link, not as its rate.
const stallMin = time.Second

// noteProgressLocked follows the bytes sent at elapsed el: a stretch of
// at least stallMin without any is an outage (the bench's flaky scenario
// cuts the link twice for 2 s), whose time the learned rate leaves out.
func (r *reporter) noteProgressLocked(el time.Duration, bytes int64) {
	if bytes <= r.lastBytes && r.progressSet {
		return
	}
	if gap := el - r.progressAt; r.progressSet && gap >= stallMin {
		r.stalled += gap
	}
	r.progressAt, r.lastBytes, r.progressSet, r.liveBytes, r.liveAt = el, bytes, true, bytes, el
}

// liveMibpsLocked is the rate of the live phase so far without its
// outages: what the link carried while it carried anything (the report's
// bandwidthMibps otherwise). Flaky's outages taught 31, then 16, then
// 10.5 MiB/s of a link that sent 35-37 MiB/s when up, and each plan after
// them was capped there (dry-run +47 %).
func (r *reporter) liveMibpsLocked() float64 {
	if live := r.liveAt - r.stalled; r.stalled > 0 && live > 0 && r.liveBytes > 0 {
		return float64(r.liveBytes) / (1 << 20) / live.Seconds()
	}
	return r.m.BandwidthMibps
}

// pausedMs is how long a history spent with post-copy paused (paused or
// recovering), up to now for a pause still going on.
func pausedMs(h []core.Event, now time.Time) int64 {
	var total time.Duration
	var since time.Time
	for _, e := range h {
		paused := e.State == core.PostcopyPaused || e.State == core.PostcopyRecovering
		switch {
		case paused && since.IsZero():
			since = e.At
		case !paused && !since.IsZero():
			total += e.At.Sub(since)
			since = time.Time{}
		}
	}
	if !since.IsZero() {
		total += now.Sub(since)
	}
	return total.Milliseconds()
}

// disksLocked folds the source's disk mirrors into the report: per disk
// the data copied, the time to ready and to completion; the totals.
func (r *reporter) disksLocked(out *agentv1.OutgoingStatus) {
	if len(out.Disks) == 0 {
		return
	}
	m := r.m
	m.DiskBytesTotal = max(m.DiskBytesTotal, out.DiskBytesTotal)
	m.DiskBytesTransferred = max(m.DiskBytesTransferred, out.DiskBytesTransferred)
	for _, d := range out.Disks {
		var md *ferryv1.MigrationDisk
		for _, x := range m.Disks {
			if x.Name == d.Name {
				md = x
			}
		}
		if md == nil {
			md = &ferryv1.MigrationDisk{Name: d.Name}
			m.Disks = append(m.Disks, md)
		}
		md.State = d.State
		// What the disk's mirror (QEMU's job offset) or cold copy sent.
		md.BytesTransferred = max(md.BytesTransferred, d.DataBytes)
		if d.StartedAt != nil && d.ReadyAt != nil {
			md.MirrorMs = d.ReadyAt.AsTime().Sub(d.StartedAt.AsTime()).Milliseconds()
		}
		if d.StartedAt != nil && d.CompletedAt != nil {
			md.CompleteMs = d.CompletedAt.AsTime().Sub(d.StartedAt.AsTime()).Milliseconds()
		}
	}
}
