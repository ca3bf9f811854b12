package cli

import (
	"os"
	"time"

	"github.com/ferryvm/ferry/internal/telemetry"
	"github.com/spf13/pflag"
)

// Environment variables that set the agent's telemetry defaults (the dev
// cluster and the tests start agents without extra flags).
const (
	envTelemetryDirtyEvery = "FERRY_TELEMETRY_DIRTY_EVERY"
	envTelemetryRAMEvery   = "FERRY_TELEMETRY_RAM_EVERY"
)

// addTelemetryFlags registers the agent's background telemetry schedule.
func addTelemetryFlags(f *pflag.FlagSet, s *telemetry.Schedule) {
	f.DurationVar(&s.DirtyEvery, "telemetry-dirty-every", envDuration(envTelemetryDirtyEvery, telemetry.DefaultDirtyEvery),
		"how often each running VM's dirty rate is sampled in the background (1 s calc-dirty-rate; negative = off; env "+envTelemetryDirtyEvery+")")
	f.DurationVar(&s.RAMEvery, "telemetry-ram-every", envDuration(envTelemetryRAMEvery, telemetry.DefaultRAMEvery),
		"how often each running VM's non-zero RAM is counted in the background (negative = off; env "+envTelemetryRAMEvery+")")
}

// envDuration is the duration in the environment variable name, or def
// when it is unset or not a duration.
func envDuration(name string, def time.Duration) time.Duration {
	if d, err := time.ParseDuration(os.Getenv(name)); err == nil {
		return d
	}
	return def
}
