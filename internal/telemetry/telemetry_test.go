package telemetry

import (
	"math"
	"reflect"
	"strings"
	"testing"
	"time"
)

// fakeClock is a clock the tests move by hand.
type fakeClock struct{ t time.Time }

func newFakeClock() *fakeClock { return &fakeClock{t: time.Date(2026, 12, 1, 8, 0, 0, 0, time.UTC)} }

func (c *fakeClock) now() time.Time                    { return c.t }
func (c *fakeClock) advance(d time.Duration) time.Time { c.t = c.t.Add(d); return c.t }

func TestSeriesRingKeepsNewestInOrder(t *testing.T) {
	c := newFakeClock()
	s := NewSeries(3, 0.5)
	for i := 1; i <= 5; i++ {
		if !s.Add(c.advance(time.Second), float64(i)) {
			t.Fatalf("sample %d refused", i)
		}
	}
	var got []float64
	for _, x := range s.Samples() {
		got = append(got, x.Value)
	}
	if !reflect.DeepEqual(got, []float64{3, 4, 5}) || s.Len() != 3 {
		t.Errorf("ring holds %v (len %d), want [3 4 5]", got, s.Len())
	}
	if last, _ := s.Latest(); last.Value != 5 || !last.At.Equal(c.now()) {
		t.Errorf("latest %+v", last)
	}
}

func TestSeriesRefusesBadAndOutOfOrderSamples(t *testing.T) {
	c := newFakeClock()
	s := NewSeries(4, 0)
	s.Add(c.advance(time.Second), 10)
	for _, v := range []float64{-1, math.NaN(), math.Inf(1)} {
		if s.Add(c.now(), v) {
			t.Errorf("value %v accepted", v)
		}
	}
	if s.Add(c.now().Add(-time.Millisecond), 3) {
		t.Error("a sample older than the newest was accepted")
	}
	if s.Len() != 1 {
		t.Errorf("len %d, want 1", s.Len())
	}
}

func TestEstimateUsesHigherOfLatestAndEWMA(t *testing.T) {
	c := newFakeClock()
	s := NewSeries(10, 0.5)
	if _, ok := s.Estimate(c.now()); ok {
		t.Fatal("empty series gave an estimate")
	}
	s.Add(c.advance(15*time.Second), 100) // ewma 100
	s.Add(c.advance(15*time.Second), 0)   // ewma 50: a burst just ended
	e, _ := s.Estimate(c.advance(5 * time.Second))
	if e.Latest != 0 || e.EWMA != 50 || e.Value != 50 || e.Peak != 100 || e.Samples != 2 || e.Age != 5*time.Second {
		t.Errorf("after a burst: %+v", e)
	}
	s.Add(c.advance(time.Second), 200) // ewma 125, a new burst
	e, _ = s.Estimate(c.now())
	if e.Value != 200 || e.EWMA != 125 || e.Peak != 200 || e.Age != 0 {
		t.Errorf("during a burst: %+v", e)
	}
}

// The bench's big guest fills 1 GiB at boot and then dirties nothing: a
// plan from max(latest, EWMA) over the whole ring took the fill's average
// (63-86 MiB/s while the latest was 0) and predicted +125 %.
func TestEstimateSinceDropsEarlierBursts(t *testing.T) {
	c := newFakeClock()
	s := NewSeries(10, 0.5)
	boot := c.now()
	s.Add(c.advance(5*time.Second), 226) // the fill
	s.Add(c.advance(5*time.Second), 60)
	settled := c.advance(10 * time.Second)
	s.Add(c.advance(time.Second), 0)
	s.Add(c.advance(5*time.Second), 0)
	e, _ := s.EstimateSince(c.now(), settled)
	if e.Value != 0 || e.EWMA != 0 || e.Peak != 0 || e.Samples != 2 || e.Latest != 0 {
		t.Errorf("after the fill: %+v", e)
	}
	if whole, _ := s.Estimate(c.now()); whole.Value == 0 {
		t.Errorf("the whole ring forgot the fill: %+v", whole)
	}
	// Nothing since: the latest sample alone.
	e, ok := s.EstimateSince(c.now(), c.now().Add(time.Hour))
	if !ok || e.Samples != 1 || e.Value != 0 {
		t.Errorf("since after the latest: %+v, %v", e, ok)
	}
	// Since the boot: the same as Estimate.
	e, _ = s.EstimateSince(c.now(), boot)
	if whole, _ := s.Estimate(c.now()); e.Value != whole.Value || e.Peak != whole.Peak || e.EWMA != whole.EWMA {
		t.Errorf("since boot %+v, whole %+v", e, whole)
	}
}

