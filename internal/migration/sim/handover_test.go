package sim

import (
	"fmt"
	"strings"
	"testing"

	"github.com/ferryvm/ferry/internal/migration/core"
)

// TestHandOverAdopts: a graceful leader change at every step of every
// scenario's happy path (the leader resigns, the next one loads the
// record) loses nothing: every case completes, with no rollback and the
// same single attempt, and the new leader's history says it adopted a
// handed-over record. (A plain crash of the leader is in AllFaults too.)
func TestHandOverAdopts(t *testing.T) {
	cases, handed := 0, 0
	for _, s := range Scenarios {
		happy := HappyPath(s, 1)
		for k := 0; k < happy.Steps; k++ {
			w := NewWorld(s.Strategy, s.Prev, int64(k)+1)
			if s.LocalDisks {
				w.WithLocalDisks()
			}
			w.Hook = func(w *World, i int, a core.Action) Disposition {
				if i == k {
					w.logf("FAULT hand-over")
					w.HandOver()
				}
				return DispDeliver
			}
			w.Start()
			w.Run()
			if len(w.Violations) == 0 {
				w.CheckEnd()
			}
			cases++
			rec := w.Record()
			name := fmt.Sprintf("%s hand-over at step %d", s.Name, k)
			var rolled, adopted bool
			for _, e := range rec.History {
				rolled = rolled || e.State == core.RollingBack || e.State == core.Unswitching
				if strings.Contains(e.Message, "handed it over") {
					adopted = true
				}
			}
			switch {
			case len(w.Violations) > 0:
				t.Errorf("%s: %v\n%s", name, w.Violations, strings.Join(w.Trace, "\n"))
			case rec.State != core.Completed || rolled || rec.Attempt > 1:
				t.Errorf("%s: ended %s (rolled back %v, attempt %d): %s\n%s", name, rec.State, rolled, rec.Attempt, rec.Error, strings.Join(w.Trace, "\n"))
			case !adopted && !strings.Contains(strings.Join(w.Trace, "\n"), "resigns: record handed over in completed"):
				t.Errorf("%s: the new leader's history does not say it adopted a handed-over record: %v", name, rec.History)
			}
			if adopted {
				handed++
			}
		}
	}
	t.Logf("hand-over at every step: %d cases, %d adopted a handed-over record mid-migration, all completed without a rollback", cases, handed)
}
