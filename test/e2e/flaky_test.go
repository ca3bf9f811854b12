package e2e

import (
	"testing"
	"time"

	ferryv1 "github.com/ferryvm/ferry/gen/ferry/v1"
	"github.com/ferryvm/ferry/internal/netnsutil"
)

// TestPrecopySurvivesTwoLinkFlaps takes h2's link down for 2 s twice while
// a pre-copy sends RAM to it (the link emulator shapes it to 8 MiB/s so that
// the transfer outlasts both downs): the migration completes on h2, with the
// same boot and an unbroken client stream, and both downs happened while RAM
// was on its way.
func TestPrecopySurvivesTwoLinkFlaps(t *testing.T) {
	c := upCluster(t, 2)
	const name, ip = "flap", "198.19.0.71"
	boot := c.bootGuest(name, ip, "48:1")
	c.mustFerry("dev", "cluster", "link", "h2", "--dir", c.dir, "--rate", "8MiB")
	t.Cleanup(func() { _, _, _ = c.ferry("dev", "cluster", "link", "h2", "--dir", c.dir, "--clear") })
	stream := c.watchStream(ip)
	defer stream.stop()

	m := c.startMigration(name, "h2", "--strategy", "precopy")
	done := make(chan struct{})
	defer close(done)
	go func() {
		last := ""
		for {
			select {
			case <-done:
				return
			case <-time.After(250 * time.Millisecond):
			}
			mm, err := c.getMigration(m.Id)
			if err != nil {
				continue
			}
			s := mm.GetState() + "/" + mm.GetStatus()
			if s != last {
				t.Logf("trace: %s %d bytes", s, mm.GetTransferredBytes())
				last = s
			}
		}
	}()
	c.waitTransferring(m.Id)
	var downs []time.Time
	for i := 1; i <= 2; i++ {
		before, _ := c.getMigration(m.Id)
		c.mustFerry("dev", "cluster", "link", "h2", "--dir", c.dir, "--down")
		downs = append(downs, time.Now())
		t.Logf("down %d: h2's link down (state %s, %d bytes sent)", i, before.GetState(), before.GetTransferredBytes())
		time.Sleep(2 * time.Second)
		c.mustFerry("dev", "cluster", "link", "h2", "--dir", c.dir, "--up")
		mid, _ := c.getMigration(m.Id)
		t.Logf("down %d: link up after 2 s; state %s status %s, %d bytes sent", i, mid.GetState(), mid.GetStatus(),
			mid.GetTransferredBytes())
		if mid.GetStatus() != "running" {
			t.Fatalf("down %d: the migration ended during the flap: %s %s", i, mid.GetStatus(), mid.GetError())
		}
		if mid.GetState() != "transferring" && mid.GetState() != "retry-wait" && mid.GetState() != "preparing" {
			t.Fatalf("down %d: state %s: the link went down outside the transfer (make the transfer longer)", i, mid.GetState())
		}
		time.Sleep(3 * time.Second)
	}
	final, _ := c.waitFinal(m.Id, 180*time.Second)
	logReport(t, "pre-copy through two link flaps", final, 0)
	for _, e := range final.Events {
		t.Logf("event %s %s: %s", e.GetAt().AsTime().Format("15:04:05.000"), e.State, e.Message)
	}
	if final.Status != "completed" {
		t.Fatalf("pre-copy did not complete after two flaps: %s %s", final.Status, final.Error)
	}
	// Both downs happened before the switchover (while RAM was sent).
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
	t.Logf("stream: %d lines, longest gap %s", stream.lines, stream.maxGap)
	if stream.readErr != nil {
		t.Errorf("the client's TCP connection broke: %v", stream.readErr)
	}
	if len(stream.anomalies) > 0 {
		t.Errorf("the stream lost or repeated counters: %v", first(stream.anomalies, 5))
	}
	_ = netnsutil.DialContext
	_ = ferryv1.Migration{}
}
