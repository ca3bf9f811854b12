package server

import (
	"context"
	"time"

	"connectrpc.com/connect"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

type metrics struct {
	reg      *prometheus.Registry
	requests *prometheus.CounterVec
	latency  *prometheus.HistogramVec
	mig      *migrationMetrics
}

// newMetrics registers the server's metrics, including gauges read from the
// store at scrape time (hosts and VMs by state).
func newMetrics(s *Server) *metrics {
	m := &metrics{reg: newMetricsRegistry()}
	m.requests = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "ferry_api_requests_total", Help: "API requests by procedure and code.",
	}, []string{"procedure", "code"})
	m.latency = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name: "ferry_api_request_duration_seconds", Help: "API request latency.",
		Buckets: prometheus.ExponentialBuckets(0.001, 4, 9),
	}, []string{"procedure"})
	m.reg.MustRegister(m.requests, m.latency, collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	m.reg.MustRegister(&stateCollector{s: s})
	m.mig = newMigrationMetrics(m.reg)
	m.reg.MustRegister(&clusterCollector{s: s}, &fleetCollector{s: s})
	return m
}

func (m *metrics) interceptor() connect.Interceptor {
	return connect.UnaryInterceptorFunc(func(next connect.UnaryFunc) connect.UnaryFunc {
		return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
			start := time.Now()
			resp, err := next(ctx, req)
			code := "ok"
			if err != nil {
				code = connect.CodeOf(err).String()
			}
			m.requests.WithLabelValues(req.Spec().Procedure, code).Inc()
			m.latency.WithLabelValues(req.Spec().Procedure).Observe(time.Since(start).Seconds())
			return resp, err
		}
	})
}

var (
	hostsDesc = prometheus.NewDesc("ferry_hosts", "Hosts by state.", []string{"state"}, nil)
	vmsDesc   = prometheus.NewDesc("ferry_vms", "VMs by state.", []string{"state"}, nil)
)

// stateCollector reports cluster state from the store at scrape time.
type stateCollector struct{ s *Server }

func (c *stateCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- hostsDesc
	ch <- vmsDesc
}

func (c *stateCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	hosts := map[string]int{"ready": 0, "unreachable": 0}
	if hs, err := c.s.store.ListHosts(ctx); err == nil {
		for _, h := range hs {
			hosts[h.State]++
		}
	}
	for st, n := range hosts {
		ch <- prometheus.MustNewConstMetric(hostsDesc, prometheus.GaugeValue, float64(n), st)
	}
	vms := map[string]int{"pending": 0, "running": 0, "stopped": 0, "migrating": 0, "failed": 0}
	if list, err := c.s.store.ListVMs(ctx); err == nil {
		for _, v := range list {
			vms[v.State]++
		}
	}
	for st, n := range vms {
		ch <- prometheus.MustNewConstMetric(vmsDesc, prometheus.GaugeValue, float64(n), st)
	}
}
