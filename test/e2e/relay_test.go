package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"testing"
	"time"
)

// TestRelayedStreamInteroperatesWithQEMUTLS: h1's agent relays its
// encrypted streams (--stream-relay: QEMU in plaintext to a local socket,
// the agent on TLS), h2's lets QEMU speak TLS itself. A live migration
// h1→h2 (relay to QEMU's TLS listener) and back h2→h1 (QEMU's TLS client
// to the relay) both complete with the same boot and an unbroken client
// stream, and the agents' logs show which end relayed and what it
// carried — the wire is the same TLS with the same certificate checks.
func TestRelayedStreamInteroperatesWithQEMUTLS(t *testing.T) {
	c := upClusterEnv(t, 2, []string{"FERRY_STREAM_RELAY=1"})
	h2 := c.process("agent", "h2")
	c.killProcess(h2, "h2 agent")
	c.startProcessEnv(h2, "h2 agent", "FERRY_STREAM_RELAY=0")

	const name, ip = "relay", "198.19.0.79"
	boot := c.bootGuest(name, ip, "64:16")
	stream := c.watchStream(ip)
	defer stream.stop()
	for i, to := range []string{"h2", "h1"} {
		m, wall := c.mustMigrateWait(name, to)
		logReport(t, fmt.Sprintf("leg %d", i+1), m, wall)
		if m.Status != "completed" {
			t.Fatalf("leg %d to %s: %s %s", i+1, to, m.Status, m.Error)
		}
		if m.Transport != "tls" {
			t.Errorf("leg %d: transport %q, want tls", i+1, m.Transport)
		}
		if !stream.flowing(2 * time.Second) {
			t.Fatalf("leg %d: the client stream did not resume; console: %s", i+1, c.guestCrash(name))
		}
		c.checkOnHost(name, to)
	}
	if got := c.bootID(ip, 20*time.Second); got != boot {
		t.Errorf("boot_id changed: %s -> %s", boot, got)
	}
	stream.stop()
	stream.mu.Lock()
	if stream.readErr != nil || len(stream.anomalies) > 0 {
		t.Errorf("client stream: error %v, anomalies %v", stream.readErr, first(stream.anomalies, 5))
	}
	stream.mu.Unlock()

	h1log := readLog(t, filepath.Join(c.dir, "logs", "h1-agent.log"))
	h2log := readLog(t, filepath.Join(c.dir, "logs", "h2-agent.log"))
	for _, want := range []struct {
		log, what string
		re        *regexp.Regexp
	}{
		{h1log, "h1 sent through its relay", regexp.MustCompile(`msg="outgoing migration started".*transport=tls-relay`)},
		{h1log, "h1 received through its relay", regexp.MustCompile(`msg="incoming migration listening".*transport=tls-relay`)},
		{h2log, "h2's QEMU received on its own TLS", regexp.MustCompile(`msg="incoming migration listening".*transport=tls\b`)},
		{h2log, "h2's QEMU sent on its own TLS", regexp.MustCompile(`msg="outgoing migration started".*transport=tls\b`)},
	} {
		if !want.re.MatchString(want.log) {
			t.Errorf("%s: no log line matching %s", want.what, want.re)
		}
	}
	// Each of h1's relays carried the guest's RAM (over 64 MiB each way).
	done := regexp.MustCompile(`msg="stream relay done".*stats="(\d+) channel\(s\), (\d+) bytes sent, (\d+) received"`).FindAllStringSubmatch(h1log, -1)
	if len(done) < 2 {
		t.Fatalf("h1's log has %d 'stream relay done' lines, want 2 (one per leg)", len(done))
	}
	for i, d := range done[:2] {
		ch, _ := strconv.ParseInt(d[1], 10, 64)
		sent, _ := strconv.ParseInt(d[2], 10, 64)
		recv, _ := strconv.ParseInt(d[3], 10, 64)
		t.Logf("relay %d: %d channel(s), %d bytes sent, %d received", i+1, ch, sent, recv)
		if ch < 1 || max(sent, recv) < 64<<20 {
			t.Errorf("relay %d carried %d channel(s) and %d/%d bytes: not the guest's RAM", i+1, ch, sent, recv)
		}
	}
}

func readLog(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}
