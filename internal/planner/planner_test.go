package planner

import (
	"errors"
	"math"
	"strings"
	"testing"
	"time"
)

const testMiB = float64(mib)

// base is a 2 GiB guest with 1 GiB non-zero on a 100 MiB/s link with a
// 300 ms target and the default overheads: device state 1 MiB (10 ms at
// 100 MiB/s), setup 100 ms, switchover 20 ms. QEMU's downtime-limit is then
// 300 − 10 − 20 = 270 ms and the switchover threshold 100 MiB/s × 0.27 s =
// 27 MiB.
func base(dirtyMiBps float64, allow ...string) Inputs {
	in := Inputs{
		MemoryBytes: 2 * gib, NonZeroBytes: 1 * gib,
		DirtyRateBytesPerSec: dirtyMiBps * testMiB,
		BandwidthBytesPerSec: 100 * testMiB,
		MaxDowntime:          300 * time.Millisecond,
	}
	for _, a := range allow {
		switch a {
		case StrategyPrecopy:
			in.Policy.AllowPrecopy = true
		case StrategyConverge:
			in.Policy.AllowConverge = true
		case StrategyPostcopy:
			in.Policy.AllowPostcopy = true
		case StrategyCold:
			in.Policy.AllowCold = true
		}
	}
	return in
}

func find(t *testing.T, preds []Prediction, strategy string) Prediction {
	t.Helper()
	for _, p := range preds {
		if p.Strategy == strategy {
			return p
		}
	}
	t.Fatalf("no prediction for %s in %+v", strategy, preds)
	return Prediction{}
}