func TestStaleness(t *testing.T) {
	c := newFakeClock()
	s := NewSeries(4, 0)
	if r := s.Staleness(c.now(), time.Minute); r != "no sample yet" {
		t.Errorf("empty: %q", r)
	}
	s.Add(c.now(), 1)
	if r := s.Staleness(c.advance(45*time.Second), 45*time.Second); r != "" {
		t.Errorf("exactly max age should be fresh: %q", r)
	}
	if r := s.Staleness(c.advance(time.Second), 45*time.Second); !strings.Contains(r, "46s old (limit 45s)") {
		t.Errorf("stale: %q", r)
	}
	if r := s.Staleness(c.now(), 0); r == "" {
		t.Error("max age 0 must always ask for a measurement")
	}
	s.Reset()
	if s.Len() != 0 || s.Staleness(c.now(), time.Hour) != "no sample yet" {
		t.Error("reset kept samples")
	}
}

func TestScheduleNext(t *testing.T) {
	c := newFakeClock()
	sch := Schedule{DirtyEvery: 15 * time.Second, RAMEvery: 60 * time.Second, Settle: 2 * time.Second}
	start := c.now()
	v := VMView{Running: true, QuietSince: start}
	steps := []struct {
		at   time.Duration
		view func(*VMView)
		want Kind
	}{
		{time.Second, nil, Nothing}, // settling after start
		{2 * time.Second, nil, Dirty},
		{2 * time.Second, func(v *VMView) { v.LastDirty = start.Add(2 * time.Second) }, RAM},
		{3 * time.Second, func(v *VMView) { v.LastRAM = start.Add(3 * time.Second) }, Nothing},
		{16 * time.Second, nil, Nothing},
		{17 * time.Second, nil, Dirty},
		{17 * time.Second, func(v *VMView) { v.Migrating = true }, Nothing}, // never while migrating
		{40 * time.Second, func(v *VMView) { v.Migrating = false; v.QuietSince = start.Add(40 * time.Second) }, Nothing},
		{42 * time.Second, nil, Dirty},
		{42 * time.Second, func(v *VMView) { v.LastDirty = start.Add(42 * time.Second) }, Nothing},
		{63 * time.Second, nil, Dirty},
		{63 * time.Second, func(v *VMView) { v.LastDirty = start.Add(63 * time.Second) }, RAM},
		{63 * time.Second, func(v *VMView) { v.Running = false }, Nothing},
	}
	for i, st := range steps {
		if st.view != nil {
			st.view(&v)
		}
		if got := sch.Next(start.Add(st.at), v); got != st.want {
			t.Errorf("step %d at +%s: %s, want %s", i, st.at, got, st.want)
		}
	}
	// A young VM's dirty rate is sampled more often; its RAM is not.
	young := Schedule{DirtyEvery: 15 * time.Second, RAMEvery: 60 * time.Second, Settle: time.Second, YoungFor: time.Minute, YoungDirtyEvery: 3 * time.Second}
	yv := VMView{Running: true, QuietSince: start, LastDirty: start.Add(2 * time.Second), LastRAM: start.Add(2 * time.Second)}
	for _, st := range []struct {
		at   time.Duration
		want Kind
	}{{4 * time.Second, Nothing}, {5 * time.Second, Dirty}, {59 * time.Second, Dirty}, {61 * time.Second, Nothing}} {
		if st.at == 61*time.Second {
			yv.LastDirty = start.Add(59 * time.Second)
		}
		if got := young.Next(start.Add(st.at), yv); got != st.want {
			t.Errorf("young VM at +%s: %s, want %s", st.at, got, st.want)
		}
	}
	if got := young.Next(start.Add(74*time.Second), yv); got != Dirty {
		t.Errorf("grown-up VM 15 s after its last sample: %s, want dirty-rate", got)
	}
	off := Schedule{Settle: time.Second, YoungFor: time.Minute, YoungDirtyEvery: time.Second}
	if got := off.Next(start.Add(time.Hour), VMView{Running: true, QuietSince: start}); got != Nothing {
		t.Errorf("sampling switched off still schedules %s", got)
	}
}

