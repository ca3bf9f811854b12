package e2e

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ferryvm/ferry/internal/dashboard"
	"github.com/ferryvm/ferry/internal/rpcaddr"
)

// dashClient is what the dashboard page does, over real HTTP to the real
// server: the cluster CA pinned and a bearer token (or none).
type dashClient struct {
	t    *testing.T
	hc   *http.Client
	base string
}

func newDashClient(t *testing.T, c *cluster, token string) *dashClient {
	t.Helper()
	admin, err := rpcaddr.ReadEntry(c.c.AdminCredentials())
	if err != nil {
		t.Fatal(err)
	}
	creds, err := rpcaddr.Entry{CA: admin.CA, Token: token}.Credentials()
	if err != nil {
		t.Fatal(err)
	}
	hc, base := rpcaddr.ClientWith(c.c.ServerURL(), creds)
	return &dashClient{t: t, hc: hc, base: base}
}

func (d *dashClient) get(path string) (int, string) {
	d.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, d.base+path, nil)
	resp, err := d.hc.Do(req)
	if err != nil {
		d.t.Fatalf("GET %s: %v", path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// rpc calls an API method as the page's script does: Connect's JSON
// encoding over a plain POST.
func (d *dashClient) rpc(method string, body any, out any) (int, string) {
	d.t.Helper()
	b, _ := json.Marshal(body)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, d.base+"/"+method, bytes.NewReader(b))
	req.Header.Set("Content-Type", "application/json")
	resp, err := d.hc.Do(req)
	if err != nil {
		d.t.Fatalf("POST %s: %v", method, err)
	}
	defer resp.Body.Close()
	rb, _ := io.ReadAll(resp.Body)
	if resp.StatusCode == http.StatusOK && out != nil {
		if err := json.Unmarshal(rb, out); err != nil {
			d.t.Fatalf("%s: %v in %s", method, err, rb)
		}
	}
	return resp.StatusCode, string(rb)
}

// stream reads /ui/api/stream's snapshots into ch until ctx ends.
func (d *dashClient) stream(ctx context.Context, ch chan<- dashboard.Snapshot) error {
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, d.base+"/ui/api/stream", nil)
	resp, err := d.hc.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		d.t.Errorf("stream: %d %s", resp.StatusCode, b)
		return nil
	}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(nil, 8<<20)
	event := ""
	for sc.Scan() {
		line := sc.Text()
		switch {
		case strings.HasPrefix(line, "event: "):
			event = strings.TrimPrefix(line, "event: ")
		case strings.HasPrefix(line, "data: ") && event == "snapshot":
			var s dashboard.Snapshot
			if err := json.Unmarshal([]byte(strings.TrimPrefix(line, "data: ")), &s); err != nil {
				d.t.Errorf("stream snapshot: %v", err)
				return nil
			}
			select {
			case ch <- s:
			case <-ctx.Done():
				return nil
			}
		case strings.HasPrefix(line, "data: "):
			d.t.Logf("stream %s: %s", event, line)
		}
	}
	return sc.Err()
}