func TestPredictByHand(t *testing.T) {
	ms := func(v float64) time.Duration { return time.Duration(math.Round(v * 1e6)) }
	for _, tc := range []struct {
		name     string
		in       Inputs
		strategy string
		rounds   int
		throttle int
		downtime time.Duration
		total    time.Duration
		bytesMiB float64
	}{
		{
			// Idle: 1 GiB non-zero, dirty 1 MiB/s. Round 1 sends 1024 MiB in
			// 10.24 s and dirties max(1 MiB/s × 10.24 s, W = 1 MiB) = 10.24 MiB
			// ≤ 27 MiB: switch over after 1 round.
			// downtime = 10.24/100 + 1/100 + 0.02 = 0.1024 + 0.01 + 0.02 = 132.4 ms
			// total    = 0.1 + 10.24 + 0.1324 + 0.12 (finish) = 10.5924 s
			// bytes    = 1024 + 10.24 + 1 = 1035.24 MiB
			name: "idle precopy", in: func() Inputs { in := base(1); in.MemoryBytes = 4 * gib; return in }(),
			strategy: StrategyPrecopy, rounds: 1, downtime: ms(132.4), total: ms(10592.4), bytesMiB: 1035.24,
		},
		{
			// Dirty 50 MiB/s, ρ = 0.5. Dirty sets after each round (MiB):
			// 1024 (10.24 s) → 512 (5.12 s) → 256 (2.56 s) → 128 (1.28 s) →
			// 64 (0.64 s; the working-set term W·t = 50·0.64 = 32 is no larger) →
			// 32 (0.32 s) → 16 ≤ 27: 6 rounds.
			// downtime = 0.16 + 0.01 + 0.02 = 190 ms
			// total    = 0.1 + (10.24+5.12+2.56+1.28+0.64+0.32 = 20.16) + 0.19 + 0.12 = 20.57 s
			// bytes    = 1024+512+256+128+64+32 + 16 + 1 = 2033 MiB
			name: "half the bandwidth", in: base(50), strategy: StrategyPrecopy,
			rounds: 6, downtime: ms(190), total: ms(20570), bytesMiB: 2033,
		},
		{
			// Post-copy of the same guest: round 1's remainder would equal
			// what was dirtied at 1024/(100+50) = 6.8267 s, but the tail
			// bound (0.25 s at 100 MiB/s) moves the switch to 9.99 s of
			// round 1 (10.24 s), with 50 × 9.99 = 499.5 MiB dirtied meanwhile.
			// downtime = 0.01 + 0.02 = 30 ms
			// total    = 0.1 + (1024 + 499.5 + 1)/100 + 0.02 + 0.12 = 15.485 s
			name: "half the bandwidth, post-copy", in: base(50), strategy: StrategyPostcopy,
			rounds: 1, downtime: ms(30), total: ms(15485), bytesMiB: 1524.5,
		},
		{
			// Dirty 120 MiB/s on 100 MiB/s with auto-converge; QEMU 7.2 checks at
			// each sync ≥ 1 s after the last check and steps up every second
			// time dirtied > 50% of sent (MiB; "h" = a high check):
			//  r1 send 1024.00 in 10.2400 s, dirtied 1228.80 h1
			//  r2 send 1228.80 in 12.2880 s, dirtied 1474.56 h2 → 20%
			//  r3 send 1474.56 in 14.7456 s, dirtied 1415.58 (= 0.8·120·14.7456) h1
			//  r4 send 1415.58 in 14.1558 s, dirtied 1358.95 h2 → 30%
			//  r5 send 1358.95 in 13.5895 s, dirtied 1141.52 h1
			//  r6 send 1141.52 in 11.4152 s, dirtied  958.88 h2 → 40%
			//  r7 send  958.88 in  9.5888 s, dirtied  690.39 h1
			//  r8 send  690.39 in  6.9039 s, dirtied  497.08 h2 → 50%
			//  r9 send  497.08 in  4.9708 s, dirtied  298.25 h1
			// r10 send  298.25 in  2.9825 s, dirtied  178.95 h2 → 60%
			// r11 send  178.95 in  1.7895 s, dirtied   85.90 (≤ 50%: low)
			// r12 send   85.90 in  0.8590 s, dirtied   41.23 (period < 1 s)
			// r13 send   41.23 in  0.4123 s, dirtied   19.79 ≤ 27: switch over
			// downtime = 0.1979 + 0.03 = 227.904 ms; total = 0.1 + 103.9409 + 0.2279 + 0.12 = 104.388825 s
			name: "dirty above the bandwidth, converge", in: base(120), strategy: StrategyConverge,
			rounds: 13, throttle: 60, downtime: 227904 * time.Microsecond, total: 104388825 * time.Microsecond, bytesMiB: 10414.88,
		},
		{
			// Cold: 0.1 + 1024/100 + 5 = 15.34 s, all of it downtime.
			name: "cold", in: base(120), strategy: StrategyCold,
			rounds: 0, downtime: ms(15340), total: ms(15340), bytesMiB: 1024,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := find(t, Predict(tc.in), tc.strategy)
			if !p.Converges || p.Rounds != tc.rounds || p.Throttle != tc.throttle || p.Downtime != tc.downtime || p.Total != tc.total {
				t.Fatalf("got %+v\nwant rounds %d throttle %d downtime %s total %s", p, tc.rounds, tc.throttle, tc.downtime, tc.total)
			}
			if got := float64(p.Bytes) / testMiB; math.Abs(got-tc.bytesMiB) > 0.01 {
				t.Fatalf("bytes = %.3f MiB, want %.2f", got, tc.bytesMiB)
			}
			if p.Reason == "" {
				t.Fatal("empty reason")
			}
		})
	}
}

func TestPredictNonConvergence(t *testing.T) {
	for _, tc := range []struct {
		name, strategy, reason string
		in                     Inputs
	}{
		{"rate above bandwidth", StrategyPrecopy, "dirty rate 120 MiB/s ≥ bandwidth 100 MiB/s: pre-copy never converges", base(120)},
		{"huge working set, ρ < 1", StrategyPrecopy, "working set (2 GiB rewritten every second) outpaces bandwidth 100 MiB/s",
			func() Inputs { in := base(40); in.WSSBytes = 2 * gib; return in }()},
		{"throttle capped too low", StrategyConverge, "even at 10% throttle, dirty rate 180 MiB/s ≥ bandwidth 100 MiB/s",
			func() Inputs { in := base(200); in.Policy.MaxThrottle = 10; return in }()},
		{"ρ = 0.95 needs more than 30 rounds", StrategyPrecopy, "still",
			// 1024 MiB × 0.95^30 = 220 MiB > 27 MiB.
			base(95)},
		{"bandwidth unknown", StrategyPostcopy, ReasonBandwidthUnknown,
			func() Inputs { in := base(10); in.BandwidthBytesPerSec = 0; return in }()},
		{"invalid", StrategyCold, "invalid planner input", func() Inputs { in := base(10); in.MemoryBytes = -1; return in }()},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := find(t, Predict(tc.in), tc.strategy)
			if p.Converges || !strings.Contains(p.Reason, tc.reason) || p.Total != 0 || p.Downtime != 0 {
				t.Fatalf("got %+v, want no convergence with reason containing %q", p, tc.reason)
			}
		})
	}
}