const mib = 1 << 20

func TestLinksFigure(t *testing.T) {
	c := newFakeClock()
	l := NewLinks()
	if _, ok := l.Figure("h1", "h2", c.now()); ok {
		t.Fatal("empty book gave a figure")
	}
	// A probe alone is used as is.
	l.ObserveProbe("h1", "h2", 900*mib, c.now(), true)
	f, ok := l.Figure("h1", "h2", c.advance(2*time.Second))
	if !ok || f.Kind != FromProbe || f.BytesPerSec != 900*mib || f.Age != 2*time.Second || !strings.Contains(f.Source, "inline probe h1→h2 2s ago") {
		t.Fatalf("probe only: %+v", f)
	}
	// A migration on another pair caps it (what QEMU reaches anywhere).
	l.ObserveMigration("h3", "h4", 300*mib, c.now())
	f, _ = l.Figure("h1", "h2", c.now())
	if f.BytesPerSec != 300*mib || !strings.Contains(f.Source, "capped by past migrations any pair") {
		t.Errorf("capped by any pair: %+v", f)
	}
	if f.ProbeBytesPerSec != 900*mib {
		t.Errorf("capped figure: probe %.0f MiB/s, want the raw 900", f.ProbeBytesPerSec/mib)
	}
	// The pair's own migrations cap it when it has some.
	l.ObserveMigration("h1", "h2", 400*mib, c.now())
	f, _ = l.Figure("h1", "h2", c.now())
	if f.BytesPerSec != 400*mib || !strings.Contains(f.Source, "capped by past migrations h1→h2") {
		t.Errorf("capped by the pair: %+v", f)
	}
	// An old probe is not used; the pair's migrations are.
	c.advance(DefaultProbeMaxAge + time.Second)
	f, ok = l.Figure("h1", "h2", c.now())
	if !ok || f.Kind != FromMigrations || f.BytesPerSec != 400*mib || !strings.Contains(f.Source, "learned from 1 past migration(s) h1→h2") {
		t.Errorf("stale probe: %+v", f)
	}
	// The reverse direction never migrated nor was probed: no figure.
	if f, ok := l.Figure("h2", "h1", c.now()); ok {
		t.Errorf("reverse pair has a figure: %+v", f)
	}
	// The moving average follows planner.EWMAAlpha.
	l.ObserveMigration("h1", "h2", 300*mib, c.now())
	f, _ = l.Figure("h1", "h2", c.now())
	if want := 0.3*300*mib + 0.7*400*mib; math.Abs(f.BytesPerSec-want) > 1 {
		t.Errorf("EWMA %.0f, want %.0f", f.BytesPerSec, want)
	}
	// A migration far below (or above) the average: the link changed, and
	// the average restarts from that migration.
	c.advance(DefaultProbeMaxAge + time.Second)
	l.ObserveMigration("h1", "h2", 45*mib, c.now())
	f, _ = l.Figure("h1", "h2", c.now())
	if f.BytesPerSec != 45*mib || !strings.Contains(f.Source, "learned from 1 past migration(s) h1→h2") {
		t.Errorf("link changed to 45 MiB/s: %+v", f)
	}
	l.ObserveMigration("h1", "h2", 60*mib, c.now()) // within the factor: averaged
	f, _ = l.Figure("h1", "h2", c.now())
	if want := 0.3*60*mib + 0.7*45*mib; math.Abs(f.BytesPerSec-want) > 1 {
		t.Errorf("EWMA after the change %.0f, want %.0f", f.BytesPerSec, want)
	}
	l.ObserveMigration("h1", "h2", 200*mib, c.now()) // faster again: restart
	if f, _ = l.Figure("h1", "h2", c.now()); f.BytesPerSec != 200*mib {
		t.Errorf("link changed to 200 MiB/s: %+v", f)
	}
	// Bad figures are ignored.
	l.ObserveProbe("h5", "h6", math.Inf(1), c.now(), false)
	l.ObserveMigration("h5", "h6", -1, c.now())
	if _, ok := l.Figure("h5", "h6", c.now()); ok {
		t.Error("bad figures were recorded")
	}
}

