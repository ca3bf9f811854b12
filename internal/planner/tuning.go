package planner

import (
	"fmt"
	"math"
	"time"
)

// Tuning defaults: figures measured on the project's 2-core TCG test
// machine (see docs/migration.md, "Tuning"), used when TuneInputs leaves
// them 0.
const (
	// DefaultStreamBytesPerSec is what one migration stream (QEMU's
	// migration thread on one TCP connection) sends when the link is not
	// the limit: measured on QEMU 10.0.2 here, a 1 GiB TCG guest with
	// 351 MiB non-zero over loopback took a median 947 ms with one stream
	// (≈ 370 MiB/s), 345 ms with 2 multifd channels, 249 ms with 4.
	DefaultStreamBytesPerSec = 360 * mib
	// DefaultTLSStreamBytesPerSec is DefaultStreamBytesPerSec when the
	// stream is encrypted (the default transport): QEMU's TLS channel
	// encrypts each iovec of a write as its own record, a record and a
	// socket write per 4 KiB page, on the migration thread. Measured on
	// this project's current machines (2026-12-03, QEMU 10.0.2, one TLS
	// stream on an unshaped link): the rates learned from the bench were
	// 151 MiB/s for the idle guest (116 MiB sent) and 127 MiB/s for big
	// (1.2 GiB); the machine before measured about 240 MiB/s for big. A
	// pair's learned rate replaces it after one migration.
	DefaultTLSStreamBytesPerSec = 140 * mib
	// DefaultMirrorBytesPerSec and DefaultTLSMirrorBytesPerSec are what one
	// local disk's NBD mirror sends, plaintext and TLS, when the link is
	// not the limit: the disk bench scenario less the idle one in the same
	// batch (bench/RESULTS.md, session 7: 1027 MiB of disk in 2.22−0.63 s
	// plain, 3.69−0.85 s TLS, on a 3.3 GiB/s link).
	DefaultMirrorBytesPerSec = 646 * mib
	// DefaultTLSMirrorBytesPerSec: see DefaultMirrorBytesPerSec.
	DefaultTLSMirrorBytesPerSec = 362 * mib
	// ZstdBytesPerSecPerCore is what zstd level 1 compresses per second on
	// one core: measured here 268 MB/s on source text (ratio 3.5), 466 MB/s
	// on a binary (ratio 4.8), 1385 MB/s on random data (incompressible).
	ZstdBytesPerSecPerCore = 250 * mib
	// DefaultWindowBytes is the TCP window one connection can keep in
	// flight (Linux autotuning's default net.ipv4.tcp_wmem maximum, 4 MiB).
	DefaultWindowBytes = 4 * mib
	// MaxMultifdChannels bounds the channels Tune asks for.
	MaxMultifdChannels = 8
	// PostcopyBackgroundShare is the share of the link post-copy's
	// background stream may use without preempt, so that pages the running
	// guest faults in do not wait behind a full queue of background pages.
	PostcopyBackgroundShare = 0.8
	// PreemptBackgroundShare is the same share with postcopy-preempt: the
	// faulted pages have their own channel in QEMU and their own socket,
	// but the network queue is shared — with no reserve the half bench's
	// guest stalled 3.2-3.4 s on faults behind a full queue.
	PreemptBackgroundShare = 0.9
	// PostcopyWarmupShare and PostcopyWarmupSeconds are post-copy's
	// warm-up: for this long after the switch the background stream keeps
	// this share of its bandwidth. The resumed guest first faults on its
	// kernel's and programs' freshly dirtied pages one at a time, its vCPU
	// stalled on each, and each of those pages otherwise waits in the
	// link's queue behind background data. Measured on the heavy bench
	// (48 MiB/s, 96 MiB/s dirtied, TLS, 3 runs each, one after the other):
	// client gap median 652 ms without, 335 ms with 30 % for 1.5 s; total
	// 16.27 s and 16.74 s.
	PostcopyWarmupShare   = 0.3
	PostcopyWarmupSeconds = 1.5
	// ZstdLevel is the multifd-zstd-level Tune asks for: the fastest.
	ZstdLevel = 1
	// compressGain is how much more effective throughput compression must
	// promise than the plain link before Tune turns it on.
	compressGain = 1.2
	// multifdMinSaving is the transfer time multifd channels must save on
	// the guest's data before Tune asks for them: their final sync
	// lengthens the pause (the bench's idle scenario, 112 MiB non-zero on a
	// 1.4 GiB/s link, paused 80-166 ms with 2 channels where one stream
	// paused 16-21 ms), which a short transfer does not pay back.
	multifdMinSaving = 1.0 // seconds
	// availSwitchoverShare is the share of the planned bandwidth Tune
	// gives QEMU as avail-switchover-bandwidth: a margin for a link a bit
	// slower than measured.
	availSwitchoverShare = 0.9
)

