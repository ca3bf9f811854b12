package server

import (
	"context"
	"time"

	ferryv1 "github.com/ferryvm/ferry/gen/ferry/v1"
	"github.com/prometheus/client_golang/prometheus"
)

// migrationMetrics are the counters and histograms of migrations, counted
// by the leader's engine: started when Migrate hands a migration to the
// engine, finished at the terminal transition the engine makes (after the
// terminal record is persisted, see exec.Config.Ended). A migration
// recovered by a new leader is counted as finished by that leader only,
// and its start by the leader that started it, so each migration is
// counted once across leader changes (per-replica counters: sum them over
// the replicas in PromQL). A replica crashing between persisting the
// terminal record and counting loses that one count (at most once).
type migrationMetrics struct {
	started     *prometheus.CounterVec
	completed   *prometheus.CounterVec
	failed      *prometheus.CounterVec
	cancelled   *prometheus.CounterVec
	duration    *prometheus.HistogramVec
	downtime    *prometheus.HistogramVec
	transferred *prometheus.CounterVec
	terms       prometheus.Counter
	leading     prometheus.Gauge
}

func newMigrationMetrics(reg *prometheus.Registry) *migrationMetrics {
	byStrategy := []string{"strategy"}
	m := &migrationMetrics{
		started: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ferry_migrations_started_total", Help: "Migrations handed to the migration engine, by strategy.",
		}, byStrategy),
		completed: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ferry_migrations_completed_total", Help: "Migrations that completed, by strategy.",
		}, byStrategy),
		failed: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ferry_migrations_failed_total", Help: "Migrations that failed, by strategy.",
		}, byStrategy),
		cancelled: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ferry_migrations_cancelled_total", Help: "Migrations that were cancelled, by strategy.",
		}, byStrategy),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "ferry_migration_duration_seconds", Help: "Time from start to the terminal state of finished migrations, by strategy.",
			Buckets: prometheus.ExponentialBuckets(0.5, 2, 12), // 0.5 s .. ~17 min
		}, byStrategy),
		downtime: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "ferry_migration_downtime_seconds", Help: "Guest downtime (source stop to destination resume) of completed migrations, by strategy.",
			Buckets: prometheus.ExponentialBuckets(0.005, 2, 12), // 5 ms .. ~10 s
		}, byStrategy),
		transferred: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ferry_migration_transferred_bytes_total", Help: "Bytes sent by finished migrations, by strategy.",
		}, byStrategy),
		terms: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "ferry_leader_terms_total", Help: "Times this replica became the leader (started its engine).",
		}),
		leading: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "ferry_leader", Help: "1 while this replica leads (its engine runs), else 0.",
		}),
	}
	reg.MustRegister(m.started, m.completed, m.failed, m.cancelled, m.duration, m.downtime, m.transferred, m.terms, m.leading)
	return m
}

// migrationStarted counts a migration the engine accepted.
func (m *migrationMetrics) migrationStarted(strategy string) {
	m.started.WithLabelValues(strategy).Inc()
}

// migrationEnded counts a migration's terminal transition from its final
// report.
func (m *migrationMetrics) migrationEnded(r *ferryv1.Migration) {
	st := r.GetStrategy()
	switch r.GetStatus() {
	case "completed":
		m.completed.WithLabelValues(st).Inc()
		if d := downtimeMs(r); d >= 0 {
			m.downtime.WithLabelValues(st).Observe(float64(d) / 1000)
		}
	case "failed":
		m.failed.WithLabelValues(st).Inc()
	case "cancelled":
		m.cancelled.WithLabelValues(st).Inc()
	default:
		return // not terminal: nothing to count
	}
	if r.GetStartedAt() != nil && r.GetFinishedAt() != nil {
		if d := r.GetFinishedAt().AsTime().Sub(r.GetStartedAt().AsTime()); d >= 0 {
			m.duration.WithLabelValues(st).Observe(d.Seconds())
		}
	}
	if b := r.GetTransferredBytes(); b > 0 {
		m.transferred.WithLabelValues(st).Add(float64(b))
	}
}

// downtimeMs is the measured pause (the sum of the downtime's parts when
// known, else QEMU's own figure); -1 when neither is known.
func downtimeMs(r *ferryv1.Migration) int64 {
	if t := r.GetDowntimePhases().GetTotalMs(); t > 0 {
		return t
	}
	if r.GetDowntimeMs() > 0 {
		return r.GetDowntimeMs()
	}
	return -1
}

