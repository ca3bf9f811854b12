package planner

import (
	"strings"
	"testing"
	"time"
)

// flat returns n samples of a pre-copy whose dirty set stays near 410 MiB:
// one per round from round 2, every 4.1 s, the throttle rising 10% per
// round once it started (QEMU's ramp), the dirty rate falling with it.
func flat(n int, throttleFrom int) []Sample {
	var out []Sample
	for i := range n {
		s := Sample{
			Elapsed: 10*time.Second + time.Duration(i)*4100*time.Millisecond, Round: 2 + i,
			RemainingBytes: int64(410-i) * mib, RateBytesPerSec: 100 * testMiB, DirtyRateBytesPerSec: 120 * testMiB,
		}
		if throttleFrom >= 0 && i > throttleFrom {
			s.Throttle = min(20+10*(i-throttleFrom-1), 99)
			s.DirtyRateBytesPerSec *= 1 - float64(s.Throttle)/100
		}
		out = append(out, s)
	}
	return out
}

func kinds(actions []Action) []ActionKind {
	var out []ActionKind
	for _, a := range actions {
		if a.Kind != None {
			out = append(out, a.Kind)
		}
	}
	return out
}

func observeAll(t *testing.T, c *Controller, samples []Sample) []Action {
	t.Helper()
	var out []Action
	for _, s := range samples {
		a := c.Observe(s)
		if a.Reason == "" {
			t.Fatalf("sample %+v: action %s without a reason", s, a.Kind)
		}
		out = append(out, a)
	}
	return out
}

func TestControllerConverging(t *testing.T) {
	// ρ = 0.5: the dirty set halves every round (512 → 256 → … MiB).
	in := base(50, "precopy", "converge", "postcopy")
	c := NewController(in)
	var samples []Sample
	at := 10 * time.Second
	for r, rem := 2, int64(512); rem >= 16; r, rem = r+1, rem/2 {
		samples = append(samples, Sample{Elapsed: at, Round: r, RemainingBytes: rem * mib, DirtyRateBytesPerSec: 50 * testMiB, RateBytesPerSec: 100 * testMiB})
		at += time.Duration(rem) * 10 * time.Millisecond // rem MiB at 100 MiB/s
	}
	acts := observeAll(t, c, samples)
	if k := kinds(acts); len(k) != 0 {
		t.Fatalf("actions %v on a converging migration", k)
	}
	if !strings.Contains(acts[1].Reason, "converging: remaining 512 MiB → 256 MiB over 1 round") {
		t.Fatalf("reason %q", acts[1].Reason)
	}
	if len(c.Decisions()) != 0 {
		t.Fatalf("decisions %v", c.Decisions())
	}
}

func TestControllerEscalation(t *testing.T) {
	for _, tc := range []struct {
		name   string
		allow  []string
		want   []ActionKind
		reason string // of the last action
	}{
		{"throttle then post-copy", []string{"precopy", "converge", "postcopy"}, []ActionKind{Throttle, StartPostcopy}, "switch to post-copy"},
		{"throttle then abort", []string{"precopy", "converge"}, []ActionKind{Throttle, Abort}, "and policy forbids post-copy"},
		{"post-copy at once", []string{"precopy", "postcopy"}, []ActionKind{StartPostcopy}, "switch to post-copy"},
		{"abort at once", []string{"precopy"}, []ActionKind{Abort},
			"pre-copy is not converging (remaining 410 MiB → 409 MiB over 1 round, dirty 120 MiB/s vs link 100 MiB/s) and policy forbids throttling and post-copy"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := NewController(base(120, tc.allow...))
			// The throttle action comes at the second sample (round 3).
			acts := observeAll(t, c, flat(40, 1))
			got := kinds(acts)
			if len(got) != len(tc.want) {
				t.Fatalf("actions %v, want %v", got, tc.want)
			}
			for i := range got {
				if got[i] != tc.want[i] {
					t.Fatalf("actions %v, want %v", got, tc.want)
				}
			}
			dec := c.Decisions()
			if len(dec) != len(tc.want) || !strings.Contains(dec[len(dec)-1].Reason, tc.reason) {
				t.Fatalf("decisions %+v, last reason should contain %q", dec, tc.reason)
			}
			if dec[0].Kind == Throttle && (dec[0].Throttle < 20 || dec[0].Throttle > 99) {
				t.Fatalf("throttle %d%%", dec[0].Throttle)
			}
			// Deterministic: a new controller fed the same samples says the same.
			again := observeAll(t, NewController(base(120, tc.allow...)), flat(40, 1))
			for i := range acts {
				if acts[i] != again[i] {
					t.Fatalf("sample %d: %+v then %+v", i, acts[i], again[i])
				}
			}
		})
	}
}