func TestLinksDue(t *testing.T) {
	c := newFakeClock()
	l := NewLinks()
	hosts := []string{"h1", "h2", "h3"}
	all := []Pair{{"h1", "h2"}, {"h1", "h3"}, {"h2", "h1"}, {"h2", "h3"}, {"h3", "h1"}, {"h3", "h2"}}
	if d := l.Due(c.now(), nil); len(d) != 0 {
		t.Fatalf("no hosts, due %v", d)
	}
	// Never-probed pairs are due so a first migration finds a figure.
	if d := l.Due(c.now(), hosts); !reflect.DeepEqual(d, all) {
		t.Fatalf("fresh book: %v, want %v", d, all)
	}
	for _, p := range all {
		l.ObserveProbe(p.From, p.To, 900*mib, c.now(), false)
	}
	if d := l.Due(c.advance(time.Minute), hosts); len(d) != 0 {
		t.Fatalf("all just probed, due %v", d)
	}
	// A migration makes both directions active: re-probed after
	// ProbeEvery, before idle pairs, and while the idle ones wait for
	// ProbeIdleEvery.
	l.ObserveMigration("h2", "h1", 300*mib, c.now())
	active := []Pair{{"h1", "h2"}, {"h2", "h1"}}
	if d := l.Due(c.advance(DefaultProbeEvery), hosts); !reflect.DeepEqual(d, active) {
		t.Errorf("after ProbeEvery: %v, want %v", d, active)
	}
	l.ObserveProbe("h2", "h1", 800*mib, c.now(), false)
	f, ok := l.Figure("h2", "h1", c.now())
	if !ok || !strings.Contains(f.Source, "background probe h2→h1") || f.BytesPerSec != 300*mib {
		t.Errorf("reverse pair after a background probe: %+v", f)
	}
	// A failed probe waits ProbeRetry before the pair is tried again.
	l.ProbeFailed("h1", "h2", c.now())
	if d := l.Due(c.now(), hosts); len(d) != 0 {
		t.Errorf("after a failed probe: %v", d)
	}
	// (By then the other direction is due again too, after it: probed later.)
	if d := l.Due(c.advance(DefaultProbeRetry), hosts); !reflect.DeepEqual(d, []Pair{{"h1", "h2"}, {"h2", "h1"}}) {
		t.Errorf("after ProbeRetry: %v", d)
	}
	// Idle pairs come after active ones, oldest probe first.
	l.ObserveProbe("h1", "h2", 800*mib, c.now(), false)
	c.t = c.t.Add(DefaultProbeIdleEvery - DefaultProbeEvery - DefaultProbeRetry - time.Minute + time.Second)
	d := l.Due(c.now(), hosts)
	if len(d) < 2 || !reflect.DeepEqual(d[:2], []Pair{{"h2", "h1"}, {"h1", "h2"}}) || len(d) != len(all) {
		t.Errorf("active then idle: %v", d)
	}
	// A host that left (not ready) is not probed; pairs go inactive.
	c.advance(DefaultActiveFor)
	for _, p := range all {
		l.ObserveProbe(p.From, p.To, 900*mib, c.now(), false)
	}
	if d := l.Due(c.advance(DefaultProbeEvery), []string{"h1", "h2"}); len(d) != 0 {
		t.Errorf("inactive pairs re-probed before ProbeIdleEvery: %v", d)
	}
}