// Features are the optional QEMU migration features of one host (from its
// capability probe, internal/qemucaps).
type Features struct {
	// PostcopyPreempt: capability postcopy-preempt (QEMU ≥ 8.0).
	PostcopyPreempt bool
	// ZeroPageDetection: parameter zero-page-detection (QEMU ≥ 9.0).
	ZeroPageDetection bool
	// AvailSwitchoverBandwidth: parameter avail-switchover-bandwidth
	// (QEMU ≥ 8.2).
	AvailSwitchoverBandwidth bool
	// Zstd: multifd-compression=zstd.
	Zstd bool
	// MultifdPostcopy: multifd together with postcopy-ram (QEMU ≥ 10.1).
	MultifdPostcopy bool
}

// TuneInputs are what Tune needs beyond the chosen strategy.
type TuneInputs struct {
	// Strategy is the strategy Choose picked.
	Strategy string
	// BandwidthBytesPerSec is the planned link rate (Inputs.BandwidthBytesPerSec).
	BandwidthBytesPerSec float64
	// NonZeroBytes and DirtyRateBytesPerSec are the plan's (Inputs):
	// round 1 sends the first, the guest dirties at the second meanwhile.
	NonZeroBytes         int64
	DirtyRateBytesPerSec float64
	// RTT is the link's round-trip time; 0 means unknown (no latency term).
	RTT time.Duration
	// LinkStall is Inputs.LinkStall: what the pair's recent migrations
	// lost each to outages (a post-copy then never switches early).
	LinkStall time.Duration
	// Src and Dst are the two hosts' features; a feature is used only when
	// both sides that need it have it.
	Src, Dst Features
	// MultifdChannels is the operator's --multifd: 0 lets Tune decide, 1
	// asks for one stream, more asks for that many channels.
	MultifdChannels int
	// StreamBytesPerSec is what one migration stream sends on the source
	// when the link is not the limit; 0 means DefaultStreamBytesPerSec.
	StreamBytesPerSec float64
	// WindowBytes is the TCP window of one connection; 0 means
	// DefaultWindowBytes.
	WindowBytes float64
	// MaxChannels bounds the multifd channels Tune chooses on its own (0:
	// MaxMultifdChannels): an encrypted stream costs a core per channel,
	// so the server passes the source's spare CPUs for TLS migrations.
	MaxChannels int
	// CompressBytesPerSec is how many bytes per second zstd (level 1) can
	// compress within the CPU the source may spend on the migration; 0
	// means no budget (no compression).
	CompressBytesPerSec float64
	// CompressRatio is the compressed size of the guest's non-zero RAM
	// over its size (0..1); 0 means unknown, taken as incompressible.
	CompressRatio float64
}

// Choice is one tuning decision with its reason, for the report.
type Choice struct {
	// Name is the QEMU capability or parameter (postcopy-preempt,
	// multifd-channels, ...).
	Name string
	// Value is what Ferry sets ("on", "off", "4", "zstd", "43.2 MiB/s").
	Value string
	// Reason says why in one line.
	Reason string
}

