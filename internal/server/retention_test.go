package server

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	statev1 "github.com/ferryvm/ferry/gen/ferry/state/v1"
	"github.com/ferryvm/ferry/internal/retention"
	"google.golang.org/protobuf/types/known/timestamppb"
)

func TestSweepMigrationsKeepsRunningAndNewest(t *testing.T) {
	s, st := newTestServer(t)
	ctx := context.Background()
	now := time.Now()
	put := func(id, state string, finishedAgo time.Duration) {
		m := &statev1.MigrationRecord{Version: 1, Id: id, Vm: "vm-" + id, State: state, StartedAt: timestamppb.New(now.Add(-finishedAgo - time.Minute))}
		if state == "completed" || state == "failed" || state == "cancelled" {
			m.FinishedAt = timestamppb.New(now.Add(-finishedAgo))
		}
		if err := st.PutMigration(ctx, m); err != nil {
			t.Fatal(err)
		}
	}
	for i := range 5 {
		put(fmt.Sprintf("done-%d", i), "completed", time.Duration(i+1)*time.Hour)
	}
	put("failed-old", "failed", 100*24*time.Hour)
	put("running-old", "transferring", 100*24*time.Hour) // never removed while it runs
	s.retention = retention.Policy{Count: 3, Age: 30 * 24 * time.Hour}
	n, err := s.sweepMigrations(ctx, now)
	if err != nil {
		t.Fatal(err)
	}
	ms, err := st.ListMigrations(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var left []string
	for _, m := range ms {
		left = append(left, m.Id)
	}
	slices.Sort(left)
	if want := []string{"done-0", "done-1", "done-2", "running-old"}; n != 3 || !slices.Equal(left, want) {
		t.Fatalf("swept %d, left %v; want 3 swept, left %v", n, left, want)
	}
	// A second sweep finds nothing more to do.
	if n, err := s.sweepMigrations(ctx, now); err != nil || n != 0 {
		t.Fatalf("second sweep: %d, %v", n, err)
	}
}
