package agent

import (
	"context"
	"path/filepath"
	"time"

	"github.com/ferryvm/ferry/internal/retention"
)

// Default log retention: the newest archives of each VM, for a month.
const (
	DefaultKeepLogs    = 20
	DefaultKeepLogsFor = 30 * 24 * time.Hour
	logSweepInterval   = 10 * time.Minute
)

// sweepLogsLoop removes archived per-VM logs (DATA/logs/<vm>/<archive>)
// beyond the configured count and age, at start and then periodically.
func (a *Agent) sweepLogsLoop(ctx context.Context) {
	t := time.NewTicker(logSweepInterval)
	defer t.Stop()
	for {
		removed, err := retention.SweepLogDirs(filepath.Join(a.cfg.DataDir, "logs"), a.cfg.LogRetention, time.Now())
		if err != nil {
			a.log.Warn("log retention", "err", err)
		}
		if len(removed) > 0 {
			a.log.Info("log retention removed old VM log archives", "count", len(removed), "policy_count", a.cfg.LogRetention.Count, "policy_age", a.cfg.LogRetention.Age)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}
