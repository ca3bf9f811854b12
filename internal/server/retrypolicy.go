package server

import (
	ferryv1 "github.com/ferryvm/ferry/gen/ferry/v1"
	"github.com/ferryvm/ferry/internal/migration/core"
)

// checkRetryPolicy validates the request's retry knobs (see
// internal/migration/core/retry.go): 0 takes the default.
func checkRetryPolicy(opt *ferryv1.MigrationOptions) error {
	if opt.MaxAttempts < 0 || opt.MaxAttempts > core.MaxMaxAttempts {
		return invalidArg("max_attempts: must be between 1 and %d (0 = the default, %d; 1 = never retry), got %d",
			core.MaxMaxAttempts, core.DefaultMaxAttempts, opt.MaxAttempts)
	}
	if opt.RetryBackoffMs < 0 || opt.RetryBackoffMs > core.MaxRetryBackoff.Milliseconds() {
		return invalidArg("retry_backoff_ms: must be between 1 and %d ms (0 = the default, %s), got %d",
			core.MaxRetryBackoff.Milliseconds(), core.DefaultRetryBackoff, opt.RetryBackoffMs)
	}
	if opt.Strategy == "cold" && opt.MaxAttempts > 1 {
		return invalidArg("max_attempts: only applies to live strategies (a cold migration has no transfer to retry), got %d", opt.MaxAttempts)
	}
	return nil
}