func TestPredictInvariants(t *testing.T) {
	for _, dirty := range []float64{0, 1, 30, 50, 80, 99, 100, 150, 1000} {
		in := base(dirty)
		preds := Predict(in)
		if len(preds) != len(Strategies) {
			t.Fatalf("%d predictions", len(preds))
		}
		for i, p := range preds {
			if p.Strategy != Strategies[i] || p.Reason == "" {
				t.Fatalf("dirty %v: prediction %d = %+v", dirty, i, p)
			}
			if p.Converges && (p.Downtime > p.Total || p.Bytes < in.NonZeroBytes) {
				t.Fatalf("dirty %v: %+v", dirty, p)
			}
			// A converging pre-copy meets the target by construction.
			if p.Converges && !p.Postcopy && p.Strategy != StrategyCold && p.Downtime > in.MaxDowntime {
				t.Fatalf("dirty %v: %s downtime %s > %s", dirty, p.Strategy, p.Downtime, in.MaxDowntime)
			}
		}
		again := Predict(in)
		for i := range preds {
			if preds[i] != again[i] {
				t.Fatalf("not deterministic: %+v vs %+v", preds[i], again[i])
			}
		}
	}
}

func TestChoose(t *testing.T) {
	for _, tc := range []struct {
		name string
		in   Inputs
		want string
		why  string
	}{
		{"idle guest: precopy within 10% of post-copy", base(1, "precopy", "converge", "postcopy"), StrategyPrecopy, "within 10% of the fastest"},
		{"half the bandwidth, post-copy forbidden", base(50, "precopy", "converge"), StrategyPrecopy, "the fastest strategy that fits"},
		// 15.49 s post-copy vs 20.45 s pre-copy: more than 10% apart.
		{"half the bandwidth, post-copy allowed", base(50, "precopy", "postcopy"), StrategyPostcopy, "the fastest"},
		{"dirty above bandwidth, converge allowed", base(120, "precopy", "converge"), StrategyConverge, "converge"},
		// Hybrid predicts post-copy here: the same as postcopy, so postcopy.
		{"dirty above bandwidth, post-copy allowed", base(120, "precopy", "postcopy"), StrategyPostcopy, "postcopy"},
		{"only cold, long downtime allowed", func() Inputs { in := base(120, "cold"); in.MaxDowntime = 20 * time.Second; return in }(), StrategyCold, "no live strategy fits"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d, err := Choose(tc.in, nil)
			if err != nil {
				t.Fatal(err)
			}
			if d.Strategy != tc.want || d.Prediction.Strategy != tc.want || !strings.Contains(d.Reason, tc.why) {
				t.Fatalf("chose %s (%s), want %s (%q)", d.Strategy, d.Reason, tc.want, tc.why)
			}
			if len(d.Alternatives) != len(Strategies)-1 {
				t.Fatalf("%d alternatives", len(d.Alternatives))
			}
		})
	}
}

func TestChooseRefuses(t *testing.T) {
	for _, tc := range []struct {
		name  string
		in    Inputs
		cause error
		want  []string
	}{
		{"dirty above bandwidth, only precopy", base(120, "precopy"), nil, []string{
			"precopy: dirty rate 120 MiB/s ≥ bandwidth 100 MiB/s", "more bandwidth: needs ≥ 135 MiB/s",
			"converge: not allowed by policy (allow converge", "postcopy: not allowed by policy (allow postcopy",
		}},
		{"1 ms target", func() Inputs { in := base(0, "precopy", "postcopy"); in.MaxDowntime = time.Millisecond; return in }(), nil, []string{
			// 1 MiB at 100 MiB/s = 10 ms, + 20 ms switchover.
			"no live strategy can pause the guest for less than 30ms", "raise --max-downtime to at least 30ms",
		}},
		{"bandwidth unknown", func() Inputs { in := base(10, "precopy"); in.BandwidthBytesPerSec = 0; return in }(), ErrBandwidthUnknown,
			[]string{"bandwidth unknown: measure it first"}},
		{"invalid", func() Inputs { in := base(10, "precopy"); in.Policy.MaxThrottle = 150; return in }(), ErrInvalidInput,
			[]string{"max throttle must be between 0 and 99"}},
		{"nothing allowed", base(1), nil, []string{"the policy allows no strategy", "precopy: not allowed by policy (allow precopy"}},
		{"max total", func() Inputs { in := base(50, "precopy"); in.Policy.MaxTotal = 18 * time.Second; return in }(), nil,
			[]string{"precopy: total 20.57s > max total 18s", "raise the max total to at least 20.57s"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Choose(tc.in, nil)
			var npe *NoPlanError
			if !errors.Is(err, ErrNoPlan) || !errors.As(err, &npe) {
				t.Fatalf("err = %v, want a *NoPlanError", err)
			}
			if tc.cause != nil && !errors.Is(err, tc.cause) {
				t.Fatalf("err = %v, want it to match %v", err, tc.cause)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q lacks %q", err, w)
				}
			}
		})
	}
}

