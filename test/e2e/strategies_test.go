package e2e

import (
	"fmt"
	"strings"
	"testing"
	"time"

	ferryv1 "github.com/ferryvm/ferry/gen/ferry/v1"
)

// TestDryRunPredictsAndChangesNothing: --dry-run measures the guest and the
// link, predicts every strategy and names a choice, and leaves the VM, the
// destination and the migration list untouched.
func TestDryRunPredictsAndChangesNothing(t *testing.T) {
	c := upCluster(t, 2)
	const name, ip = "dry", "198.19.0.51"
	c.bootGuest(name, ip, "64:16")
	before := c.checkOnHost(name, "h1")

	// Dry runs change nothing: ask until the telemetry has seen the guest
	// write.
	plan := c.waitPlannedDirty(name, "h2", 20*time.Second)
	in := plan.GetInputs()
	t.Logf("inputs: memory %d, non-zero %d, dirty %.1f MiB/s, link %.0f MiB/s (%s)", in.GetMemoryBytes(), in.GetNonZeroBytes(), in.GetDirtyRateMibps(), in.GetBandwidthMibps(), in.GetBandwidthSource())
	if in.GetMemoryBytes() != 256<<20 || in.GetNonZeroBytes() <= 0 || in.GetBandwidthMibps() <= 0 || in.GetDirtyRateMibps() <= 0 {
		t.Errorf("measured inputs look wrong: %v", in)
	}
	seen := map[string]bool{}
	for _, p := range plan.GetPredictions() {
		seen[p.Strategy] = true
		t.Logf("  %-9s converges=%v total=%dms downtime=%dms allowed=%v: %s", p.Strategy, p.Converges, p.TotalMs, p.DowntimeMs, p.Allowed, p.Reason)
	}
	for _, s := range []string{"precopy", "converge", "postcopy", "hybrid"} {
		if !seen[s] {
			t.Errorf("dry run has no prediction for %s", s)
		}
	}
	if plan.GetChoice() == "" {
		t.Errorf("dry run chose nothing: %s", plan.GetReason())
	}
	table := c.mustFerry("migrate", name, "--to", "h2", "--dry-run")
	if !strings.Contains(table, "choice") || !strings.Contains(table, "precopy") {
		t.Errorf("dry-run table lacks the choice or the strategies:\n%s", table)
	}

	after := c.checkOnHost(name, "h1")
	if after.Generation != before.Generation || after.State != "running" || after.MigrationId != "" {
		t.Errorf("dry run changed the VM record: %v -> %v", before, after)
	}
	if ms := c.listMigrations(); len(ms) != 0 {
		t.Errorf("dry run recorded %d migrations", len(ms))
	}
	if p := qemuPIDs(t, c.hostNS("h2")); len(p) != 0 {
		t.Errorf("dry run started QEMU on h2: %v", p)
	}
}

// TestAutoMigrationReportsPrediction: the default strategy (auto) plans,
// migrates, and reports its prediction next to the actual figures.
func TestAutoMigrationReportsPrediction(t *testing.T) {
	c := upCluster(t, 2)
	const name, ip = "auto", "198.19.0.52"
	boot := c.bootGuest(name, ip, "64:16")
	m, wall := c.mustMigrateWait(name, "h2", "--strategy", "auto")
	logReport(t, "auto migration", m, wall)
	if m.Status != "completed" || m.GetPlan() == nil || m.GetPredicted() == nil {
		t.Fatalf("auto migration: status %s, plan %v, predicted %v", m.Status, m.GetPlan(), m.GetPredicted())
	}
	if m.Strategy != m.GetPlan().GetChoice() || m.Strategy == "auto" {
		t.Errorf("strategy %q, plan chose %q", m.Strategy, m.GetPlan().GetChoice())
	}
	t.Logf("predicted total %d ms downtime %d ms; actual total %d ms downtime %d ms (planning %d ms)",
		m.Predicted.TotalMs, m.Predicted.DowntimeMs, m.TotalMs, m.GetDowntimePhases().GetTotalMs(), m.PlanningMs)
	if got := c.bootID(ip, 10*time.Second); got != boot {
		t.Errorf("boot_id changed: %s -> %s", boot, got)
	}
}