// TestControllerWaitsForTheRamp: after asking for a throttle it does not
// escalate until the throttle reached what it expected to need (or had the
// time to) and a new window shows no progress.
// A hybrid controller waits for no throttle ramp: once pre-copy is judged
// not converging it switches to post-copy within HybridRounds rounds (the
// dirty set not shrinking by 10%), and a throttle that does shrink the
// dirty set is given its chance.
func TestControllerHybridPatience(t *testing.T) {
	c := NewController(base(120, "precopy", "converge", "postcopy"))
	samples := flat(12, 1)
	acts := observeAll(t, c, samples)
	throttleAt, postAt := -1, -1
	for i, a := range acts {
		switch a.Kind {
		case Throttle:
			throttleAt = i
		case StartPostcopy:
			postAt = i
		}
	}
	if throttleAt != 1 || postAt < 0 {
		t.Fatalf("throttle at sample %d, post-copy at %d: %+v", throttleAt, postAt, acts)
	}
	if d := samples[postAt].Round - samples[throttleAt].Round; d > HybridRounds {
		t.Fatalf("post-copy %d rounds after the verdict, beyond %d", d, HybridRounds)
	}

	// QEMU's own auto-converge (on from the start) ramps one step per 5.5 s
	// round: the controller does not wait for it beyond HybridPatience.
	c = NewController(base(120, "precopy", "converge", "postcopy"))
	at := 8 * time.Second
	var verdict, post time.Duration = -1, -1
	for ; at < 60*time.Second && post < 0; at += 200 * time.Millisecond {
		round := 2 + int((at-8*time.Second)/(5500*time.Millisecond))
		s := Sample{Elapsed: at, Round: round, RemainingBytes: 256 * mib, RateBytesPerSec: 46 * testMiB, DirtyRateBytesPerSec: 44 * testMiB, Throttle: min(99, 10+10*round)}
		a := c.Observe(s)
		if a.Kind != None && verdict < 0 {
			verdict = at
		}
		if a.Kind == StartPostcopy {
			post = at
		}
	}
	if verdict < 0 || post < 0 || post-verdict > HybridPatience {
		t.Fatalf("verdict at %s, post-copy at %s: beyond the patience %s", verdict, post, HybridPatience)
	}

	// A throttle that shrinks the dirty set: no post-copy.
	c = NewController(base(120, "precopy", "converge", "postcopy"))
	rem := []int64{410, 408, 300, 200, 120, 60, 20}
	for i, r := range rem {
		s := Sample{Elapsed: 10*time.Second + time.Duration(i)*4100*time.Millisecond, Round: 2 + i, RemainingBytes: r * mib, RateBytesPerSec: 100 * testMiB, DirtyRateBytesPerSec: 120 * testMiB}
		if i >= 2 {
			s.DirtyRateBytesPerSec, s.Throttle = 40*testMiB, 60
		}
		if a := c.Observe(s); a.Kind == StartPostcopy || a.Kind == Abort {
			t.Fatalf("sample %d (%d MiB remaining): %s: %s", i, r, a.Kind, a.Reason)
		}
	}
}