func TestLinksProbeFigureIsTheMedianOfAgreeingProbes(t *testing.T) {
	const mib = 1 << 20
	c := &fakeClock{t: time.Date(2026, 12, 1, 8, 0, 0, 0, time.UTC)}
	l := NewLinks()
	for _, r := range []float64{5000, 58, 34, 40} { // the unshaped link, then three probes of the shaped one
		l.ObserveProbe("h1", "h2", r*mib, c.advance(DefaultProbeEvery), false)
	}
	f, ok := l.Figure("h1", "h2", c.now())
	if !ok || f.BytesPerSec != 40*mib || !strings.Contains(f.Source, "median of the last 3 agreeing probes 40 MiB/s") {
		t.Errorf("three probes of the shaped link: %+v", f)
	}
	// A probe more than probesAgree off the others: the link changed.
	l.ObserveProbe("h1", "h2", 200*mib, c.advance(DefaultProbeEvery), false)
	if f, _ = l.Figure("h1", "h2", c.now()); f.BytesPerSec != 200*mib || strings.Contains(f.Source, "median") {
		t.Errorf("after the link changed: %+v", f)
	}
	// Probes older than ProbeMaxAge are not part of the median.
	l.ObserveProbe("h1", "h2", 120*mib, c.advance(DefaultProbeMaxAge+time.Second), false)
	if f, _ = l.Figure("h1", "h2", c.now()); f.BytesPerSec != 120*mib {
		t.Errorf("after a long gap: %+v", f)
	}
}

func TestLinksProbeBelowTheLearnedRate(t *testing.T) {
	const mib = 1 << 20
	c := &fakeClock{t: time.Date(2026, 12, 1, 8, 0, 0, 0, time.UTC)}
	l := NewLinks()
	l.ObserveMigration("h1", "h2", 44*mib, c.now())
	// Somewhat below: the probe's error; the migrations' rate is planned with.
	l.ObserveProbe("h1", "h2", 32*mib, c.advance(DefaultProbeEvery), false)
	if f, _ := l.Figure("h1", "h2", c.now()); f.BytesPerSec != 44*mib || !strings.Contains(f.Source, "planned with theirs") {
		t.Errorf("probe 32 MiB/s, migrations 44 MiB/s: %+v", f)
	}
	// Far below (a far link's slow start): still the migrations' rate.
	l.ObserveProbe("h1", "h2", 2.4*mib, c.advance(DefaultProbeEvery), false)
	if f, _ := l.Figure("h1", "h2", c.now()); f.BytesPerSec != 44*mib {
		t.Errorf("probe 2.4 MiB/s, migrations 44 MiB/s: %+v", f)
	}
	// Under half on a LAN (RTT known, under SlowedProbeRTT): the link
	// slowed, the probe is planned with.
	l.ObserveMigration("h5", "h6", 225*mib, c.now())
	l.ObserveRTT("h5", "h6", 100*time.Microsecond)
	l.ObserveProbe("h5", "h6", 54*mib, c.advance(DefaultProbeEvery), false)
	if f, _ := l.Figure("h5", "h6", c.now()); f.BytesPerSec != 54*mib || !strings.Contains(f.Source, "the link slowed") {
		t.Errorf("probe 54 MiB/s at 0.1 ms RTT, migrations 225 MiB/s: %+v", f)
	}
	// The same on a far link (slow start distorts the probe): the migrations'.
	l.ObserveMigration("h7", "h8", 225*mib, c.now())
	l.ObserveRTT("h7", "h8", 40*time.Millisecond)
	l.ObserveProbe("h7", "h8", 54*mib, c.advance(DefaultProbeEvery), false)
	if f, _ := l.Figure("h7", "h8", c.now()); f.BytesPerSec != 225*mib {
		t.Errorf("probe 54 MiB/s at 40 ms RTT, migrations 225 MiB/s: %+v", f)
	}
	// A pair without migrations plans with its probe.
	l.ObserveProbe("h3", "h4", 2.4*mib, c.now(), false)
	if f, _ := l.Figure("h3", "h4", c.now()); f.BytesPerSec != 2.4*mib {
		t.Errorf("probe only: %+v", f)
	}
}

