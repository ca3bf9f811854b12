package health

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestParse(t *testing.T) {
	c, err := Parse("failed:command:exit 1", time.Second, 3)
	if err != nil || c.Kind != KindCommand || c.Target != "exit 1" || c.Severity != Failed || c.Threshold != 3 {
		t.Fatalf("got %+v, %v", c, err)
	}
	for _, bad := range []string{"nokind", "disk:/x", "file:", "http:ftp://x"} {
		if _, err := Parse(bad, 0, 0); !errors.Is(err, ErrInvalid) {
			t.Errorf("Parse(%q) = %v, want ErrInvalid", bad, err)
		}
	}
}

func TestVerdictNeedsThresholdAndWorstSeverityWins(t *testing.T) {
	tr := NewTracker([]Check{{Kind: KindFile, Target: "/a", Threshold: 2}, {Kind: KindCommand, Target: "b", Severity: Failed, Threshold: 1}})
	tr.Record("file:/a", errors.New("marker /a exists"))
	if v, _ := tr.Verdict(); v != Healthy {
		t.Fatalf("after one failure of a threshold-2 check: %s", v)
	}
	tr.Record("file:/a", errors.New("marker /a exists"))
	if v, d := tr.Verdict(); v != Degraded || !strings.Contains(d, "file:/a failed 2 times") {
		t.Fatalf("got %s %q", v, d)
	}
	tr.Record("command:b", errors.New("exit status 1"))
	if v, _ := tr.Verdict(); v != Failed {
		t.Fatalf("got %s, want failed", v)
	}
	tr.Record("command:b", nil)
	tr.Record("file:/a", nil)
	if v, d := tr.Verdict(); v != Healthy || d != "" {
		t.Fatalf("after recovery: %s %q", v, d)
	}
}

func TestProbes(t *testing.T) {
	dir := t.TempDir()
	marker := filepath.Join(dir, "degraded")
	ctx := context.Background()
	if err := probe(ctx, Check{Kind: KindFile, Target: marker}); err != nil {
		t.Errorf("absent marker: %v", err)
	}
	if err := os.WriteFile(marker, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := probe(ctx, Check{Kind: KindFile, Target: marker}); err == nil {
		t.Error("present marker passed")
	}
	if err := probe(ctx, Check{Kind: KindCommand, Target: "true"}); err != nil {
		t.Errorf("true: %v", err)
	}
	if err := probe(ctx, Check{Kind: KindCommand, Target: "echo broken; exit 3"}); err == nil || !strings.Contains(err.Error(), "broken") {
		t.Errorf("exit 3: %v", err)
	}
	ok := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/ok" {
			w.WriteHeader(http.StatusServiceUnavailable)
		}
	}))
	defer ok.Close()
	if err := probe(ctx, Check{Kind: KindHTTP, Target: ok.URL + "/ok"}); err != nil {
		t.Errorf("http ok: %v", err)
	}
	if err := probe(ctx, Check{Kind: KindHTTP, Target: ok.URL + "/bad"}); err == nil {
		t.Error("http 503 passed")
	}
}

func TestRunTurnsDegradedWhenTheMarkerAppears(t *testing.T) {
	marker := filepath.Join(t.TempDir(), "degraded")
	tr := NewTracker([]Check{{Kind: KindFile, Target: marker, Period: 10 * time.Millisecond, Threshold: 1}})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { tr.Run(ctx); close(done) }()
	defer func() { cancel(); <-done }()
	if err := os.WriteFile(marker, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		if v, _ := tr.Verdict(); v == Degraded {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatal("not degraded within 5s of the marker")
}
