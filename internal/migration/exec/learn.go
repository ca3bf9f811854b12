package exec

import (
	"time"

	ferryv1 "github.com/ferryvm/ferry/gen/ferry/v1"
	"github.com/ferryvm/ferry/internal/planner"
)

// Learned is what a completed migration teaches the planner; a zero field
// teaches nothing of its kind.
type Learned struct {
	// LinkMibps is the live phase's rate (reporter.learnable): the link's.
	LinkMibps float64
	// Transport is how the streams crossed the network: "tls" or "plain".
	Transport string
	// Stream is a single-stream pre-copy the link did not limit (nil:
	// none); the learner fills in the fixed parts its plans use and turns
	// it into a rate with planner.StreamRateOf.
	Stream *planner.StreamRun
	// NonZeroBytes is the guest RAM the plan counted (the stream rate's
	// size class, telemetry.StreamRateFor).
	NonZeroBytes int64
	// DiskBytes and MirrorTime are local disks' mirrors the link did not
	// limit: the plan's disk data and the time until every mirror was
	// ready (0: none; planner.MirrorRateOf).
	DiskBytes  int64
	MirrorTime time.Duration
	// Stalled is how long the completed live migration's link carried
	// nothing (stretches of stallMin or more in its pre-copy, and its
	// post-copy's pauses), when StallKnown: what the pair's outages cost
	// it. Migrations with local disks teach none (RAM sends nothing while
	// the mirrors run).
	Stalled    time.Duration
	StallKnown bool
}

// Empty reports that l teaches nothing.
func (l Learned) Empty() bool {
	return l.LinkMibps <= 0 && l.Stream == nil && l.MirrorTime <= 0 && !l.StallKnown
}

// StreamBelowLink is how far below what the link can carry a stream or a
// mirror must have stayed for its rate to be taken as its own, not the
// link's: at most this fraction of the larger of the plan's link figure
// and the pair's raw probe. A shaped link's migrations reach 85-95 % of
// it (44 of 48 MiB/s); the unshaped idle bench's TLS stream reached 60-90
// MiB/s of a link probed at 1203 MiB/s. The raw probe counts because the
// plan's figure is capped by what migrations reached, which on a fast
// link is a stream's rate itself (the big bench: 140 MiB/s learned as
// the link, the probe 1203 MiB/s).
const StreamBelowLink = 0.7

// learned is what the completed migration teaches: the link's rate
// (learnable), and, when the link was not the limit, the stream's and the
// mirrors'.
//
// A stream rate is learned from a completed live pre-copy (precopy,
// converge or hybrid that never switched to post-copy) with one stream
// (no multifd), no local disks (their mirrors' setup would count as the
// stream's), no bandwidth cap (--bandwidth or a per-host share), no retry,
// no outage, no throttle and no controller action but downtime raises,
// whose rate stayed under StreamBelowLink of what the link carries, or
// beat the stream rate its plan used (what one stream did, it can do:
// a figure from a link-limited run is a lower bound, which the next faster
// run raises again) — also when it was short: the rate the pre-copy model needs is the one that
// reproduces a short run's total too (planner.StreamRateOf), unlike the
// link's (minLearnPhase). A mirror rate is learned from a completed live
// migration with local disks, every mirror ready, under the same caps.
func (r *reporter) learned() Learned {
	l := Learned{LinkMibps: r.learnable()}
	r.mu.Lock()
	defer r.mu.Unlock()
	m := r.m
	l.Transport = transportOf(m)
	in := m.GetPlan().GetInputs()
	l.NonZeroBytes = in.GetNonZeroBytes()
	link := max(in.GetBandwidthMibps(), in.GetLinkProbeMibps())
	if m.Status == "completed" && m.Strategy != "cold" && len(m.Disks) == 0 && m.DiskBytesTotal == 0 {
		l.StallKnown = true
		l.Stalled = r.stalled + time.Duration(m.PostcopyPausedMs)*time.Millisecond
	}
	if m.Status != "completed" || m.Strategy == "cold" || m.Strategy == "postcopy" || r.postcopy || link <= 0 ||
		m.GetOptions().GetBandwidthMibps() != 0 || m.GetBandwidthShareBytes() != 0 ||
		len(m.Retries) > 0 || m.PostcopyPausedMs > 0 {
		return l
	}
	if len(m.Disks) > 0 || m.DiskBytesTotal > 0 {
		// No outage test here: RAM sends nothing while the mirrors run
		// (the disk bench: 8.6 s), which the RAM's progress counts as a
		// stall, and a mirror that stalled shows it in its own time.
		l.DiskBytes, l.MirrorTime = r.mirrorsLocked(link)
		return l
	}
	if r.stalled > 0 {
		return l
	}
	var own bool
	l.Stream, own = r.streamRunLocked(link)
	if own {
		// Its rate is the stream's: taught to the link book too, it
		// capped the next plans' link figure at one stream's rate (the
		// big bench: 127 MiB/s of a link probed at 1465 MiB/s), and Tune
		// then chose channels and compression for a slow link.
		l.LinkMibps = 0
	}
	return l
}

