package e2e

import (
	"strings"
	"testing"
	"time"

	ferryv1 "github.com/ferryvm/ferry/gen/ferry/v1"
)

// TestPrecopySurvivesTwoLinkFlaps takes h2's link down for 2 s twice while
// a pre-copy sends RAM to it (the link emulator shapes it to 8 MiB/s so that
// the transfer outlasts both downs), with the default stall timeout: TCP
// retransmits across each down and the attempt goes on. The migration
// completes on h2 with the same boot and an unbroken client stream, and
// both downs happened while RAM was on its way.
func TestPrecopySurvivesTwoLinkFlaps(t *testing.T) {
	final := precopyThroughFlaps(t, "flap", "198.19.0.71")
	if final.GetAttempt() != 1 || len(final.GetRetries()) != 0 {
		t.Logf("note: the default stall timeout did fire (attempt %d, retries %v)", final.GetAttempt(), final.GetRetries())
	}
}

// TestPrecopyRetriesAfterLinkFlaps: the same two 2 s downs with a 1 s
// stall timeout: each down fails the attempt it hits; the engine cleans it
// up (the guest never pauses) and retries after the backoff, and the third
// attempt completes, with the same boot, the stream unbroken, and the two
// retries and their reasons in the report.
func TestPrecopyRetriesAfterLinkFlaps(t *testing.T) {
	final := precopyThroughFlaps(t, "retry", "198.19.0.72", "--stall-timeout", "1s", "--max-attempts", "3", "--retry-backoff", "2s")
	if final.GetAttempt() != 3 || len(final.GetRetries()) != 2 {
		t.Fatalf("attempt %d with retries %v, want the third attempt after two retries", final.GetAttempt(), final.GetRetries())
	}
	waits := 0
	for _, e := range final.Events {
		if e.State == "retry-wait" {
			waits++
		}
	}
	if waits != 2 {
		t.Errorf("%d retry-wait events, want 2", waits)
	}
	for _, r := range final.GetRetries() {
		if !strings.Contains(r.GetReason(), "no progress") && !strings.Contains(r.GetReason(), "unreachable") && !strings.Contains(r.GetReason(), "failed") {
			t.Errorf("retry of attempt %d: reason %q is not a link failure", r.GetAttempt(), r.GetReason())
		}
	}
}