// TestPostcopyRecoversFromLinkBreak breaks the link between the hosts while
// post-copy runs: the guest pauses on the destination instead of dying, and
// the migration finishes once the link returns, with the same boot and an
// unbroken client stream.
func TestPostcopyRecoversFromLinkBreak(t *testing.T) {
	postcopyThroughBreaks(t, "pc", "198.19.0.53", 1, "12")
}

// TestPostcopyRecoversFromTwoLinkBreaks: QEMU 10 recovers a post-copy
// more than once — the link breaks, recovery resumes the transfer, the link
// breaks again, and the migration still completes with every counter.
func TestPostcopyRecoversFromTwoLinkBreaks(t *testing.T) {
	postcopyThroughBreaks(t, "pc2", "198.19.0.54", 2, "6")
}

// TestPostcopyRecoversFromTwoShortFlaps: the link emulator takes h2's link
// down for 2 s twice during a post-copy (stall timeout 1 s): each time the
// engine pauses the post-copy, recovers it once the link is back, and the
// migration completes with the same boot and no counter lost.
func TestPostcopyRecoversFromTwoShortFlaps(t *testing.T) {
	postcopyThroughCuts(t, "pcf", "198.19.0.73", 2, "6", postcopyCut{emulator: true, hold: 2 * time.Second, stall: "1s"})
}

// postcopyThroughBreaks cuts the destination's link `breaks` times while
// the guest runs there in post-copy (each cut after the previous recovery)
// and asserts the migration pauses, recovers each time and completes with
// the same boot and an unbroken client stream.
func postcopyThroughBreaks(t *testing.T, name, ip string, breaks int, bandwidth string) {
	postcopyThroughCuts(t, name, ip, breaks, bandwidth, postcopyCut{hold: 6 * time.Second, stall: "2s"})
}

// postcopyCut is how a post-copy test breaks h2's link: through the link
// emulator (emulator: --down/--up) or by setting h2's uplink down; for
// hold, with the given --stall-timeout.
type postcopyCut struct {
	emulator bool
	hold     time.Duration
	stall    string
}