// Tuning is Tune's answer: the QEMU capabilities and parameters of one
// migration, applied on both sides where QEMU needs them on both.
type Tuning struct {
	// PostcopyPreempt enables capability postcopy-preempt (both sides).
	PostcopyPreempt bool
	// MultifdChannels > 0 enables multifd with that many channels (both
	// sides); 0 means one migration stream.
	MultifdChannels int
	// ZeroPageDetection is zero-page-detection ("multifd"), "" leaves
	// QEMU's default.
	ZeroPageDetection string
	// AvailSwitchoverBandwidth is avail-switchover-bandwidth in bytes per
	// second (source only); 0 leaves QEMU's own estimate.
	AvailSwitchoverBandwidth int64
	// Compression is multifd-compression ("zstd"), "" for none (both sides).
	Compression string
	// ZstdLevel is multifd-zstd-level when Compression is "zstd".
	ZstdLevel int
	// PostcopyBackgroundShare is the share of the link post-copy's
	// background stream may use.
	PostcopyBackgroundShare float64
	// PostcopyAtFraction is where a post-copy migration switches: once
	// round 1 has gone through this fraction of the guest's RAM (0: after
	// round 1).
	PostcopyAtFraction float64
	// PostcopyWarmup and PostcopyWarmupShare are post-copy's warm-up (0:
	// none): see PostcopyWarmupShare.
	PostcopyWarmup      time.Duration
	PostcopyWarmupShare float64
	// PostcopyAtBytes is the same switch point in RAM bytes round 1 has
	// sent (0: none). The engine prefers it: QEMU scans zero pages without
	// sending them, so the fraction of RAM scanned runs ahead of the data
	// sent wherever the guest's data sits low in its RAM.
	PostcopyAtBytes int64
	// CompressedBytesPerSec is the rate of guest RAM Tune expects through
	// zstd (Compression "zstd"; 0 otherwise).
	CompressedBytesPerSec float64
	// Choices are the decisions with their reasons, in a fixed order.
	Choices []Choice
}