// leadingChanged marks the start or end of a term of this replica.
func (m *migrationMetrics) leadingChanged(leading bool) {
	if leading {
		m.terms.Inc()
		m.leading.Set(1)
		return
	}
	m.leading.Set(0)
}

var (
	inFlightDesc     = prometheus.NewDesc("ferry_migrations_in_flight", "Migrations not yet in a terminal state (from the records).", nil, nil)
	hostCPUsDesc     = prometheus.NewDesc("ferry_host_capacity_cpus", "CPUs of a host.", []string{"host"}, nil)
	hostMemDesc      = prometheus.NewDesc("ferry_host_capacity_memory_bytes", "Memory of a host.", []string{"host"}, nil)
	hostVCPUsDesc    = prometheus.NewDesc("ferry_host_allocated_vcpus", "vCPUs of the VMs placed on a host.", []string{"host"}, nil)
	hostAllocMemDesc = prometheus.NewDesc("ferry_host_allocated_memory_bytes", "Memory of the VMs placed on a host.", []string{"host"}, nil)
	hostVMsDesc      = prometheus.NewDesc("ferry_host_vms", "VMs running on a host.", []string{"host"}, nil)
	hostFreeMemDesc  = prometheus.NewDesc("ferry_host_free_memory_bytes", "Memory a host's agent reports free (its MemAvailable).", []string{"host"}, nil)
	hostDiskFreeDesc = prometheus.NewDesc("ferry_host_disk_free_bytes", "Free space of a host agent's data directory (where local disks live).", []string{"host"}, nil)
	heartbeatDesc    = prometheus.NewDesc("ferry_agent_heartbeat_age_seconds", "Time since a host's agent was last heard from.", []string{"host"}, nil)
)

// clusterCollector reports migrations in flight, host capacity and use and
// agent heartbeat age from the store at scrape time.
type clusterCollector struct{ s *Server }

func (c *clusterCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{inFlightDesc, hostCPUsDesc, hostMemDesc, hostVCPUsDesc, hostAllocMemDesc, hostVMsDesc, hostFreeMemDesc, hostDiskFreeDesc, heartbeatDesc} {
		ch <- d
	}
}

func (c *clusterCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	if recs, err := c.s.store.ListMigrations(ctx); err == nil {
		n := 0
		for _, r := range recs {
			switch r.GetReport().GetStatus() {
			case "completed", "failed", "cancelled":
			default:
				n++
			}
		}
		ch <- prometheus.MustNewConstMetric(inFlightDesc, prometheus.GaugeValue, float64(n))
	}
	hs, err := c.s.store.ListHosts(ctx)
	if err != nil {
		return
	}
	const mib = 1 << 20
	now := time.Now()
	for _, h := range hs {
		cp := h.GetCapacity()
		ch <- prometheus.MustNewConstMetric(hostCPUsDesc, prometheus.GaugeValue, float64(cp.GetCpus()), h.Name)
		ch <- prometheus.MustNewConstMetric(hostMemDesc, prometheus.GaugeValue, float64(cp.GetMemoryMib())*mib, h.Name)
		ch <- prometheus.MustNewConstMetric(hostVCPUsDesc, prometheus.GaugeValue, float64(cp.GetAllocatedVcpus()), h.Name)
		ch <- prometheus.MustNewConstMetric(hostAllocMemDesc, prometheus.GaugeValue, float64(cp.GetAllocatedMemoryMib())*mib, h.Name)
		ch <- prometheus.MustNewConstMetric(hostVMsDesc, prometheus.GaugeValue, float64(cp.GetVms()), h.Name)
		if cp.GetFreeMemoryMib() > 0 { // 0: an agent that does not report it
			ch <- prometheus.MustNewConstMetric(hostFreeMemDesc, prometheus.GaugeValue, float64(cp.GetFreeMemoryMib())*mib, h.Name)
		}
		if cp.GetDiskFreeBytes() > 0 {
			ch <- prometheus.MustNewConstMetric(hostDiskFreeDesc, prometheus.GaugeValue, float64(cp.GetDiskFreeBytes()), h.Name)
		}
		if h.GetLastSeen() != nil {
			ch <- prometheus.MustNewConstMetric(heartbeatDesc, prometheus.GaugeValue, now.Sub(h.GetLastSeen().AsTime()).Seconds(), h.Name)
		}
	}
}
