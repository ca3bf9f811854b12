package e2e

import (
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ferryvm/ferry/internal/rpcaddr"
)

// TestMetricsEventsAndPlotAfterMigration: after a live pre-copy migration
// on a real cluster, the server's /metrics (refused without a credential,
// scraped with a viewer token) counts it (started, completed)
// with a downtime histogram sample, `ferry events --vm` lists the VM's and
// the migration's state changes in order, and `ferry migration plot`
// writes its SVG with the switchover marked.
func TestMetricsEventsAndPlotAfterMigration(t *testing.T) {
	c := upCluster(t, 2)
	const name, ip = "observe", "198.19.0.91"
	c.bootGuest(name, ip, "")
	m, wall := c.mustMigrateWait(name, "h2", "--strategy", "precopy")
	logReport(t, "observed migration", m, wall)
	if m.Status != "completed" {
		t.Fatalf("migration %s: %s, want completed", m.Id, m.Status)
	}

	// Prometheus's view: the cluster CA pinned, and a viewer token or
	// nothing.
	url := c.c.ServerURL()
	admin, err := rpcaddr.ReadEntry(c.c.AdminCredentials())
	if err != nil {
		t.Fatal(err)
	}
	scrape := func(token string) (int, string) {
		t.Helper()
		creds, err := rpcaddr.Entry{CA: admin.CA, Token: token}.Credentials()
		if err != nil {
			t.Fatal(err)
		}
		hc, base := rpcaddr.ClientWith(url, creds)
		hc.Timeout = 10 * time.Second
		resp, err := hc.Get(base + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if code, body := scrape(""); code != http.StatusUnauthorized || !strings.Contains(body, "unauthenticated") {
		t.Errorf("/metrics without a token: %d %q, want 401 unauthenticated", code, body)
	}
	viewer := strings.TrimSpace(c.mustFerry("token", "create", "--role", "viewer"))
	code, body := scrape(viewer)
	if code != http.StatusOK {
		t.Fatalf("/metrics with a viewer token: %d %q", code, body)
	}
	for _, want := range []string{
		`ferry_migrations_started_total{strategy="precopy"} 1`,
		`ferry_migrations_completed_total{strategy="precopy"} 1`,
		`ferry_migration_downtime_seconds_count{strategy="precopy"} 1`,
		`ferry_leader 1`,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}

	var out string
	deadline := time.Now().Add(15 * time.Second)
	for time.Now().Before(deadline) {
		out = c.mustFerry("events", "--vm", name)
		if strings.Contains(out, "migrating -> running") {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Logf("ferry events --vm %s:\n%s", name, out)
	idx := func(s string) int { return strings.Index(out, s) }
	// The migration's lines end in its route ("precopy h1 -> h2"); the VM's
	// creation is "- -> pending" too.
	pending, completed := idx("- -> pending  precopy"), idx("-> completed  precopy")
	locked, running := idx("running -> migrating"), idx("migrating -> running")
	// The VM runs on h2 before the engine's cleanup completes the
	// migration: both come after the lock and the migration's start.
	if pending < 0 || completed < 0 || locked < 0 || running < 0 || !(locked < pending && pending < completed && pending < running) {
		t.Errorf("events of %s not the migration's changes in order (lock, pending ..., running on h2, completed)", name)
	}
	if !strings.Contains(out, "h1 to h2") {
		t.Errorf("no event says %s moved from h1 to h2", name)
	}

	svg := filepath.Join(t.TempDir(), "migration.svg")
	c.mustFerry("migration", "plot", m.Id, "-o", svg)
	b, err := os.ReadFile(svg)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(b), ">switchover<") || strings.Count(string(b), "<polyline") != 2 {
		t.Errorf("plot of %s lacks the switchover marker or its two lines (%d bytes)", m.Id, len(b))
	}
}