// Tune chooses the QEMU capabilities and parameters for a migration with
// the chosen strategy: postcopy-preempt for post-copy when both sides
// have it; multifd when one stream cannot fill the link (the link is faster
// than one stream sends, or its bandwidth-delay product exceeds one TCP
// window), with zero-page detection in the multifd threads; zstd when the
// plain streams (the link, or one stream's rate per channel) are slower
// than the source can compress and the guest's RAM compresses;
// avail-switchover-bandwidth from the planned rate (the link, the streams'
// rate when that is lower, or zstd's) for a pre-copy switchover. Every
// decision carries its reason. It is pure.
func Tune(in TuneInputs) Tuning {
	t := Tuning{PostcopyBackgroundShare: PostcopyBackgroundShare}
	add := func(name, value, format string, a ...any) {
		t.Choices = append(t.Choices, Choice{Name: name, Value: value, Reason: fmt.Sprintf(format, a...)})
	}
	b := in.BandwidthBytesPerSec
	postcopy := in.Strategy == StrategyPostcopy || in.Strategy == StrategyHybrid
	precopySwitch := in.Strategy == StrategyPrecopy || in.Strategy == StrategyConverge || in.Strategy == StrategyHybrid

	// postcopy-preempt.
	switch {
	case !postcopy:
		add("postcopy-preempt", "off", "the %s strategy never enters post-copy", in.Strategy)
	case !in.Src.PostcopyPreempt || !in.Dst.PostcopyPreempt:
		add("postcopy-preempt", "off", "%s: post-copy runs without it (needs QEMU 8.0 or later on both hosts); the background stream keeps %.0f%% of the link so faulted pages do not queue behind it",
			missing(in.Src.PostcopyPreempt, in.Dst.PostcopyPreempt), PostcopyBackgroundShare*100)
	default:
		t.PostcopyPreempt = true
		t.PostcopyBackgroundShare = PreemptBackgroundShare
		add("postcopy-preempt", "on", "post-copy: pages the guest faults in travel on their own channel, past the background stream's queue in QEMU and its socket; the background stream keeps %.0f%% of the planned rate (not %.0f%%) so the link's queue stays short for them",
			PreemptBackgroundShare*100, PostcopyBackgroundShare*100)
	}

	// Where post-copy starts. Every page the guest dirties during round 1
	// is sent twice (the bitmap sync at the switch marks it again), so a
	// switch at t costs M + R·t bytes: the earlier the fewer, but the
	// longer the guest waits on remote faults for pages round 1 would have
	// sent. Tune switches where round 1's remainder has shrunk to what the
	// guest dirtied meanwhile: M − B·t = R·t.
	m, r := float64(in.NonZeroBytes), in.DirtyRateBytesPerSec
	switch {
	case in.Strategy == StrategyHybrid:
		add("postcopy-start", "controller", "hybrid: post-copy only when the controller sees pre-copy not converging")
	case in.Strategy != StrategyPostcopy:
	case m <= 0 || b <= 0 || r <= 0:
		add("postcopy-start", "after round 1", "the guest dirties nothing measurable (or RAM and link are unknown): round 1 costs no second copy")
	default:
		early := EarlyPostcopy(b, r, in.RTT.Seconds(), in.LinkStall.Seconds())
		after := postcopySwitchBytes(m, b, r, early)
		t1, ts := m/b, after/b
		t.PostcopyAtFraction = after / m
		t.PostcopyAtBytes = int64(after)
		if early {
			add("postcopy-start", fmt.Sprintf("%.0f%% of round 1", 100*after/m), "at %s of round 1's %s (%s, not %s): the guest dirties %s, at most %.0f%% of the %s link, on a LAN (%s RTT) that lost nothing to outages lately, so every page it dirties from here is sent once instead of twice (about %s less than switching at the end of round 1), for a guest that faults on the half of round 1 not yet sent (the half bench: 9.5-9.9 s instead of 13.9 s, client gaps about 1 s instead of 0.2-0.3 s)",
				fmtBytes(after), fmtBytes(m), fmtSec(ts), fmtSec(t1), fmtRate(r), EarlyPostcopyDirtyShare*100, fmtRate(b), in.RTT.Round(10*time.Microsecond), fmtBytes(r*(t1-ts)))
			break
		}
		if eq := m * b / (b + r); after > eq+1 {
			add("postcopy-start", fmt.Sprintf("%.0f%% of round 1", 100*after/m), "at %s of round 1's %s (%s, not %s): %s of the link is left for after the switch — the guest faults in every page never sent, each fault stalling a vCPU; switching where the remainder equals what the guest dirtied (%s) would send up to %s less",
				fmtBytes(after), fmtBytes(m), fmtSec(ts), fmtSec(t1), fmtSec(PostcopyTailSeconds), fmtBytes(eq), fmtBytes(r*(ts-eq/b)))
			break
		}
		add("postcopy-start", fmt.Sprintf("%.0f%% of round 1", 100*after/m), "at %s of round 1's %s (%s, not %s): round 1's remainder then equals what the guest dirtied meanwhile (%s at %s), which is sent again in any case; waiting for the end of round 1 would send about %s more",
			fmtBytes(after), fmtBytes(m), fmtSec(ts), fmtSec(t1), fmtBytes(r*ts), fmtRate(r), fmtBytes(r*(t1-ts)))
	}

	// post-copy's warm-up.
	if postcopy {
		t.PostcopyWarmup = time.Duration(PostcopyWarmupSeconds * float64(time.Second))
		t.PostcopyWarmupShare = PostcopyWarmupShare
		add("postcopy-warmup", fmt.Sprintf("%.0f%% for %s", PostcopyWarmupShare*100, fmtSec(PostcopyWarmupSeconds)),
			"for %s after the switch the background stream keeps %.0f%% of its bandwidth: the resumed guest first faults on its freshly dirtied kernel and program pages one at a time, and each would wait in the link's queue behind background data; it costs at most %s of background data",
			fmtSec(PostcopyWarmupSeconds), PostcopyWarmupShare*100, fmtBytes(b*t.PostcopyBackgroundShare*(1-PostcopyWarmupShare)*PostcopyWarmupSeconds))
	}

	// multifd and its channels.
	stream := orF(in.StreamBytesPerSec, DefaultStreamBytesPerSec)
	window := orF(in.WindowBytes, DefaultWindowBytes)
	rtt := in.RTT.Seconds()
	bdp := b * rtt
	n := linkChannels(b, stream, window, rtt, in.MaxChannels)
	why := fmt.Sprintf("link %s: one stream sends up to %s", fmtRate(b), fmtRate(stream))
	if in.MaxChannels > 0 && in.MaxChannels < MaxMultifdChannels {
		why += fmt.Sprintf("; at most %d channel(s): one per spare CPU of the source for an encrypted stream", in.MaxChannels)
	}
	if rtt > 0 {
		why += fmt.Sprintf("; bandwidth-delay product %s × %s = %s vs a %s TCP window", fmtRate(b), fmtSec(rtt), fmtBytes(bdp), fmtBytes(window))
	} else {
		why += "; round-trip time unknown (no latency term)"
	}
	multifdOK := !postcopy || (in.Src.MultifdPostcopy && in.Dst.MultifdPostcopy)
	switch {
	case !multifdOK && in.MultifdChannels > 1:
		add("multifd-channels", "1", "--multifd %d not used: QEMU before 10.1 does not combine multifd with post-copy (strategy %s)", in.MultifdChannels, in.Strategy)
	case !multifdOK:
		add("multifd-channels", "1", "one stream: QEMU before 10.1 does not combine multifd with post-copy (strategy %s)", in.Strategy)
	case in.MultifdChannels == 1:
		add("multifd-channels", "1", "one stream, as --multifd 1 asks")
	case in.MultifdChannels > 1:
		t.MultifdChannels = in.MultifdChannels
		add("multifd-channels", fmt.Sprint(in.MultifdChannels), "%d channels, as --multifd asks (%s)", in.MultifdChannels, why)
	case n >= 2 && !channelsPay(m, b, stream, n):
		one, many := m/streamsRate(b, stream, 1), m/streamsRate(b, stream, n)
		add("multifd-channels", "1", "one stream: %d channels would send the guest's %s in %s instead of %s, less than %s saved, and their final sync lengthens the pause (%s)",
			n, fmtBytes(m), fmtSec(many), fmtSec(one), fmtSec(multifdMinSaving), why)
	case n >= 2:
		t.MultifdChannels = n
		add("multifd-channels", fmt.Sprint(n), "%d channels: one stream cannot fill the link (%s)", n, why)
	case in.MaxChannels == 1 && math.Ceil(b/stream) >= 2:
		add("multifd-channels", "1", "one stream: the source has no spare CPU for a second encrypted channel (%s)", why)
	default:
		add("multifd-channels", "1", "one stream fills the link (%s)", why)
	}

	// zstd compression (a multifd feature).
	ratio := in.CompressRatio
	switch {
	case !multifdOK:
		add("multifd-compression", "none", "compression needs multifd, which post-copy does not combine with here")
	case in.MultifdChannels == 1:
		add("multifd-compression", "none", "compression needs multifd channels, and --multifd 1 asks for one stream")
	case !in.Src.Zstd || !in.Dst.Zstd:
		add("multifd-compression", "none", "%s: no zstd in QEMU's multifd", missing(in.Src.Zstd, in.Dst.Zstd))
	case in.CompressBytesPerSec <= 0:
		add("multifd-compression", "none", "no CPU budget for compression on the source")
	case ratio <= 0 || ratio >= 1:
		add("multifd-compression", "none", "the guest's RAM is not known to compress (taken as incompressible)")
	default:
		// Plain, the streams send min(link, channels × one stream's rate);
		// compressed, what zstd compresses within the CPU budget, or the
		// link over the ratio. One stream's rate counts: QEMU's TLS
		// channel encrypts each iovec of a write as its own record, so a
		// plain stream pays a record (and a write to the socket) per 4 KiB
		// page, where zstd's channels send one compressed buffer per
		// packet (the big bench on a 1.4 GiB/s link: one TLS stream 9.6 s,
		// two zstd channels 4.8 s).
		plainN := max(t.MultifdChannels, 1)
		plain := streamsRate(b, stream, plainN)
		eff, pays := zstdRate(b, plain, in.CompressBytesPerSec, ratio)
		if !pays {
			add("multifd-compression", "none", "zstd would reach %s of guest RAM vs %s plain (compression to %.0f%%, %s of CPU budget): not %.1f× faster",
				fmtRate(eff), fmtRate(plain), ratio*100, fmtRate(in.CompressBytesPerSec), compressGain)
			break
		}
		if t.MultifdChannels == 0 && !zstdSaves(m, plain, eff) {
			add("multifd-compression", "none", "zstd's channels would send the guest's %s in %s instead of %s, less than %s saved, and their final sync lengthens the pause (%s of guest RAM vs %s plain)",
				fmtBytes(m), fmtSec(m/eff), fmtSec(m/plain), fmtSec(multifdMinSaving), fmtRate(eff), fmtRate(plain))
			break
		}
		t.CompressedBytesPerSec = eff
		t.Compression, t.ZstdLevel = "zstd", ZstdLevel
		if t.MultifdChannels == 0 {
			t.MultifdChannels = max(n, 2)
			t.Choices[len(t.Choices)-1] = Choice{Name: "multifd-channels", Value: fmt.Sprint(t.MultifdChannels),
				Reason: fmt.Sprintf("%d channels, for zstd compression (%s)", t.MultifdChannels, why)}
		}
		what := fmt.Sprintf("the link (%s) is", fmtRate(b))
		switch {
		case plain < b && plainN == 1:
			what = fmt.Sprintf("one plain stream (%s, on a %s link) is", fmtRate(plain), fmtRate(b))
		case plain < b:
			what = fmt.Sprintf("%d plain streams (%s each, %s in all, on a %s link) are", plainN, fmtRate(stream), fmtRate(plain), fmtRate(b))
		}
		add("multifd-compression", "zstd", "%s slower than the source compresses (%s within its CPU budget) and the guest's RAM compresses to %.0f%%: %s of guest RAM instead of %s",
			what, fmtRate(in.CompressBytesPerSec), ratio*100, fmtRate(eff), fmtRate(plain))
		add("multifd-zstd-level", fmt.Sprint(ZstdLevel), "the fastest level: the plain rate, not the ratio, is what compression must beat")
	}

	// zero-page detection in the multifd threads.
	switch {
	case t.MultifdChannels == 0:
		add("zero-page-detection", "default", "one stream: the migration thread checks zero pages")
	case !in.Src.ZeroPageDetection:
		add("zero-page-detection", "default", "the source's QEMU has no zero-page-detection (needs QEMU 9.0 or later)")
	default:
		t.ZeroPageDetection = "multifd"
		add("zero-page-detection", "multifd", "multifd: the %d channel threads check zero pages in parallel instead of the one migration thread", t.MultifdChannels)
	}

	// avail-switchover-bandwidth.
	switch {
	case !precopySwitch:
		add("avail-switchover-bandwidth", "auto", "the %s strategy switches over by post-copy, not by QEMU's final-round estimate", in.Strategy)
	case !in.Src.AvailSwitchoverBandwidth:
		add("avail-switchover-bandwidth", "auto", "the source's QEMU has no avail-switchover-bandwidth (needs QEMU 8.2 or later): QEMU estimates the final round's rate itself")
	case b <= 0:
		add("avail-switchover-bandwidth", "auto", "link rate unknown")
	default:
		// The rate the final round travels at: the link, or the streams'
		// own rate when they cannot fill it (the planner's model sizes
		// the downtime-limit with the same rate). The link's rate alone
		// let QEMU switch over with a final round 10× what one TLS stream
		// sends within the target: the idle bench paused 67 ms with a 5 ms
		// target on a 1086 MiB/s link its one stream sent at about 100.
		eff, limited := b, ""
		if n := max(t.MultifdChannels, 1); t.CompressedBytesPerSec > 0 {
			// QEMU divides the RAM still to send by this rate: the pages
			// the guest rewrote, taken as incompressible (the planner's
			// model sends them at this rate too).
			eff = rewrittenRate(b, in.CompressBytesPerSec)
			limited = fmt.Sprintf(" (the pages the guest rewrote through %d zstd channels, taken as incompressible)", n)
		} else if r := streamsRate(b, stream, n); r < b {
			eff = r
			limited = fmt.Sprintf(" (one stream sends %s, less than the link's %s)", fmtRate(stream), fmtRate(b))
			if n > 1 {
				limited = fmt.Sprintf(" (%d channels at %s each, less than the link's %s)", n, fmtRate(stream), fmtRate(b))
			}
		}
		v := eff * availSwitchoverShare
		t.AvailSwitchoverBandwidth = int64(v)
		add("avail-switchover-bandwidth", fmtRate(v), "%.0f%% of the planned %s%s: QEMU sizes the final round with the rate the planner's downtime-limit assumes, not with its own estimate from a round that was partly zero pages and bitmap syncs",
			availSwitchoverShare*100, fmtRate(eff), limited)
	}
	return t
}

