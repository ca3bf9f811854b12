package server

import (
	"context"
	"fmt"
	"time"

	"github.com/ferryvm/ferry/internal/migration/core"
	"github.com/ferryvm/ferry/internal/retention"
)

// Default retention of finished migration records.
const (
	DefaultKeepMigrations    = 1000
	DefaultKeepMigrationsFor = 30 * 24 * time.Hour
	retentionInterval        = time.Hour
)

// sweepMigrations removes finished migration records that the retention
// policy no longer keeps; records of running migrations are never touched.
// It returns how many it removed.
func (s *Server) sweepMigrations(ctx context.Context, now time.Time) (int, error) {
	ms, err := s.store.ListMigrations(ctx)
	if err != nil {
		return 0, fmt.Errorf("retention: list migrations: %w", err)
	}
	var done []retention.Item
	for _, m := range ms {
		if !core.State(m.GetState()).Terminal() {
			continue
		}
		fin := m.GetFinishedAt().AsTime()
		if m.GetFinishedAt() == nil {
			fin = m.GetStartedAt().AsTime() // an old record without an end time: its start bounds it
		}
		done = append(done, retention.Item{ID: m.GetId(), Finished: fin})
	}
	n := 0
	for _, id := range retention.Select(done, s.retention, now) {
		if err := s.store.DeleteMigration(ctx, id); err != nil {
			return n, fmt.Errorf("retention: %w", err)
		}
		n++
	}
	return n, nil
}

// runRetention sweeps finished migration records now and then every hour
// until ctx ends (the leader runs it, with the engine).
func (s *Server) runRetention(ctx context.Context) {
	t := time.NewTicker(retentionInterval)
	defer t.Stop()
	for {
		sctx, cancel := context.WithTimeout(ctx, time.Minute)
		n, err := s.sweepMigrations(sctx, time.Now())
		cancel()
		switch {
		case err != nil && ctx.Err() == nil:
			s.log.Warn("migration record retention", "err", err)
		case n > 0:
			s.log.Info("migration record retention removed finished records", "count", n, "keep", s.retention.Count, "keep_for", s.retention.Age)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}
