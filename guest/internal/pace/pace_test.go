package pace

import (
	"testing"
	"time"
)

var t0 = time.Unix(1000, 0)

func TestTarget(t *testing.T) {
	for _, tc := range []struct {
		el         time.Duration
		rate, unit uint64
		want       uint64
	}{
		{0, 1 << 20, 4096, 0},
		{-time.Second, 1 << 20, 4096, 0},
		{time.Second, 0, 4096, 0},
		{time.Second, 16 << 20, 4096, 4096},          // 16 MiB/s = 4096 pages/s
		{time.Second / 2, 16 << 20, 4096, 2048},      // half a second
		{time.Millisecond, 16 << 20, 4096, 4},        // 4.096 -> 4
		{time.Second, 256 << 10, 4096, 64},           // 256 KiB/s = 64 records/s
		{time.Second, 6 << 10, 4096, 1},              // 1.5 records/s floor
		{2 * time.Second, 6 << 10, 4096, 3},          // exact over time
		{24 * time.Hour, 1 << 30, 4096, 22649241600}, // large values stay exact
	} {
		if got := Target(tc.el, tc.rate, tc.unit); got != tc.want {
			t.Errorf("Target(%v, %d, %d) = %d, want %d", tc.el, tc.rate, tc.unit, got, tc.want)
		}
	}
}

func TestDueCatchesUp(t *testing.T) {
	p := New(t0, 16<<20, 4096, 0)
	// First round 10 ms late: everything that was due is returned at once.
	if n := p.Due(t0.Add(10 * time.Millisecond)); n != 40 {
		t.Fatalf("Due = %d, want 40", n)
	}
	p.Done(30) // only managed 30
	if n := p.Due(t0.Add(10 * time.Millisecond)); n != 10 {
		t.Fatalf("Due after partial = %d, want 10", n)
	}
	p.Done(10)
	if n := p.Due(t0.Add(10 * time.Millisecond)); n != 0 {
		t.Fatalf("Due when on schedule = %d, want 0", n)
	}
	if n := p.Due(t0.Add(time.Second)); n != 4096-40 {
		t.Fatalf("Due at 1s = %d", n)
	}
}

// Irregular sleeps (as under TCG) must not change the achieved total.
func TestIrregularSleepsHitRate(t *testing.T) {
	p := New(t0, 64<<20, 4096, 0)
	now := t0
	steps := []time.Duration{time.Millisecond, 7 * time.Millisecond, 13 * time.Millisecond, 300 * time.Microsecond}
	for i := 0; now.Sub(t0) < 10*time.Second; i++ {
		now = now.Add(steps[i%len(steps)])
		p.Done(p.Due(now))
	}
	want := Target(now.Sub(t0), 64<<20, 4096)
	if p.Issued() != want || p.Skipped() != 0 {
		t.Fatalf("issued %d skipped %d, want %d/0", p.Issued(), p.Skipped(), want)
	}
	if r := p.Rate(now); r < 16383 || r > 16385 {
		t.Fatalf("rate %f pages/s", r)
	}
}

func TestBacklogCap(t *testing.T) {
	p := New(t0, 256<<10, 4096, 64) // 64 rec/s, cap 1 s
	if n := p.Due(t0.Add(5 * time.Second)); n != 64 {
		t.Fatalf("Due after stall = %d, want cap 64", n)
	}
	if p.Skipped() != 320-64 {
		t.Fatalf("skipped = %d", p.Skipped())
	}
	p.Done(64)
	// back on schedule: next unit is due 1/64 s later
	if n := p.Due(t0.Add(5 * time.Second)); n != 0 {
		t.Fatalf("Due = %d", n)
	}
	if got, want := p.NextAt(), t0.Add(5*time.Second+15625*time.Microsecond); !got.Equal(want) {
		t.Fatalf("NextAt = %v, want %v", got.Sub(t0), want.Sub(t0))
	}
}

func TestNextAt(t *testing.T) {
	p := New(t0, 6<<10, 4096, 0) // 1.5 units/s
	if got := p.NextAt().Sub(t0); got != 666666667*time.Nanosecond {
		t.Fatalf("NextAt = %v", got)
	}
	// NextAt is exactly the first instant Due returns the unit.
	at := p.NextAt()
	if n := p.Due(at.Add(-1)); n != 0 {
		t.Fatalf("Due just before NextAt = %d", n)
	}
	if n := p.Due(at); n != 1 {
		t.Fatalf("Due at NextAt = %d", n)
	}
	z := New(t0, 0, 4096, 0)
	if z.NextAt().Sub(t0) < 100*365*24*time.Hour {
		t.Fatalf("zero rate NextAt too soon")
	}
	if z.Due(t0.Add(time.Hour)) != 0 {
		t.Fatalf("zero rate due")
	}
}

func TestWait(t *testing.T) {
	p := New(t0, 16<<20, 4096, 0) // unit every 244us
	if w := p.Wait(t0, 2*time.Millisecond, 50*time.Millisecond); w != 2*time.Millisecond {
		t.Fatalf("Wait = %v, want min", w)
	}
	q := New(t0, 4096, 4096, 0) // 1 unit/s
	if w := q.Wait(t0, time.Millisecond, 50*time.Millisecond); w != 50*time.Millisecond {
		t.Fatalf("Wait = %v, want max", w)
	}
	if w := q.Wait(t0.Add(990*time.Millisecond), time.Millisecond, 0); w != 10*time.Millisecond {
		t.Fatalf("Wait = %v, want 10ms", w)
	}
}
