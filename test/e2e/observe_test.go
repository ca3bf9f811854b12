package e2e

import (
	"bufio"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ferryvm/ferry/internal/rpcaddr"
)

// TestMetricsEventsAndPlotAfterMigration: after a live pre-copy migration
// on a real cluster, the server's /metrics (refused without a credential,
// scraped with a viewer token) counts it (started, completed)
// with a downtime histogram sample, `ferry events --vm` lists the VM's and
// the migration's state changes in order, `ferry events --vm --follow`
// (started before the migration) prints them as they happen, and
// `ferry migration plot`
// writes its SVG with the switchover marked.
func TestMetricsEventsAndPlotAfterMigration(t *testing.T) {
	c := upCluster(t, 2)
	const name, ip = "observe", "198.19.0.91"
	c.bootGuest(name, ip, "")
	follow := c.followEvents(name)
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

	// --follow, started before the migration, printed its changes as they
	// happened: the completion arrives while the follower runs, after the
	// lines it listed at its start.
	got := follow.waitFor(`-> completed  precopy`, 15*time.Second)
	if got.line == "" {
		t.Errorf("ferry events --vm %s --follow printed no completion within 15 s of it; it printed:\n%s", name, follow.text())
	} else if got.at.Before(follow.started) || got.n <= follow.listed() {
		t.Errorf("--follow: the completion (line %d at %s) was not printed as it happened (listed %d at the start)", got.n, got.at, follow.listed())
	} else if lag := got.at.Sub(m.GetFinishedAt().AsTime()); lag < -time.Second || lag > 5*time.Second {
		t.Errorf("--follow printed the completion %s after the migration finished, want within 5 s", lag)
	} else {
		t.Logf("ferry events --follow printed %q %s after the migration finished (line %d; %d listed at its start)", got.line, lag.Round(time.Millisecond), got.n, follow.listed())
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

// follower is a running `ferry events --vm NAME --follow`: its lines with
// the time each arrived.
type follower struct {
	started time.Time
	mu      sync.Mutex
	lines   []followLine
	// listedN is how many lines it printed within its first second (the
	// events kept before it started).
	listedN int
}

type followLine struct {
	line string
	at   time.Time
	n    int // 1-based
}

// followEvents starts `ferry events --vm vm --follow`; t.Cleanup stops it
// (by its PID).
func (c *cluster) followEvents(vm string) *follower {
	c.t.Helper()
	bin := ferryBin
	if c.bin != "" {
		bin = c.bin
	}
	cmd := exec.Command(bin, "events", "--vm", vm, "--follow")
	cmd.Env = append(os.Environ(), "FERRY_SERVER="+c.server)
	out, err := cmd.StdoutPipe()
	if err != nil {
		c.t.Fatal(err)
	}
	f := &follower{started: time.Now()}
	if err := cmd.Start(); err != nil {
		c.t.Fatal(err)
	}
	done := make(chan struct{})
	c.t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-done
		_ = cmd.Wait()
	})
	go func() {
		defer close(done)
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			f.mu.Lock()
			f.lines = append(f.lines, followLine{line: sc.Text(), at: time.Now(), n: len(f.lines) + 1})
			f.mu.Unlock()
		}
	}()
	time.Sleep(time.Second) // it lists the kept events first
	f.mu.Lock()
	f.listedN = len(f.lines)
	f.mu.Unlock()
	return f
}

func (f *follower) listed() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.listedN
}

// waitFor returns the first line containing s, waiting up to d.
func (f *follower) waitFor(s string, d time.Duration) followLine {
	deadline := time.Now().Add(d)
	for {
		f.mu.Lock()
		for _, l := range f.lines {
			if strings.Contains(l.line, s) {
				f.mu.Unlock()
				return l
			}
		}
		f.mu.Unlock()
		if time.Now().After(deadline) {
			return followLine{}
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func (f *follower) text() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	var b strings.Builder
	for _, l := range f.lines {
		b.WriteString(l.line + "\n")
	}
	return b.String()
}
