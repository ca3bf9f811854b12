package dashboard

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	ferryv1 "github.com/ferryvm/ferry/gen/ferry/v1"
)

// fakeSource is a Source over fixed state; a migration's remaining bytes
// shrink on each read, fail makes the next read fail.
type fakeSource struct {
	mu    sync.Mutex
	reads int
	fail  error
}

func (f *fakeSource) Input(context.Context) (Input, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.reads++
	if err := f.fail; err != nil {
		f.fail = nil
		return Input{}, err
	}
	return Input{
		Hosts:      []*ferryv1.Host{{Name: "h1", State: "ready"}},
		Migrations: []*ferryv1.Migration{{Id: "mig-1", Vm: "web", Status: "running", TransferredBytes: int64(f.reads), RemainingBytes: 10}},
	}, nil
}

func (f *fakeSource) Migration(_ context.Context, id string) (*ferryv1.Migration, error) {
	switch id {
	case "mig-1":
		return &ferryv1.Migration{Id: id, Samples: []*ferryv1.MigrationSample{{TMs: 0, RemainingBytes: 1 << 20}, {TMs: 1000}}}, nil
	case "mig-cold":
		return &ferryv1.Migration{Id: id, Strategy: "cold"}, nil
	}
	return nil, fmt.Errorf("migration %s: %w", id, ErrNotFound)
}

func serve(t *testing.T, f *fakeSource) *httptest.Server {
	t.Helper()
	srv := httptest.NewServer(New(Config{Source: f, Interval: 20 * time.Millisecond}))
	t.Cleanup(srv.Close)
	return srv
}

func get(t *testing.T, url string) (*http.Response, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp, string(b)
}

// TestPageAndAssets: the page and its assets are served from the binary
// with a CSP that allows only their own script and style; /ui redirects.
func TestPageAndAssets(t *testing.T) {
	srv := serve(t, &fakeSource{})
	resp, body := get(t, srv.URL+"/ui/")
	if resp.StatusCode != 200 || !strings.Contains(body, `<script src="assets/app.js"`) || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/html") {
		t.Errorf("/ui/: %d %s", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	if csp := resp.Header.Get("Content-Security-Policy"); !strings.Contains(csp, "script-src 'self'") || strings.Contains(csp, "unsafe") {
		t.Errorf("CSP %q", csp)
	}
	for _, a := range []string{"/ui/assets/app.js", "/ui/assets/style.css"} {
		if resp, body := get(t, srv.URL+a); resp.StatusCode != 200 || len(body) < 100 {
			t.Errorf("%s: %d, %d bytes", a, resp.StatusCode, len(body))
		}
	}
	if resp, _ := get(t, srv.URL+"/ui/assets/nope.js"); resp.StatusCode != 404 {
		t.Errorf("unknown asset: %d", resp.StatusCode)
	}
	c := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	r, err := c.Get(srv.URL + "/ui")
	if err != nil {
		t.Fatal(err)
	}
	r.Body.Close()
	if r.StatusCode != http.StatusMovedPermanently || r.Header.Get("Location") != "/ui/" {
		t.Errorf("/ui: %d to %q", r.StatusCode, r.Header.Get("Location"))
	}
}

// TestSnapshotAndStream: the snapshot is JSON of Build; the stream sends
// one snapshot at once and more every interval, reports a failed read as
// an error event and goes on.
func TestSnapshotAndStream(t *testing.T) {
	f := &fakeSource{}
	srv := serve(t, f)
	resp, body := get(t, srv.URL+"/ui/api/snapshot")
	var s Snapshot
	if err := json.Unmarshal([]byte(body), &s); err != nil || resp.StatusCode != 200 || len(s.Live) != 1 || s.Live[0].ID != "mig-1" {
		t.Fatalf("snapshot: %d %v %s", resp.StatusCode, err, body)
	}

	f.mu.Lock()
	f.fail = errors.New("etcd down")
	f.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, srv.URL+"/ui/api/stream", nil)
	sr, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer sr.Body.Close()
	if ct := sr.Header.Get("Content-Type"); ct != "text/event-stream" {
		t.Errorf("stream content type %q", ct)
	}
	sc := bufio.NewScanner(sr.Body)
	sc.Buffer(nil, 1<<20)
	var events []string
	var progress []float64
	event := ""
	for sc.Scan() && len(progress) < 3 {
		line := sc.Text()
		switch {
		case strings.HasPrefix(line, "event: "):
			event = strings.TrimPrefix(line, "event: ")
			events = append(events, event)
		case strings.HasPrefix(line, "data: ") && event == "snapshot":
			var s Snapshot
			if err := json.Unmarshal([]byte(strings.TrimPrefix(line, "data: ")), &s); err != nil {
				t.Fatal(err)
			}
			progress = append(progress, s.Live[0].Progress)
		case strings.HasPrefix(line, "data: ") && event == "error" && !strings.Contains(line, "etcd down"):
			t.Errorf("error event %q does not say why", line)
		}
	}
	if len(events) < 4 || events[0] != "error" || len(progress) != 3 || !(progress[0] < progress[1] && progress[1] < progress[2]) {
		t.Errorf("events %v, progress %v: want an error, then snapshots with growing progress", events, progress)
	}
}

// TestPlot: a migration's plot is SVG; a bad id is refused naming the
// field, an unknown one or one without samples is 404 with the reason.
func TestPlot(t *testing.T) {
	srv := serve(t, &fakeSource{})
	resp, body := get(t, srv.URL+"/ui/api/plot?id=mig-1")
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "image/svg+xml" || !strings.Contains(body, "<polyline") {
		t.Errorf("plot: %d %s", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	for _, tc := range []struct {
		id   string
		code int
		want string
	}{
		{"", 400, "id:"},
		{"../etc", 400, "id:"},
		{"mig-nope", 404, "not found"},
		{"mig-cold", 404, "no progress samples"},
	} {
		resp, body := get(t, srv.URL+"/ui/api/plot?id="+tc.id)
		if resp.StatusCode != tc.code || !strings.Contains(body, tc.want) {
			t.Errorf("plot %q: %d %q, want %d %q", tc.id, resp.StatusCode, body, tc.code, tc.want)
		}
	}
}