// postcopyThroughCuts is postcopyThroughBreaks with the way of breaking
// the link given: it also asserts that each break was recovered (a
// post-copy-active entered after each pause) and that the migration paused
// once per break.
func postcopyThroughCuts(t *testing.T, name, ip string, breaks int, bandwidth string, cut postcopyCut) {
	c := upCluster(t, 2)
	boot := c.bootGuest(name, ip, "64:16")
	stream := c.watchStream(ip)
	defer stream.stop()
	ns := c.hostNS("h2")
	setLink := func(_ string, up bool) error {
		if !cut.emulator {
			return setLink(ns, up)
		}
		flag := "--down"
		if up {
			flag = "--up"
		}
		_, errOut, err := c.ferry("dev", "cluster", "link", "h2", "--dir", c.dir, flag)
		if err != nil {
			return fmt.Errorf("ferry dev cluster link h2 %s: %v: %s", flag, err, errOut)
		}
		return nil
	}
	if cut.emulator {
		c.mustFerry("dev", "cluster", "link", "h2", "--dir", c.dir, "--up")
		t.Cleanup(func() { _, _, _ = c.ferry("dev", "cluster", "link", "h2", "--dir", c.dir, "--clear") })
	}
	t.Cleanup(func() { _ = setLink(ns, true) })

	m := c.startMigration(name, "h2", "--strategy", "postcopy", "--bandwidth", bandwidth, "--stall-timeout", cut.stall)
	for i := 1; i <= breaks; i++ {
		// Wait until the guest runs on h2 in post-copy (state postcopy-active:
		// the destination runs, the source still holds the pages it has not
		// sent) — after a break, until recovery brought it back: the engine
		// may see a short break only after the link is back (QEMU's socket
		// buffers take data for a while), and a second break cut before it
		// paused would only lengthen the first.
		c.waitMigration(m.Id, 90*time.Second, "running on the destination in post-copy", func(m *ferryv1.Migration) bool {
			_, recovered := postcopyPauses(m)
			return (m.State == "postcopy-active" && recovered >= i-1) || m.Status != "running"
		})
		if err := setLink(ns, false); err != nil {
			t.Fatal(err)
		}
		t.Logf("break %d: link of h2 cut in post-copy for %s", i, cut.hold)
		time.Sleep(cut.hold)
		mid, _ := c.getMigration(m.Id)
		if err := setLink(ns, true); err != nil {
			t.Fatal(err)
		}
		t.Logf("break %d: link restored; migration state %s status %s", i, mid.GetState(), mid.GetStatus())
		if mid.GetStatus() != "running" {
			t.Fatalf("break %d: the migration ended during the break: %s %s", i, mid.GetStatus(), mid.GetError())
		}
	}
	final, _ := c.waitFinal(m.Id, 120*time.Second)
	logReport(t, "post-copy with a broken link", final, 0)
	if final.Status != "completed" {
		t.Fatalf("post-copy did not complete after the link returned: %s %s", final.Status, final.Error)
	}
	if final.PostcopyPausedMs <= 0 {
		t.Errorf("the report shows no post-copy pause (postcopyPausedMs %d)", final.PostcopyPausedMs)
	}
	// The guest was fine: a first check within the break saw no sign of
	// life, the one after the post-copy completed did.
	if len(final.Warnings) > 0 || final.GuestAliveAfterMs <= 0 {
		t.Errorf("a guest that came through the breaks is reported with warnings %q, guestAliveAfterMs %d", final.Warnings, final.GuestAliveAfterMs)
	}
	for _, e := range final.Events {
		t.Logf("event %s %s: %s", e.GetAt().AsTime().Format("15:04:05.000"), e.State, e.Message)
	}
	pauses, recoveries := postcopyPauses(final)
	if pauses < breaks {
		t.Errorf("%d post-copy pause(s) in the migration's history for %d break(s)", pauses, breaks)
	}
	if recoveries < breaks {
		t.Errorf("%d recoveries (postcopy-paused → postcopy-active) for %d break(s)", recoveries, breaks)
	}
	c.checkOnHost(name, "h2")
	if got := c.bootID(ip, 20*time.Second); got != boot {
		t.Errorf("boot_id changed: %s -> %s", boot, got)
	}
	if !stream.flowing(5 * time.Second) {
		t.Fatalf("the client stream did not resume after recovery; guest console: %s", c.guestCrash(name))
	}
	time.Sleep(500 * time.Millisecond)
	stream.stop()
	stream.mu.Lock()
	defer stream.mu.Unlock()
	t.Logf("stream: %d lines, longest gap %s, pauses %d, problems %v", stream.lines, stream.maxGap, pauses, first(stream.anomalies, 5))
	if stream.readErr != nil {
		t.Errorf("the client's TCP connection broke: %v", stream.readErr)
	}
	if len(stream.anomalies) > 0 {
		t.Errorf("the stream lost or repeated counters: %v", first(stream.anomalies, 5))
	}
}

// TestHybridSwitchesToPostcopy: with throttling forbidden and pre-copy not
// converging over a capped link, the adaptive controller switches to
// post-copy, logs why, and the migration finishes with the same boot.
func TestHybridSwitchesToPostcopy(t *testing.T) {
	c := upCluster(t, 2)
	const name, ip = "hyb", "198.19.0.55"
	boot := c.bootGuest(name, ip, "64:24")
	m, wall := c.mustMigrateWait(name, "h2", "--strategy", "hybrid", "--no-throttle", "--bandwidth", "16")
	logReport(t, "hybrid", m, wall)
	if m.Status != "completed" {
		t.Fatalf("hybrid: status %s: %s", m.Status, m.Error)
	}
	switched := false
	for _, d := range m.Decisions {
		t.Logf("decision +%d ms %s: %s", d.TMs, d.Action, d.Reason)
		if d.Action == "start-postcopy" && d.Reason != "" {
			switched = true
		}
	}
	if !switched || m.PostcopyMs <= 0 {
		t.Errorf("hybrid did not switch to post-copy (decisions %v, postcopyMs %d)", m.Decisions, m.PostcopyMs)
	}
	if got := c.bootID(ip, 10*time.Second); got != boot {
		t.Errorf("boot_id changed: %s -> %s", boot, got)
	}
}

// postcopyPauses counts the post-copy pauses in m's history and the
// recoveries among them (a pause ended by postcopy-active).
func postcopyPauses(m *ferryv1.Migration) (pauses, recoveries int) {
	paused := false
	for _, e := range m.Events {
		switch e.State {
		case "postcopy-paused":
			if !paused {
				pauses++
			}
			paused = true
		case "postcopy-active":
			if paused {
				recoveries++
			}
			paused = false
		}
	}
	return pauses, recoveries
}
