// Package drain executes host evacuations on a real cluster: it keeps one
// persisted record per host in maintenance (ferryv1.Evacuation), plans the
// drain with the pure internal/evacuate planner, starts the planned
// migrations with bounded parallelism, follows them, re-plans a VM whose
// migration failed onto another destination, and ends with a report of
// every VM moved or exactly which did not and why.
//
// Every state a new leader needs is in the record, so an evacuation
// survives a server restart or a leader change: a VM whose migration
// started but whose id the record missed is adopted from the VM's
// migration lock, and a VM already on another host counts as moved.
//
// The decisions (step.go) are pure functions of the record and what was
// observed; the Runner (runner.go) holds the clock, the goroutine and the
// I/O through the Cluster and Records interfaces.
package drain

import (
	"fmt"
	"slices"
	"sort"
	"strings"
	"time"

	ferryv1 "github.com/ferryvm/ferry/gen/ferry/v1"
	"github.com/ferryvm/ferry/internal/evacuate"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// Evacuation states (ferryv1.Evacuation.State).
const (
	StatePlanned    = "planned" // a dry run's record, never stored
	StateRunning    = "running"
	StateCancelling = "cancelling"
	StateCompleted  = "completed"
	StateIncomplete = "incomplete"
	StateCancelled  = "cancelled"
)

// Item statuses (ferryv1.EvacuationItem.Status).
const (
	ItemPending   = "pending"
	ItemMigrating = "migrating"
	ItemCompleted = "completed"
	ItemFailed    = "failed"
	ItemUnplaced  = "unplaced"
	ItemCancelled = "cancelled"
)

// Reasons an evacuation started.
const (
	ReasonManual   = "manual"
	ReasonDegraded = "degraded"
)

// Unplaced VMs are planned again up to MaxPlans times, RePlanAfter apart,
// while the evacuation runs.
const (
	MaxPlans    = 3
	RePlanAfter = 10 * time.Second
)

// RetryUnplaced puts the unplaced items back to pending (to be planned
// again) once RePlanAfter passed since the last plan, at most MaxPlans
// plans per item. It returns whether it did.
func RetryUnplaced(rec *ferryv1.Evacuation, now time.Time) bool {
	if rec.State != StateRunning || rec.PlannedAt == nil || now.Sub(rec.PlannedAt.AsTime()) < RePlanAfter {
		return false
	}
	again := false
	for _, it := range rec.Items {
		if it.Status == ItemUnplaced && it.Plans < MaxPlans && !strings.HasPrefix(it.Error, "pinned") {
			it.Status, it.Error, again = ItemPending, "", true
		}
	}
	return again
}

// DefaultMaxAttempts is how many migrations of one VM an evacuation tries
// (each to a different destination) before it gives the VM up.
const DefaultMaxAttempts = 3

// Terminal says an evacuation state is final.
func Terminal(state string) bool {
	return state == StateCompleted || state == StateIncomplete || state == StateCancelled
}

// itemDone says an item needs no more work.
func itemDone(status string) bool {
	return status == ItemCompleted || status == ItemFailed || status == ItemUnplaced || status == ItemCancelled
}

// Migration is what the executor observed of one migration.
type Migration struct {
	// Status is running, completed, failed or cancelled (the engine's).
	Status string
	// Error says why it failed.
	Error string
	// Progress is the fraction done (0..1).
	Progress float64
	// Took is how long it ran (for an ended one).
	Took time.Duration
	// Gone: no record of it exists (retention removed it, or it never
	// started).
	Gone bool
	// NotDestination: it failed for a cause that is not its destination's
	// (a control-plane restart rolled it back): the retry may use the
	// same destination, which is not added to the item's avoid list.
	NotDestination bool
}

// VMView is what the VM's record says now.
type VMView struct {
	// Host is the host the record places it on.
	Host string
	// State is the record's state (running, migrating, stopped, failed...).
	State string
	// MigrationID is the migration holding its lock ("" for none).
	MigrationID string
	// Gone: the VM was deleted.
	Gone bool
}

// Observed is what one tick saw: every migration the record names and
// every VM of its items, by name.
type Observed struct {
	Migrations map[string]Migration
	VMs        map[string]VMView
	Now        time.Time
}

// Fold brings the record up to date with what was observed: a finished
// migration completes or fails its item (a failed one goes back to
// pending, avoiding that destination, until maxAttempts), a pending item
// whose VM is migrating adopts that migration (a start the record missed),
// and a VM already off the source is moved. It returns whether some item
// needs a destination (a re-plan).
func Fold(rec *ferryv1.Evacuation, obs Observed, maxAttempts int) (needPlan bool) {
	if maxAttempts <= 0 {
		maxAttempts = DefaultMaxAttempts
	}
	for _, it := range rec.Items {
		vm, known := obs.VMs[it.Vm]
		if known && vm.Gone && !itemDone(it.Status) {
			it.Status, it.Error = ItemCompleted, "the VM was deleted during the evacuation"
			continue
		}
		switch it.Status {
		case ItemMigrating:
			m, ok := obs.Migrations[it.MigrationId]
			if !ok {
				continue
			}
			it.Progress = m.Progress
			switch {
			case m.Status == "completed":
				it.Status, it.Progress, it.Error = ItemCompleted, 1, ""
				it.MeasuredMs = m.Took.Milliseconds()
				if known && vm.Host != rec.Host && vm.MigrationID == "" {
					it.To = vm.Host // where the VM's record says it is (an adopted start had no destination)
				}
			case m.Status == "failed" || m.Status == "cancelled" || m.Gone:
				why := m.Error
				if m.Gone {
					why = "its migration record is gone"
				}
				if why == "" {
					why = "migration " + m.Status
				}
				failAttempt(rec, it, fmt.Sprintf("%s to %s: %s", it.MigrationId, it.To, why), maxAttempts, !m.NotDestination)
			}
		case ItemPending:
			if !known {
				continue
			}
			switch {
			case vm.MigrationID != "" && vm.MigrationID != it.MigrationId:
				// A start whose id the record missed (a restart between the
				// start and the write): follow it.
				it.Status, it.MigrationId = ItemMigrating, vm.MigrationID
				it.Attempts++
				if it.StartedAt == nil {
					it.StartedAt = timestamppb.New(obs.Now)
				}
			case vm.Host != rec.Host && vm.MigrationID == "":
				it.Status, it.To, it.Progress = ItemCompleted, vm.Host, 1
			}
		}
		if it.Status == ItemPending && it.To == "" {
			needPlan = true
		}
	}
	return needPlan
}

// failAttempt records a failed attempt: the item goes back to pending to
// another destination, or fails for good after maxAttempts.
// With avoid, its destination is not tried again for this VM.
func failAttempt(rec *ferryv1.Evacuation, it *ferryv1.EvacuationItem, why string, maxAttempts int, avoid bool) {
	it.Failures = append(it.Failures, why)
	if avoid && it.To != "" && !slices.Contains(it.Avoid, it.To) {
		it.Avoid = append(it.Avoid, it.To)
	}
	it.MigrationId, it.Progress = "", 0
	if int(it.Attempts) >= maxAttempts || rec.State == StateCancelling {
		it.Status, it.Error = ItemFailed, why
		if rec.State == StateCancelling {
			it.Status = ItemCancelled
		}
		return
	}
	it.Status, it.To, it.Error = ItemPending, "", ""
}

// ApplyPlan gives a destination, strategy, order and prediction to every
// pending item without one that plan moves, and marks the ones it
// cannot place unplaced with the planner's reason. Items already placed
// keep theirs; orders continue after the highest already given.
func ApplyPlan(rec *ferryv1.Evacuation, plan evacuate.Plan) {
	byVM := map[string]*ferryv1.EvacuationItem{}
	next := int32(0)
	for _, it := range rec.Items {
		byVM[it.Vm] = it
		next = max(next, it.Order)
	}
	for _, it := range rec.Items {
		if it.Status == ItemPending && it.To == "" {
			it.Plans++
		}
	}
	for _, m := range plan.Moves {
		it, ok := byVM[m.VM]
		if !ok || it.Status != ItemPending || it.To != "" {
			continue
		}
		next++
		it.To, it.Strategy, it.Order = m.To, m.Strategy, next
		it.PredictedMs = m.Prediction.Total.Milliseconds()
	}
	for _, u := range plan.Unplaced {
		it, ok := byVM[u.VM]
		if !ok || it.Status != ItemPending || it.To != "" {
			continue
		}
		it.Status = ItemUnplaced
		it.Error = fmt.Sprintf("%s: %s (%s)", u.Reason, u.Detail, u.Help)
		if len(it.Failures) > 0 {
			it.Status = ItemFailed
			it.Error = fmt.Sprintf("no other destination after %d failed attempt(s): %s", len(it.Failures), it.Error)
		}
	}
	if rec.PredictedEtaMs == 0 {
		rec.PredictedEtaMs = plan.ETA.Milliseconds()
	}
	if rec.Parallel == 0 {
		rec.Parallel, rec.PerDest = int32(plan.Parallel), int32(plan.PerDest)
	}
}

// Admit returns the pending items with a destination to start now, in
// plan order, keeping at most rec.Parallel migrations in flight out of
// the source and rec.PerDest into one destination, of which inFlight
// counts the cluster's other migrations per host (clusterFree bounds the
// starts by the cluster-wide limit left).
func Admit(rec *ferryv1.Evacuation, otherInto map[string]int, clusterFree int) []*ferryv1.EvacuationItem {
	if rec.State != StateRunning {
		return nil
	}
	parallel, perDest := max(int(rec.Parallel), 1), max(int(rec.PerDest), 1)
	running := 0
	into := map[string]int{}
	for h, n := range otherInto {
		into[h] = n
	}
	var pending []*ferryv1.EvacuationItem
	for _, it := range rec.Items {
		switch {
		case it.Status == ItemMigrating:
			running++
			into[it.To]++
		case it.Status == ItemPending && it.To != "":
			pending = append(pending, it)
		}
	}
	sort.SliceStable(pending, func(i, j int) bool { return pending[i].Order < pending[j].Order })
	var out []*ferryv1.EvacuationItem
	for _, it := range pending {
		if running >= parallel || len(out) >= clusterFree {
			break
		}
		if into[it.To] >= perDest {
			continue
		}
		out = append(out, it)
		running++
		into[it.To]++
	}
	return out
}

// InFlight counts the record's migrating items.
func InFlight(rec *ferryv1.Evacuation) int {
	n := 0
	for _, it := range rec.Items {
		if it.Status == ItemMigrating {
			n++
		}
	}
	return n
}

// Finish ends the evacuation when no item needs more work: completed
// when every item moved and no VM is left on the host (left counts the
// VMs the store still places there), incomplete otherwise, cancelled
// after a cancel. It returns whether the record ended.
func Finish(rec *ferryv1.Evacuation, left []string, now time.Time) bool {
	if Terminal(rec.State) {
		return false
	}
	for _, it := range rec.Items {
		if rec.State == StateRunning && it.Status == ItemUnplaced && it.Plans < MaxPlans {
			return false // to be planned again (RetryUnplaced)
		}
		if !itemDone(it.Status) {
			if rec.State == StateCancelling && it.Status == ItemPending {
				it.Status = ItemCancelled
				continue
			}
			return false
		}
	}
	if rec.State == StateCancelling {
		for _, it := range rec.Items {
			if it.Status == ItemMigrating {
				return false
			}
		}
	}
	rec.EndedAt = timestamppb.New(now)
	if rec.StartedAt != nil {
		rec.MeasuredMs = now.Sub(rec.StartedAt.AsTime()).Milliseconds()
	}
	moved, notMoved := 0, []string{}
	for _, it := range rec.Items {
		if it.Status == ItemCompleted {
			moved++
		} else {
			notMoved = append(notMoved, it.Vm+" ("+it.Status+")")
		}
	}
	switch {
	case rec.State == StateCancelling:
		rec.State = StateCancelled
		rec.Message = fmt.Sprintf("cancelled: %d of %d VMs moved; not moved: %v", moved, len(rec.Items), notMoved)
	case len(notMoved) == 0 && len(left) == 0:
		rec.State = StateCompleted
		rec.Message = fmt.Sprintf("host %s is empty: %d VMs moved in %s (predicted %s)", rec.Host, moved,
			time.Duration(rec.MeasuredMs)*time.Millisecond, time.Duration(rec.PredictedEtaMs)*time.Millisecond)
	default:
		rec.State = StateIncomplete
		rec.Message = fmt.Sprintf("host %s is not empty: %d of %d VMs moved; not moved: %v; still on it: %v", rec.Host, moved, len(rec.Items), notMoved, left)
	}
	return true
}

// AddItems adds a pending item for every VM in names the record does not
// have yet (a VM found on the host after the plan), in name order.
func AddItems(rec *ferryv1.Evacuation, names []string) {
	have := map[string]bool{}
	for _, it := range rec.Items {
		have[it.Vm] = true
	}
	names = slices.Clone(names)
	sort.Strings(names)
	for _, n := range names {
		if !have[n] {
			rec.Items = append(rec.Items, &ferryv1.EvacuationItem{Vm: n, Status: ItemPending})
		}
	}
}