// TestChooseUsesGivenPredictions: Choose ranks the predictions it is given.
func TestChooseUsesGivenPredictions(t *testing.T) {
	in := base(1, "precopy", "converge", "postcopy")
	preds := []Prediction{
		{Strategy: StrategyPrecopy, Converges: true, Total: 12 * time.Second, Downtime: 100 * time.Millisecond},
		{Strategy: StrategyConverge, Converges: true, Total: 10500 * time.Millisecond, Downtime: 100 * time.Millisecond},
		{Strategy: StrategyPostcopy, Converges: true, Total: 10 * time.Second, Downtime: 30 * time.Millisecond, Postcopy: true},
	}
	// Fastest is postcopy (10 s); converge (10.5 s) is within 10% and
	// gentler; precopy (12 s) is not.
	d, err := Choose(in, preds)
	if err != nil || d.Strategy != StrategyConverge {
		t.Fatalf("chose %s, %v; want converge", d.Strategy, err)
	}
	// Same total: the smaller downtime is the fastest, then preference.
	preds[1].Total, preds[2].Total = 10*time.Second, 10*time.Second
	if d, _ := Choose(in, preds); d.Strategy != StrategyConverge || !strings.Contains(d.Reason, "fastest (postcopy") {
		t.Fatalf("chose %s (%s)", d.Strategy, d.Reason)
	}
	// Downtime above the target disqualifies.
	preds[1].Downtime = time.Second
	if d, _ := Choose(in, preds); d.Strategy != StrategyPostcopy {
		t.Fatalf("chose %s, want postcopy", d.Strategy)
	}
}

func TestValidateAndDefaults(t *testing.T) {
	if err := base(10).Validate(); err != nil {
		t.Fatal(err)
	}
	for _, in := range []Inputs{
		{}, {MemoryBytes: 1, NonZeroBytes: -1}, {MemoryBytes: 1, DirtyRateBytesPerSec: math.NaN()},
		{MemoryBytes: 1, BandwidthBytesPerSec: math.Inf(1)}, {MemoryBytes: 1, MaxDowntime: -1}, {MemoryBytes: 1, LinkStall: -time.Second},
		{MemoryBytes: 1, Policy: Policy{MaxTotal: -1}}, {MemoryBytes: 1, Policy: Policy{ThrottleIncrement: 100}},
	} {
		if err := in.Validate(); !errors.Is(err, ErrInvalidInput) {
			t.Errorf("%+v: err = %v", in, err)
		}
	}
	// Zero MaxDowntime means QEMU's 300 ms: the same predictions.
	in := base(50)
	in.MaxDowntime = 0
	if a, b := Predict(in), Predict(base(50)); a[0] != b[0] {
		t.Fatalf("%+v vs %+v", a[0], b[0])
	}
	// NonZero above the memory is clamped.
	in = base(50)
	in.NonZeroBytes = 3 * gib
	if p := find(t, Predict(in), StrategyCold); p.Bytes != 2*gib {
		t.Fatalf("cold bytes %d", p.Bytes)
	}
}

func TestPolicyAllows(t *testing.T) {
	p := Policy{AllowConverge: true, AllowPostcopy: true}
	for s, want := range map[string]bool{StrategyPrecopy: false, StrategyConverge: true, StrategyPostcopy: true, StrategyHybrid: true, StrategyCold: false, "other": false} {
		if p.Allows(s) != want {
			t.Errorf("Allows(%s) = %v", s, !want)
		}
	}
}