// missing names which side lacks a feature.
func missing(src, dst bool) string {
	switch {
	case !src && !dst:
		return "neither host's QEMU has it"
	case !src:
		return "the source's QEMU lacks it"
	}
	return "the destination's QEMU lacks it"
}

// linkChannels is the multifd channels a link of b bytes/s and rtt seconds
// needs: enough streams of stream bytes/s for its rate, enough TCP windows
// for its bandwidth-delay product, 1..MaxMultifdChannels.
func linkChannels(b, stream, window, rtt float64, maxN int) int {
	if maxN <= 0 || maxN > MaxMultifdChannels {
		maxN = MaxMultifdChannels
	}
	return min(max(int(math.Ceil(b/stream)), int(math.Ceil(b*rtt/window)), 1), maxN)
}

// streamsRate is what n plain streams of stream bytes/s send on a link of
// b bytes/s.
func streamsRate(b, stream float64, n int) float64 {
	return math.Min(b, float64(max(n, 1))*stream)
}

// zstdRate is the rate of guest RAM zstd channels reach on a link of b
// bytes/s with budget bytes/s of compression and RAM compressing to ratio
// (0..1): the budget, or the link over the ratio. pays reports that it
// beats plain, the plain streams' rate, by compressGain.
func zstdRate(b, plain, budget, ratio float64) (eff float64, pays bool) {
	if budget <= 0 || ratio <= 0 || ratio >= 1 {
		return plain, false
	}
	eff = math.Min(budget, b/ratio)
	return eff, eff >= compressGain*plain
}

// rewrittenRate is the rate of guest RAM zstd channels reach on a link
// of b bytes/s with budget bytes/s of compression when the pages do not
// compress: what the guest rewrites since round 1 (its compressibility
// was never sampled) is planned that way.
func rewrittenRate(b, budget float64) float64 {
	return math.Min(b, budget)
}

// zstdSaves reports whether zstd channels at eff bytes/s of guest RAM save
// at least multifdMinSaving over plain bytes/s on data bytes, as channels
// must when the plain plan has none (unknown data: they do). The idle
// bench (112 MiB non-zero, one TLS stream at about 150 MiB/s, zstd at
// 250): zstd saved a tenth of a second of 1.2 s and paused 29–79 ms where
// one stream paused 21–39 ms.
func zstdSaves(data, plain, eff float64) bool {
	return data <= 0 || data/plain-data/eff >= multifdMinSaving
}

// channelsPay reports whether n channels save at least multifdMinSaving
// over one stream on data bytes (unknown data: they do).
func channelsPay(data, b, stream float64, n int) bool {
	return data <= 0 || data/streamsRate(b, stream, 1)-data/streamsRate(b, stream, n) >= multifdMinSaving
}
