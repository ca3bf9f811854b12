package server

import (
	"context"
	"regexp"
	"strings"
	"testing"
	"time"

	ferryv1 "github.com/ferryvm/ferry/gen/ferry/v1"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// TestMetricsAfterMigrations: /metrics scraped after a migration started
// through the API (counted when the engine accepts it) and two migrations
// ended by the engine (its Ended hook) shows the counters by strategy, a
// downtime histogram sample, the duration, bytes, the leader term and the
// hosts' capacity and heartbeat age.
func TestMetricsAfterMigrations(t *testing.T) {
	s, st := newTestServer(t)
	if err := st.PutHost(context.Background(), &ferryv1.Host{Name: "h3", Address: "unix:///nonexistent/h3",
		Capacity: &ferryv1.HostCapacity{Cpus: 4, FreeMemoryMib: 1024, DiskFreeBytes: 5 << 30}, LastSeen: timestamppb.New(time.Now().Add(-5 * time.Second))}, time.Minute); err != nil {
		t.Fatal(err)
	}
	migrateColdWebToH2(t, runTestEngine(t, s))
	start := time.Now().Add(-3 * time.Second)
	s.metrics.mig.migrationEnded(&ferryv1.Migration{Id: "a", Strategy: "precopy", Status: "completed",
		StartedAt: timestamppb.New(start), FinishedAt: timestamppb.New(start.Add(2 * time.Second)),
		DowntimePhases: &ferryv1.DowntimePhases{TotalMs: 42}, TransferredBytes: 1 << 20})
	s.metrics.mig.migrationEnded(&ferryv1.Migration{Id: "b", Strategy: "postcopy", Status: "failed"})
	s.metrics.mig.migrationEnded(&ferryv1.Migration{Id: "c", Strategy: "precopy", Status: "running"}) // not terminal: ignored

	text := scrapeMetrics(t, s)
	for _, want := range []string{
		`ferry_migrations_started_total{strategy="cold"} 1`,
		`ferry_migrations_completed_total{strategy="precopy"} 1`,
		`ferry_migrations_failed_total{strategy="postcopy"} 1`,
		`ferry_migration_downtime_seconds_count{strategy="precopy"} 1`,
		`ferry_migration_downtime_seconds_sum{strategy="precopy"} 0.042`,
		`ferry_migration_downtime_seconds_bucket{strategy="precopy",le="0.04"} 0`,
		`ferry_migration_downtime_seconds_bucket{strategy="precopy",le="0.08"} 1`,
		`ferry_migration_duration_seconds_sum{strategy="precopy"} 2`,
		`ferry_migration_transferred_bytes_total{strategy="precopy"} 1.048576e+06`,
		`ferry_migrations_in_flight 1`,
		`ferry_leader 1`,
		`ferry_leader_terms_total 1`,
		`ferry_host_capacity_cpus{host="h1"} 2`,
		`ferry_host_free_memory_bytes{host="h3"} 1.073741824e+09`,
		`ferry_host_disk_free_bytes{host="h3"} 5.36870912e+09`,
		`ferry_host_capacity_memory_bytes{host="h2"} 4.294967296e+09`,
	} {
		if !strings.Contains(text, want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
	if !regexp.MustCompile(`ferry_agent_heartbeat_age_seconds\{host="h3"\} [5-9]\.`).MatchString(text) {
		t.Errorf("/metrics lacks h3's heartbeat age of about 5 s")
	}
	if strings.Contains(text, `ferry_migrations_completed_total{strategy="cold"}`) || strings.Contains(text, `ferry_migrations_completed_total{strategy="precopy"} 2`) {
		t.Errorf("/metrics counts a migration that did not end:\n%s", text)
	}
}