// precopyThroughFlaps migrates a guest h1→h2 over h2's emulated 8 MiB/s
// link, takes the link down for 2 s twice during the transfer (each time
// once the current attempt sends RAM), and checks the migration completed
// with the same boot, the client stream unbroken, and both downs before the
// switchover. It returns the final report.
func precopyThroughFlaps(t *testing.T, name, ip string, args ...string) *ferryv1.Migration {
	c := upCluster(t, 2)
	boot := c.bootGuest(name, ip, "48:1")
	c.mustFerry("dev", "cluster", "link", "h2", "--dir", c.dir, "--rate", "8MiB")
	t.Cleanup(func() { _, _, _ = c.ferry("dev", "cluster", "link", "h2", "--dir", c.dir, "--clear") })
	stream := c.watchStream(ip)
	defer stream.stop()

	m := c.startMigration(name, "h2", append([]string{"--strategy", "precopy"}, args...)...)
	start := time.Now()
	var downs []time.Time
	for i := 1; i <= 2; i++ {
		cur := c.waitMigration(m.Id, 60*time.Second, "transferring", func(m *ferryv1.Migration) bool {
			return m.State == "transferring" || m.Status != "running"
		})
		if cur.Status != "running" {
			t.Fatalf("down %d: the migration ended before it: %s %s", i, cur.Status, cur.Error)
		}
		time.Sleep(time.Second) // RAM flows in this attempt
		before, _ := c.getMigration(m.Id)
		if before.GetState() != "transferring" {
			t.Fatalf("down %d: state %s: the transfer is too short for the flap", i, before.GetState())
		}
		c.mustFerry("dev", "cluster", "link", "h2", "--dir", c.dir, "--down")
		downs = append(downs, time.Now())
		t.Logf("down %d at %s: h2's link down (attempt %d, state %s, %d bytes sent)", i, time.Since(start).Round(time.Millisecond),
			before.GetAttempt(), before.GetState(), before.GetTransferredBytes())
		time.Sleep(2 * time.Second)
		c.mustFerry("dev", "cluster", "link", "h2", "--dir", c.dir, "--up")
		mid, _ := c.getMigration(m.Id)
		t.Logf("down %d: link up after 2 s; attempt %d state %s status %s, %d bytes sent", i, mid.GetAttempt(), mid.GetState(),
			mid.GetStatus(), mid.GetTransferredBytes())
		if mid.GetStatus() != "running" {
			t.Fatalf("down %d: the migration ended during the flap: %s %s", i, mid.GetStatus(), mid.GetError())
		}
		if mid.GetAttempt() == before.GetAttempt() && mid.GetState() == "transferring" {
			time.Sleep(2 * time.Second) // the same attempt goes on: let it send more before the next down
		}
	}
	final, _ := c.waitFinal(m.Id, 180*time.Second)
	logReport(t, "pre-copy through two link flaps", final, 0)
	for _, e := range final.Events {
		t.Logf("event %s %s: %s", e.GetAt().AsTime().Format("15:04:05.000"), e.State, e.Message)
	}
	for _, r := range final.GetRetries() {
		t.Logf("retry: attempt %d failed at %s: %s (backoff %d ms)", r.GetAttempt(), r.GetFailedAt().AsTime().Format("15:04:05.000"),
			r.GetReason(), r.GetBackoffMs())
	}
	t.Logf("attempts used: %d; total %d ms", final.GetAttempt(), final.GetTotalMs())
	if final.Status != "completed" {
		t.Fatalf("pre-copy did not complete after two flaps: %s %s", final.Status, final.Error)
	}
	var switched time.Time
	for _, e := range final.Events {
		if e.State == "switchover" {
			switched = e.GetAt().AsTime()
		}
	}
	if switched.IsZero() || !downs[1].Add(2*time.Second).Before(switched) {
		t.Errorf("the switchover (%v) did not come after the second down ended (%v)", switched, downs[1].Add(2*time.Second))
	}
	c.checkOnHost(name, "h2")
	if got := c.bootID(ip, 20*time.Second); got != boot {
		t.Errorf("boot_id changed: %s -> %s", boot, got)
	}
	if !stream.flowing(5 * time.Second) {
		t.Fatalf("the client stream stopped; guest console: %s", c.guestCrash(name))
	}
	stream.stop()
	stream.mu.Lock()
	defer stream.mu.Unlock()
	t.Logf("stream: %d lines, longest gap %s; gaps over 100 ms: %v", stream.lines, stream.maxGap, first(stream.bigGaps, 10))
	// The guest pauses only at the switchover; a pause during a down or a
	// cleanup would show as a gap of seconds ending before it. The
	// switchover's own pause (the report's downtime, which a slow link can
	// stretch past a second) ends after the switchover event.
	for _, g := range stream.gaps {
		switch {
		case g.end.Before(switched) && g.d > time.Second:
			t.Errorf("the guest's stream stopped for %s before the switchover (ended %s): the guest noticed the flaps",
				g.d.Round(time.Millisecond), g.end.Format("15:04:05.000"))
		case !g.end.Before(switched) && g.d > 3*time.Second:
			t.Errorf("the switchover paused the guest's stream for %s (report: downtime %d ms)", g.d.Round(time.Millisecond), final.GetDowntimeMs())
		}
	}
	if stream.readErr != nil {
		t.Errorf("the client's TCP connection broke: %v", stream.readErr)
	}
	if len(stream.anomalies) > 0 {
		t.Errorf("the stream lost or repeated counters: %v", first(stream.anomalies, 5))
	}
	return final
}