func TestSecondsSaturates(t *testing.T) {
	if d := seconds(1e30); d != time.Duration(math.MaxInt64) {
		t.Fatalf("%d", d)
	}
	if d := seconds(0.1324); d != 132400*time.Microsecond {
		t.Fatalf("%s", d)
	}
	// A link of 1 byte per second: nothing overflows into negative times.
	in := base(1, "precopy", "postcopy", "cold")
	in.BandwidthBytesPerSec = 1e-6
	for _, p := range Predict(in) {
		if p.Total < 0 || p.Downtime < 0 {
			t.Fatalf("%+v", p)
		}
	}
}

// TestPredictLocalDisks: 512 MiB of local disk data on the 100 MiB/s link
// with the guest writing 4 MiB/s adds 512/96 s of mirroring to every live
// strategy (and its bytes), nothing to the downtime; cold copies the
// 512 MiB at 100 MiB/s with the guest stopped (total and downtime).
func TestPredictLocalDisks(t *testing.T) {
	in := base(10, StrategyPrecopy, StrategyPostcopy, StrategyCold)
	without := Predict(in)
	in.DiskBytes, in.DiskWriteBytesPerSec = 512*mib, 4*testMiB
	with := Predict(in)
	mirror := 512.0 / 96
	for _, s := range []string{StrategyPrecopy, StrategyPostcopy, StrategyHybrid} {
		a, b := find(t, without, s), find(t, with, s)
		if !a.Converges || !b.Converges {
			t.Fatalf("%s: converges %v without disks, %v with", s, a.Converges, b.Converges)
		}
		if d := (b.Total - a.Total).Seconds(); math.Abs(d-mirror) > 0.01 {
			t.Errorf("%s: the disks add %.3f s, want %.3f s", s, d, mirror)
		}
		if b.Downtime != a.Downtime {
			t.Errorf("%s: downtime %s with disks, %s without", s, b.Downtime, a.Downtime)
		}
		if want := a.Bytes + int64(512*testMiB+4*testMiB*mirror+0.5); b.Bytes != want {
			t.Errorf("%s: bytes %d, want %d", s, b.Bytes, want)
		}
		if !strings.Contains(b.Reason, "mirroring 512.0 MiB of local disks") {
			t.Errorf("%s: reason %q", s, b.Reason)
		}
	}
	a, c := find(t, without, StrategyCold), find(t, with, StrategyCold)
	if copyS := 512.0 / 100; !c.Converges || math.Abs((c.Total-a.Total).Seconds()-copyS) > 0.01 || math.Abs((c.Downtime-a.Downtime).Seconds()-copyS) > 0.01 ||
		c.Bytes != a.Bytes+512*mib || !strings.Contains(c.Reason, "copying 512.0 MiB of local disks") {
		t.Errorf("cold with local disks: %+v, want %.2f s more total and downtime than %+v", c, copyS, a)
	}
	in.DiskBytes = -1
	if err := in.Validate(); err == nil {
		t.Error("negative disk bytes accepted")
	}
}

// TestMirrorRateCapsAFastLink: on a 2.6 GiB/s link a 1 GiB disk mirrors at
// one mirror's rate, not the link's (the disk bench's dry run predicted
// 1.08 s for 3.69 s with the link's): 1024/646 s plaintext by default,
// 1024/362 s with the encrypted mirror's rate; below those rates the link
// is the limit again.
func TestMirrorRateCapsAFastLink(t *testing.T) {
	in := Inputs{MemoryBytes: 1 << 30, NonZeroBytes: 112 << 20, BandwidthBytesPerSec: 2600 << 20,
		Policy: Policy{AllowPrecopy: true}}
	without := find(t, Predict(in), StrategyPrecopy)
	in.DiskBytes = 1 << 30
	for _, c := range []struct {
		name   string
		rate   float64
		mirror float64
	}{
		{"plaintext default", 0, 1024.0 / 646},
		{"tls", DefaultTLSMirrorBytesPerSec, 1024.0 / 362},
		{"mirror faster than the link", 5000 << 20, 1024.0 / 2600},
	} {
		in.MirrorBytesPerSec = c.rate
		with := find(t, Predict(in), StrategyPrecopy)
		if d := (with.Total - without.Total).Seconds(); math.Abs(d-c.mirror) > 0.01 {
			t.Errorf("%s: the disk adds %.3f s, want %.3f s", c.name, d, c.mirror)
		}
	}
}