func TestLinksProbeAtItsOwnCeilingKeepsTheLearnedRate(t *testing.T) {
	const mib = 1 << 20
	c := &fakeClock{t: time.Date(2026, 12, 1, 8, 0, 0, 0, time.UTC)}
	l := NewLinks()
	l.ObserveRTT("h1", "h2", 100*time.Microsecond)
	// The bench's disk scenario: busy guests hold the probes of an
	// unshaped link at 150-240 MiB/s, where migrations reach 1 GiB/s.
	l.ObserveProbe("h1", "h2", 147*mib, c.now(), false)
	l.ObserveMigration("h1", "h2", 1092*mib, c.advance(time.Second))
	l.ObserveProbe("h1", "h2", 104*mib, c.advance(DefaultProbeEvery), false)
	f, _ := l.Figure("h1", "h2", c.now())
	if f.BytesPerSec != 1092*mib || !strings.Contains(f.Source, "planned with theirs") {
		t.Errorf("probe 104 MiB/s where the migration's link probed 147: want the migrations' 1092 MiB/s, got %.0f MiB/s (%s)", f.BytesPerSec/mib, f.Source)
	}
	// The link is then shaped: the probe falls under half of the probes
	// the learned rate was reached with, and the plan takes it.
	l.ObserveProbe("h1", "h2", 45*mib, c.advance(DefaultProbeEvery), false)
	f, _ = l.Figure("h1", "h2", c.now())
	if f.BytesPerSec != 45*mib || !strings.Contains(f.Source, "the link slowed") || !strings.Contains(f.Source, "of the link past migrations") {
		t.Errorf("probe 45 MiB/s after probes of 104-147: want the probe, got %.0f MiB/s (%s)", f.BytesPerSec/mib, f.Source)
	}
	// A migration with no recent probe forgets the reference: the rule
	// falls back to the migrations' own rate.
	l.ObserveMigration("h1", "h2", 1000*mib, c.advance(time.Hour))
	if _, ok := l.probeAtLearn[Pair{"h1", "h2"}]; ok {
		t.Error("a migration without a recent probe kept the old probe reference")
	}
}

func TestLinksStallFigure(t *testing.T) {
	const mib = 1 << 20
	c := &fakeClock{t: time.Date(2026, 12, 1, 8, 0, 0, 0, time.UTC)}
	l := NewLinks()
	l.ObserveMigration("h1", "h2", 44*mib, c.now())
	if f, _ := l.Figure("h1", "h2", c.now()); f.Stall != 0 || f.StallSource != "" {
		t.Errorf("no stall observed: %+v", f)
	}
	// The flaky bench: two 2 s outages cost each migration about 6 s.
	l.ObserveStall("h1", "h2", 6*time.Second, c.now())
	l.ObserveStall("h1", "h2", 7*time.Second, c.advance(time.Minute))
	f, _ := l.Figure("h1", "h2", c.now())
	if want := 7 * time.Second; f.Stall != want || !strings.Contains(f.StallSource, "average of 2, 6.3s") {
		t.Errorf("stalls of 6 and 7 s: %v (%s), want the latest, %v", f.Stall, f.StallSource, want)
	}
	// Migrations without a stall dilute the average below StallMin.
	for range 8 {
		l.ObserveStall("h1", "h2", 0, c.advance(time.Minute))
	}
	if f, _ := l.Figure("h1", "h2", c.now()); f.Stall != 0 {
		t.Errorf("after 8 migrations without a stall: %v", f.Stall)
	}
	// A link that starts to flap after calm migrations shows at once.
	l.ObserveStall("h1", "h2", 5*time.Second, c.advance(time.Minute))
	if f, _ := l.Figure("h1", "h2", c.now()); f.Stall != 5*time.Second {
		t.Errorf("a 5 s stall after calm migrations: %v, want 5s", f.Stall)
	}
	// An old figure is not planned with.
	l.ObserveStall("h3", "h4", 5*time.Second, c.now())
	l.ObserveMigration("h3", "h4", 44*mib, c.now())
	if f, _ := l.Figure("h3", "h4", c.advance(StallMaxAge+time.Second)); f.Stall != 0 {
		t.Errorf("a stall %s old: %v", StallMaxAge+time.Second, f.Stall)
	}
	// A link that changed starts over.
	l.ObserveStall("h5", "h6", 5*time.Second, c.now())
	l.ObserveMigration("h5", "h6", 44*mib, c.now())
	l.ObserveMigration("h5", "h6", 130*mib, c.now())
	if f, _ := l.Figure("h5", "h6", c.now()); f.Stall != 0 {
		t.Errorf("after the link changed (44 → 130 MiB/s): %v", f.Stall)
	}
	// A negative stall is refused.
	l.ObserveStall("h7", "h8", -time.Second, c.now())
	if _, ok := l.stalls[Pair{"h7", "h8"}]; ok {
		t.Error("a negative stall was recorded")
	}
}
