package server

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/ferryvm/ferry/internal/rpcaddr"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// ErrMetricsNotLocal is returned by ServeMetrics for an address that is not
// loopback: the metrics listener has no TLS and no authentication.
var ErrMetricsNotLocal = errors.New("not a loopback address")

// metricsHandler serves the Prometheus exposition of this replica.
func (s *Server) metricsHandler() http.Handler {
	return promhttp.HandlerFor(s.metrics.reg, promhttp.HandlerOpts{})
}

// CheckMetricsAddr validates the address of the local metrics listener:
// host:port with host localhost or a loopback IP (port 0 picks one).
func CheckMetricsAddr(addr string) error {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("--metrics-listen: %q: want 127.0.0.1:PORT or [::1]:PORT: %w", addr, err)
	}
	if _, err := net.LookupPort("tcp", port); err != nil {
		return fmt.Errorf("--metrics-listen: %q: port: %w", addr, err)
	}
	if host == "localhost" {
		return nil
	}
	if ip := net.ParseIP(host); ip != nil && ip.IsLoopback() {
		return nil
	}
	return fmt.Errorf("--metrics-listen: %q: %w (it serves plaintext without authentication, so it binds only 127.0.0.1, ::1 or localhost; from another host scrape the API's /metrics over TLS with a viewer token)", addr, ErrMetricsNotLocal)
}

// ServeMetrics serves /metrics (and /healthz) over plaintext HTTP without
// authentication on addr, which must be loopback (CheckMetricsAddr): for a
// Prometheus agent or exporter sidecar on the same machine. ready, if not
// nil, receives the URL bound. It returns when ctx ends.
func (s *Server) ServeMetrics(ctx context.Context, addr string, ready func(url string)) error {
	if err := CheckMetricsAddr(addr); err != nil {
		return err
	}
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("metrics listener: %w", err)
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", s.metricsHandler())
	mux.HandleFunc("/healthz", s.healthz)
	hs := rpcaddr.NewHTTPServer(mux)
	errc := make(chan error, 1)
	go func() { errc <- hs.Serve(l) }()
	url := "http://" + l.Addr().String() + "/metrics"
	if ready != nil {
		ready(url)
	}
	s.log.Info("metrics listening (loopback, no authentication)", "url", url)
	select {
	case <-ctx.Done():
	case err := <-errc:
		if !errors.Is(err, http.ErrServerClosed) {
			return fmt.Errorf("metrics listener: %w", err)
		}
		return nil
	}
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return hs.Shutdown(sctx)
}
