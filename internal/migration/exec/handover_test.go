package exec

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	ferryv1 "github.com/ferryvm/ferry/gen/ferry/v1"
	"github.com/ferryvm/ferry/internal/migration/core"
)

// TestEngineHandOverAndAdopt: a leader that resigns mid-transfer hands the
// migration over (its record written with the handed-over fact and the
// term, nothing more sent), refuses new migrations meanwhile, and the next
// run of the engine (the next leader) adopts the transfer and completes it
// without a rollback.
func TestEngineHandOverAndAdopt(t *testing.T) {
	e, pair, _, recs, cancel, done := newFakeEngine(t)
	pair.hold = true
	rec, report := newFakeRecord(t)
	if err := e.Start(context.Background(), rec, report); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		if rp := e.lookup("mig-1"); rp != nil {
			if _, r := rp.current(); r.State == core.Transferring && r.Facts.OutgoingStarted {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatal("the migration did not reach transferring")
		}
		time.Sleep(5 * time.Millisecond)
	}
	hctx, hcancel := context.WithTimeout(context.Background(), HandOverWait)
	handed, left := e.HandOver(hctx, 42)
	hcancel()
	if handed != 1 || left != 0 {
		t.Fatalf("HandOver = %d handed, %d left; want 1, 0", handed, left)
	}
	pr := recs.get("mig-1")
	if pr.GetHandoverTerm() != 42 || pr.GetHandedOverAt() == nil || pr.GetState() != string(core.Transferring) {
		t.Fatalf("stored record: term %d at %v state %s; want term 42, a time, transferring", pr.GetHandoverTerm(), pr.GetHandedOverAt(), pr.GetState())
	}
	pair.mu.Lock()
	calls := len(pair.calls)
	pair.mu.Unlock()
	rec2, report2 := newFakeRecord(t)
	rec2.ID, report2.Id = "mig-2", "mig-2"
	if err := e.Start(context.Background(), rec2, report2); !errors.Is(err, ErrHandingOver) {
		t.Errorf("Start while handing over = %v, want ErrHandingOver", err)
	}
	if _, err := e.Cancel(context.Background(), "mig-1"); !errors.Is(err, ErrHandingOver) {
		t.Errorf("Cancel while handing over = %v, want ErrHandingOver", err)
	}
	time.Sleep(300 * time.Millisecond)
	pair.mu.Lock()
	if n := len(pair.calls); n != calls {
		t.Errorf("the handed-over engine still acted: %v", pair.calls[calls:])
	}
	pair.hold = false
	pair.mu.Unlock()
	cancel()
	<-done

	// The next leader.
	ctx, cancel2 := context.WithCancel(context.Background())
	defer cancel2()
	go func() { _ = e.Run(ctx) }()
	m := waitStatus(t, e, recs, "mig-1", "completed")
	if !slices.ContainsFunc(m.Events, func(ev *ferryv1.MigrationEvent) bool {
		return strings.Contains(ev.Message, "the leader of term 42 handed it over")
	}) {
		t.Errorf("events %v: want the adoption of the handed-over record", m.Events)
	}
	for _, ev := range m.Events {
		if ev.State == string(core.RollingBack) {
			t.Errorf("the adopted migration rolled back: %v", m.Events)
		}
	}
	if pr := recs.get("mig-1"); pr.GetHandoverTerm() != 0 {
		t.Errorf("the adopted record still carries the handover of term %d", pr.GetHandoverTerm())
	}
}
