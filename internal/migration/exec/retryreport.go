package exec

import (
	ferryv1 "github.com/ferryvm/ferry/gen/ferry/v1"
	"github.com/ferryvm/ferry/internal/migration/core"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// renderRetries puts the record's attempt and retried attempts (with why
// and the backoff) into the report.
func renderRetries(m *ferryv1.Migration, rec core.Record) {
	m.Attempt = max(rec.Attempt, 1)
	m.Retries = m.Retries[:0]
	for _, t := range rec.Retries {
		m.Retries = append(m.Retries, &ferryv1.MigrationRetry{Attempt: t.Attempt, FailedAt: timestamppb.New(t.At), Reason: t.Reason,
			BackoffMs: t.Backoff.Milliseconds(), Strategy: string(t.Strategy)})
	}
}