// streamRunLocked is the completed pre-copy as a planner.StreamRun, nil
// when it does not show one stream's rate (see learned); own reports that
// it stayed under StreamBelowLink of the link, so the link was not its
// limit.
func (r *reporter) streamRunLocked(link float64) (run *planner.StreamRun, own bool) {
	m, out := r.m, r.lastOut
	if out == nil || out.PreSwitchoverAt == nil || m.TotalMs <= 0 || m.ThrottlePercent > 0 ||
		m.GetOptions().GetMultifdChannels() > 1 || m.GetPlan().GetTuning().GetMultifdChannels() > 1 {
		return nil, false
	}
	raises := 0
	for _, d := range m.Decisions {
		if d.Action != planner.RaiseDowntime.String() {
			return nil, false // throttled, bandwidth raised, post-copy armed: not the stream alone
		}
		raises++
	}
	run = &planner.StreamRun{
		Total:  time.Duration(m.TotalMs) * time.Millisecond,
		Bytes:  m.TransferredBytes + m.GetPlan().GetInputs().GetDeviceStateBytes(),
		Raises: raises,
	}
	// The rate is per byte the next plan counts: a plan's non-zero RAM
	// (the agent's RAM count plus QEMU's RSS growth since) can exceed what
	// QEMU sends (the idle bench: 154 MB counted, 122 MB sent), and a rate
	// over the bytes sent then predicted +28–42 % with the very rate that
	// run taught. A run that sent more than planned (dirty pages re-sent)
	// keeps its own bytes.
	if p := m.GetPredicted(); p != nil && p.GetBytes() > run.Bytes {
		run.Bytes = p.GetBytes()
	}
	rate, ok := planner.StreamRateOf(*run)
	if !ok {
		return nil, false // the fixed parts explain it
	}
	mibps := rate / (1 << 20)
	planned := m.GetPlan().GetInputs().GetStreamMibps()
	own = max(mibps, r.liveMibpsLocked()) <= StreamBelowLink*link
	if !own && !(planned > 0 && mibps > planned) {
		return nil, false // the link may have been the limit, and the stream did no better than planned
	}
	return run, own
}

// mirrorsLocked is the plan's disk data and the mirrors' time until the
// last was ready (0, 0 when a mirror never got ready or the link may have
// been their limit).
func (r *reporter) mirrorsLocked(link float64) (int64, time.Duration) {
	m := r.m
	var mirror time.Duration
	for _, d := range m.Disks {
		if d.MirrorMs <= 0 {
			return 0, 0
		}
		mirror = max(mirror, time.Duration(d.MirrorMs)*time.Millisecond)
	}
	bytes := m.GetPlan().GetInputs().GetDiskBytes() // what the next plan divides by the rate
	if bytes <= 0 {
		bytes = m.DiskBytesTransferred
	}
	// Whatever limited the mirrors, the link or their own CPU, the next
	// migration between the pair meets it again (the plan takes the
	// lower of the link and the mirror figure). Unlike a stream's figure,
	// a mirror's changes no tuning choice, so a figure a slower link
	// taught is corrected by the next migration's (telemetry.RateChanged).
	// The disk bench's mirror reached 119 MiB/s where probes of the
	// contended link said 157 MiB/s: the old rule (under 0.7 of the link)
	// learned nothing, and the plan kept a 362 MiB/s constant (−49 %).
	if _, ok := planner.MirrorRateOf(bytes, mirror); !ok {
		return 0, 0
	}
	return bytes, mirror
}

// transportOf is a migration's transport name ("tls" unless insecure).
func transportOf(m *ferryv1.Migration) string {
	if t := m.GetTransport(); t != "" {
		return t
	}
	if m.GetOptions().GetInsecureTransport() {
		return "plain"
	}
	return "tls"
}