func TestControllerGuards(t *testing.T) {
	c := NewController(base(120, "precopy"))
	if a := c.Observe(Sample{Elapsed: 5 * time.Second, Round: 1, RemainingBytes: 600 * mib, RateBytesPerSec: 100 * testMiB}); a.Kind != None || !strings.Contains(a.Reason, "round 1") {
		t.Fatalf("%+v", a)
	}
	if a := c.Observe(Sample{Elapsed: 4 * time.Second, Round: 1}); a.Kind != None || !strings.Contains(a.Reason, "out of order") {
		t.Fatalf("%+v", a)
	}
	// Below the switchover threshold (27 MiB): nothing to do.
	if a := c.Observe(Sample{Elapsed: 11 * time.Second, Round: 2, RemainingBytes: 20 * mib, RateBytesPerSec: 100 * testMiB}); a.Kind != None || !strings.Contains(a.Reason, "switchover is near") {
		t.Fatalf("%+v", a)
	}
	// Post-copy running: nothing more to do, ever.
	if a := c.Observe(Sample{Elapsed: 12 * time.Second, Round: 3, RemainingBytes: 400 * mib, Postcopy: true}); a.Kind != None {
		t.Fatalf("%+v", a)
	}
	for _, s := range flat(10, -1) {
		s.Elapsed += time.Minute
		s.Round += 10
		if a := c.Observe(s); a.Kind != None {
			t.Fatalf("%+v after post-copy started", a)
		}
	}
	// Invalid inputs: never acts.
	bad := NewController(Inputs{})
	if a := bad.Observe(flat(1, -1)[0]); a.Kind != None || !strings.Contains(a.Reason, "controller disabled") {
		t.Fatalf("%+v", a)
	}
	// Max total exceeded: escalates without waiting for a trend.
	in := base(50, "precopy", "postcopy")
	in.Policy.MaxTotal = 30 * time.Second
	c = NewController(in)
	a := c.Observe(Sample{Elapsed: 31 * time.Second, Round: 2, RemainingBytes: 100 * mib, RateBytesPerSec: 100 * testMiB})
	if a.Kind != StartPostcopy || !strings.Contains(a.Reason, "beyond max total 30s") {
		t.Fatalf("%+v", a)
	}
}

func TestControllerJudgesFromRatesAfterThreeSeconds(t *testing.T) {
	c := NewController(base(120, "precopy", "converge"))
	// Round 2 started at 10.3 s and is still running at 13.5 s: the dirty
	// rate above the link is enough to act on.
	c.Observe(Sample{Elapsed: 10300 * time.Millisecond, Round: 2, RemainingBytes: 1200 * mib, DirtyRateBytesPerSec: 120 * testMiB, RateBytesPerSec: 100 * testMiB})
	if a := c.Observe(Sample{Elapsed: 12 * time.Second, Round: 2, RemainingBytes: 1000 * mib, DirtyRateBytesPerSec: 120 * testMiB, RateBytesPerSec: 100 * testMiB}); a.Kind != None {
		t.Fatalf("acted after 1.7 s: %+v", a)
	}
	a := c.Observe(Sample{Elapsed: 13500 * time.Millisecond, Round: 2, RemainingBytes: 900 * mib, DirtyRateBytesPerSec: 120 * testMiB, RateBytesPerSec: 100 * testMiB})
	if a.Kind != Throttle || !strings.Contains(a.Reason, "dirty 120 MiB/s vs link 100 MiB/s") {
		t.Fatalf("%+v", a)
	}
}

func TestActionKindString(t *testing.T) {
	for k, want := range map[ActionKind]string{None: "none", RaiseBandwidth: "raise-bandwidth", Throttle: "throttle", StartPostcopy: "start-postcopy", Abort: "abort", 9: "action(9)"} {
		if k.String() != want {
			t.Errorf("%d: %q", int(k), k.String())
		}
	}
}