// TestDashboardShowsLiveMigration: on a real cluster, the dashboard's page
// and assets are served without a token and its data only with one; a
// migration started as the page starts it (a dry run, then Migrate, with
// an operator token; a viewer's is refused) appears in the live stream
// with its progress advancing, then among the finished migrations with its
// downtime and its parts, the VM on its new host, the migration's events,
// and its plot as SVG. The snapshots are kept as a test artifact.
func TestDashboardShowsLiveMigration(t *testing.T) {
	c := upCluster(t, 2)
	const name, ip = "dash", "198.19.0.92"
	c.bootGuest(name, ip, "")
	anon := newDashClient(t, c, "")
	if code, body := anon.get("/ui/"); code != 200 || !strings.Contains(body, "assets/app.js") {
		t.Fatalf("/ui/ without a token: %d, want the page", code)
	}
	if code, body := anon.get("/ui/assets/app.js"); code != 200 || !strings.Contains(body, "/ui/api/stream") {
		t.Errorf("/ui/assets/app.js: %d", code)
	}
	if code, body := anon.get("/ui/api/snapshot"); code != http.StatusUnauthorized || !strings.Contains(body, "unauthenticated") {
		t.Errorf("/ui/api/snapshot without a token: %d %q, want 401", code, body)
	}

	viewer := newDashClient(t, c, strings.TrimSpace(c.mustFerry("token", "create", "--role", "viewer")))
	op := newDashClient(t, c, strings.TrimSpace(c.mustFerry("token", "create", "--role", "operator")))
	var first dashboard.Snapshot
	code, body := viewer.get("/ui/api/snapshot")
	if code != 200 || json.Unmarshal([]byte(body), &first) != nil {
		t.Fatalf("/ui/api/snapshot as viewer: %d %s", code, body)
	}
	if len(first.Hosts) != 2 || first.Hosts[0].State != "ready" || first.Hosts[0].CPUs == 0 || len(first.VMs) != 1 || first.VMs[0].Host != "h1" || first.VMs[0].State != "running" {
		t.Errorf("first snapshot: hosts %+v, VMs %+v", first.Hosts, first.VMs)
	}
	if len(first.Hosts) == 0 {
		t.Fatalf("first snapshot: no hosts")
	}
	if h := first.Hosts[0]; h.Health != "healthy" || h.Maintenance || first.Evacuations == nil || len(first.Evacuations) != 0 {
		t.Errorf("first snapshot: host %+v, evacuations %v; want a healthy host, none in maintenance", h, first.Evacuations)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	snaps := make(chan dashboard.Snapshot, 16)
	streamDone := make(chan error, 1)
	go func() { streamDone <- viewer.stream(ctx, snaps) }()
	defer func() {
		cancel()
		<-streamDone
	}()

	// As the page's Migrate button: a dry run first (nothing starts),
	// then the migration; the stream capped so that it lasts seconds.
	req := map[string]any{"vm": name, "to": "h2", "options": map[string]any{"strategy": "precopy", "bandwidthMibps": 8}}
	var dry struct {
		Migration *struct{ ID string } `json:"migration"`
		Plan      struct {
			Choice      string `json:"choice"`
			Predictions []struct {
				Strategy string `json:"strategy"`
			} `json:"predictions"`
		} `json:"plan"`
	}
	if code, body := viewer.rpc("ferry.v1.MigrationService/Migrate", req, nil); code != http.StatusForbidden || !strings.Contains(body, "permission_denied") {
		t.Errorf("Migrate as viewer: %d %s, want 403 permission_denied", code, body)
	}
	// The page's fleet controls are the operator's too, the dry run included.
	for method, body := range map[string]map[string]any{
		"FleetService/EnterMaintenance": {"host": "h2", "dryRun": true}, "FleetService/ExitMaintenance": {"host": "h2"},
		"FleetService/CancelEvacuation": {"host": "h2"}, "FleetService/Balance": {"dryRun": true},
	} {
		if code, resp := viewer.rpc("ferry.v1."+method, body, nil); code != http.StatusForbidden || !strings.Contains(resp, "permission_denied") {
			t.Errorf("%s as viewer: %d %s, want 403 permission_denied", method, code, resp)
		}
	}
	var recs map[string]any
	if code, body := viewer.rpc("ferry.v1.FleetService/ListRecommendations", map[string]any{}, &recs); code != 200 {
		t.Errorf("ListRecommendations as viewer: %d %s, want the balancer's plan", code, body)
	}
	dryReq := map[string]any{"dryRun": true}
	for k, v := range req {
		dryReq[k] = v
	}
	if code, body := op.rpc("ferry.v1.MigrationService/Migrate", dryReq, &dry); code != 200 || dry.Migration != nil || dry.Plan.Choice == "" || len(dry.Plan.Predictions) == 0 {
		t.Fatalf("dry run: %d %s", code, body)
	}
	var started struct {
		Migration struct {
			ID string `json:"id"`
		} `json:"migration"`
	}
	if code, body := op.rpc("ferry.v1.MigrationService/Migrate", req, &started); code != 200 || started.Migration.ID == "" {
		t.Fatalf("Migrate as operator: %d %s", code, body)
	}
	id := started.Migration.ID
	t.Logf("started %s from the dashboard's path (dry run chose %s)", id, dry.Plan.Choice)

	var kept []dashboard.Snapshot
	var progress []float64
	var done *dashboard.Migration
	var last dashboard.Snapshot
	for done == nil {
		select {
		case s := <-snaps:
			last = s
			for _, m := range s.Live {
				if m.ID == id {
					if n := len(progress); n == 0 || m.Progress != progress[n-1] {
						progress = append(progress, m.Progress)
						kept = append(kept, s)
					}
				}
			}
			for i, m := range s.Finished {
				if m.ID == id {
					done = &s.Finished[i]
					kept = append(kept, s)
				}
			}
		case err := <-streamDone:
			t.Fatalf("the stream ended before %s finished: %v", id, err)
		case <-ctx.Done():
			t.Fatalf("%s not finished in the dashboard's stream after 3 min (progress seen %v)", id, progress)
		}
	}
	t.Logf("progress seen live: %v", progress)
	var between int
	for i, p := range progress {
		if p > 0 && p < 1 {
			between++
		}
		if i > 0 && p < progress[i-1] {
			t.Errorf("progress went back: %v", progress)
		}
	}
	if between < 2 {
		t.Errorf("the stream showed %d distinct progress values strictly between 0 and 1 (%v), want the bar advancing", between, progress)
	}
	// (The prediction is the planner's: shown when it made one.)
	if done.Status != "completed" || done.Progress != 1 || done.DowntimeMs <= 0 || done.TransferredBytes <= 0 || done.Phases == nil || done.Phases.TotalMs != done.DowntimeMs {
		t.Errorf("finished row %+v: want completed with downtime, its parts and bytes", *done)
	}
	t.Logf("finished: total %d ms (predicted %d), downtime %d ms (predicted %d), phases %+v; planned with dirty rate %.1f MiB/s, bandwidth %.1f MiB/s: converges %v (%s)",
		done.ElapsedMs, done.PredictedTotalMs, done.DowntimeMs, done.PredictedDowntimeMs, *done.Phases, done.PlannedDirtyRateMiBps, done.PlannedBandwidthMiBps, done.PredictedConverges, done.PredictionReason)
	// A prediction of 0 means none: either the planner forecast the
	// migration's times, or it said (with its reason) that it would not
	// converge, and the record warns of it.
	switch {
	case !done.Predicted:
		t.Errorf("finished row %+v: no prediction (the dry run made one)", *done)
	case done.PredictedConverges && (done.PredictedTotalMs <= 0 || done.PredictedDowntimeMs <= 0):
		t.Errorf("finished row %+v: a converging prediction without times", *done)
	case !done.PredictedConverges && (done.PredictionReason == "" || !strings.Contains(strings.Join(done.Warnings, "; "), "predicted not to converge")):
		t.Errorf("finished row %+v: a non-converging prediction without its reason or the record's warning", *done)
	}
	if p := done.Phases; p.StopMs+p.FinalRoundMs+p.SwitchoverMs+p.DeviceStateMs+p.ResumeMs > p.TotalMs+2 || p.ResumeMs < 0 {
		t.Errorf("pause parts %+v add up to more than the pause", *p)
	}
	deadline := time.Now().Add(30 * time.Second)
	for !dashShows(last, name, id) && time.Now().Before(deadline) {
		select {
		case last = <-snaps:
		case <-time.After(5 * time.Second):
		}
	}
	if !dashShows(last, name, id) {
		t.Errorf("the dashboard does not show %s running on h2 and %s's completion among the events: VMs %+v, events %+v", name, id, last.VMs, last.Events)
	}
	kept = append(kept, last)

	code, svg := viewer.get("/ui/api/plot?id=" + id)
	if code != 200 || strings.Count(svg, "<polyline") != 2 || !strings.Contains(svg, ">switchover<") {
		t.Errorf("plot of %s: %d, %d bytes, want the SVG with both lines and the switchover", id, code, len(svg))
	}
	art := artifactDir(t)
	b, _ := json.MarshalIndent(kept, "", "  ")
	for f, data := range map[string][]byte{"dashboard-snapshots.json": b, "dashboard-plot.svg": []byte(svg)} {
		p := filepath.Join(art, f)
		if err := os.WriteFile(p, data, 0o644); err != nil {
			t.Error(err)
		}
		t.Logf("artifact %s (%d bytes)", p, len(data))
	}
}

// dashShows reports whether s shows vm running on h2 and the migration id
// completed among the events.
func dashShows(s dashboard.Snapshot, vm, id string) bool {
	onH2 := false
	for _, v := range s.VMs {
		onH2 = onH2 || (v.Name == vm && v.Host == "h2" && v.State == "running")
	}
	completed := false
	for _, e := range s.Events {
		completed = completed || (e.Kind == "migration" && e.Name == id && e.To == "completed")
	}
	return onH2 && completed
}