// An idle guest on a link faster than one stream: Tune runs one stream
// (channels would save under 1 s), so the prediction goes at one stream's
// rate, not the link's; with --multifd 8 at the link's.
func TestOneStreamCapsAFastLink(t *testing.T) {
	in := Inputs{MemoryBytes: 1 << 30, NonZeroBytes: 112 << 20, BandwidthBytesPerSec: 2700 << 20,
		Policy: Policy{AllowPrecopy: true}}
	p := Predict(in)[0]
	// 0.1 setup + 112 MiB / 360 MiB/s (0.311) + device state and
	// switchover (≈ 0.02) + 0.12 finish ≈ 0.55 s.
	if p.Strategy != StrategyPrecopy || p.Total < 500*time.Millisecond || p.Total > 620*time.Millisecond {
		t.Fatalf("one stream: %+v, want a total of about 0.55 s", p)
	}
	in.MultifdChannels = 8
	if q := Predict(in)[0]; q.Total > 350*time.Millisecond {
		t.Fatalf("8 channels: total %s, want the link's rate (under 0.35 s)", q.Total)
	}
}

// A pre-copy that Tune sends through zstd channels is predicted at the rate
// of guest RAM they reach, the rate Tune plans with; --multifd 1, or a host
// without zstd, keeps the one plain stream (the big bench: one TLS stream
// at 127 MiB/s on a 1465 MiB/s link, RAM compressing to 37 %).
func TestPredictZstdPrecopy(t *testing.T) {
	in := Inputs{
		MemoryBytes: 4 * gib, NonZeroBytes: 1187 * mib, BandwidthBytesPerSec: 1465 * mib,
		StreamBytesPerSec: 127 * mib, MaxChannels: 1, RTT: 100 * time.Microsecond,
		CompressBytesPerSec: 250 * mib, CompressRatio: 0.37,
		Policy: Policy{AllowPrecopy: true},
	}
	plain := find(t, Predict(in), StrategyPrecopy)
	in.Zstd = true
	zstd := find(t, Predict(in), StrategyPrecopy)
	tuned := Tune(TuneInputs{Strategy: StrategyPrecopy, BandwidthBytesPerSec: in.BandwidthBytesPerSec, NonZeroBytes: in.NonZeroBytes,
		RTT: in.RTT, Src: Features{Zstd: true}, Dst: Features{Zstd: true}, StreamBytesPerSec: in.StreamBytesPerSec,
		MaxChannels: 1, CompressBytesPerSec: in.CompressBytesPerSec, CompressRatio: in.CompressRatio})
	if tuned.Compression != "zstd" || tuned.CompressedBytesPerSec != 250*mib {
		t.Fatalf("Tune: compression %q at %.0f MiB/s, want zstd at 250", tuned.Compression, tuned.CompressedBytesPerSec/mib)
	}
	// Round 1 is the non-zero RAM at the rate: 1187/127 = 9.3 s plain,
	// 1187/250 = 4.7 s through zstd.
	if d := plain.Total - zstd.Total; d < 4*time.Second || d > 5*time.Second {
		t.Errorf("zstd pre-copy %v, plain %v: want about 4.6 s shorter", zstd.Total, plain.Total)
	}
	in.MultifdChannels = 1
	if one := find(t, Predict(in), StrategyPrecopy); one.Total != plain.Total {
		t.Errorf("--multifd 1 with zstd hosts: %v, want the plain stream's %v", one.Total, plain.Total)
	}
	// The idle guest: zstd would save 0.29 s, under multifdMinSaving, and
	// Tune keeps one stream; so does the model.
	in.MultifdChannels, in.NonZeroBytes, in.StreamBytesPerSec = 0, 112*mib, 151*mib
	zstdIdle := find(t, Predict(in), StrategyPrecopy)
	in.Zstd = false
	if plainIdle := find(t, Predict(in), StrategyPrecopy); zstdIdle.Total != plainIdle.Total {
		t.Errorf("idle guest with zstd hosts: %v, want the plain stream's %v", zstdIdle.Total, plainIdle.Total)
	}
}
