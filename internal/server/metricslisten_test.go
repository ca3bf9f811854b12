package server

import (
	"context"
	"errors"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"
)

func TestCheckMetricsAddr(t *testing.T) {
	for _, ok := range []string{"127.0.0.1:9464", "[::1]:9464", "localhost:0", "127.0.0.2:1"} {
		if err := CheckMetricsAddr(ok); err != nil {
			t.Errorf("%s: %v", ok, err)
		}
	}
	for _, bad := range []string{"0.0.0.0:9464", ":9464", "[::]:9464", "10.0.0.1:9464", "example.com:9464"} {
		if err := CheckMetricsAddr(bad); !errors.Is(err, ErrMetricsNotLocal) {
			t.Errorf("%s: got %v, want ErrMetricsNotLocal", bad, err)
		}
	}
	for _, bad := range []string{"127.0.0.1", "127.0.0.1:http-nope", "unix:///x"} {
		if err := CheckMetricsAddr(bad); err == nil || !strings.Contains(err.Error(), "--metrics-listen") {
			t.Errorf("%s: got %v, want an error naming --metrics-listen", bad, err)
		}
	}
}

// TestServeMetricsLoopback: the local listener serves the exposition over
// plain HTTP without a credential, and only /metrics and /healthz.
func TestServeMetricsLoopback(t *testing.T) {
	s, _ := newTestServer(t)
	ctx, cancel := context.WithCancel(context.Background())
	urls := make(chan string, 1)
	done := make(chan error, 1)
	go func() { done <- s.ServeMetrics(ctx, "127.0.0.1:0", func(u string) { urls <- u }) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	}()
	var url string
	select {
	case url = <-urls:
	case err := <-done:
		t.Fatal(err)
	case <-time.After(10 * time.Second):
		t.Fatal("metrics listener not ready after 10s")
	}
	c := &http.Client{Timeout: 10 * time.Second}
	get := func(u string) (int, string) {
		resp, err := c.Get(u)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if code, body := get(url); code != 200 || !strings.Contains(body, "ferry_leader_terms_total") {
		t.Errorf("GET %s: %d, want 200 with the ferry metrics", url, code)
	}
	base := strings.TrimSuffix(url, "/metrics")
	if code, _ := get(base + "/ferry.v1.VMService/ListVMs"); code != http.StatusNotFound {
		t.Errorf("the metrics listener serves the API: %d, want 404", code)
	}
	if err := s.ServeMetrics(ctx, "0.0.0.0:0", nil); !errors.Is(err, ErrMetricsNotLocal) {
		t.Errorf("ServeMetrics on 0.0.0.0: %v, want ErrMetricsNotLocal", err)
	}
}
