package dashboard

import (
	"sort"
	"time"

	ferryv1 "github.com/ferryvm/ferry/gen/ferry/v1"
)

// Evacuation is one host's maintenance record as the page shows it: its
// state, plan and ETA, and each VM's progress.
type Evacuation struct {
	Host   string `json:"host"`
	Reason string `json:"reason"`
	// State is running, cancelling, completed, incomplete or cancelled.
	State   string   `json:"state"`
	Message string   `json:"message,omitempty"`
	Plan    []string `json:"plan,omitempty"`
	// PredictedEtaMs is the plan's forecast; MeasuredMs the time so far
	// (running) or taken (ended).
	PredictedEtaMs int64 `json:"predictedEtaMs"`
	MeasuredMs     int64 `json:"measuredMs"`
	// Planned counts its VMs, Done those moved, Failed those that failed
	// or found no destination, InFlight those migrating now.
	Planned  int        `json:"planned"`
	Done     int        `json:"done"`
	Failed   int        `json:"failed"`
	InFlight int        `json:"inFlight"`
	Items    []EvacItem `json:"items"`
}

// EvacItem is one VM of an evacuation.
type EvacItem struct {
	VM       string `json:"vm"`
	To       string `json:"to,omitempty"`
	Strategy string `json:"strategy,omitempty"`
	// Status is pending, migrating, completed, failed, unplaced or
	// cancelled.
	Status      string `json:"status"`
	MigrationID string `json:"migrationId,omitempty"`
	Attempts    int32  `json:"attempts"`
	// Progress is the fraction of the current migration done (0..1; 1
	// once completed).
	Progress    float64 `json:"progress"`
	PredictedMs int64   `json:"predictedMs"`
	MeasuredMs  int64   `json:"measuredMs"`
	Error       string  `json:"error,omitempty"`
}

// Balancer is the background balancer's last plan: its recommendations.
type Balancer struct {
	Mode            string     `json:"mode"`
	ImbalanceBefore float64    `json:"imbalanceBefore"`
	ImbalanceAfter  float64    `json:"imbalanceAfter"`
	Why             string     `json:"why,omitempty"`
	Active          bool       `json:"active"`
	PlannedAt       *time.Time `json:"plannedAt,omitempty"`
	Proposals       []Proposal `json:"proposals"`
}

// Proposal is one recommended migration.
type Proposal struct {
	VM                  string  `json:"vm"`
	From                string  `json:"from"`
	To                  string  `json:"to"`
	Strategy            string  `json:"strategy"`
	Gain                float64 `json:"gain"`
	Cost                float64 `json:"cost"`
	Reason              string  `json:"reason,omitempty"`
	PredictedMs         int64   `json:"predictedMs"`
	PredictedDowntimeMs int64   `json:"predictedDowntimeMs"`
}

// health is a host's verdict as the server's placement sees it: an
// unreachable host is unreachable whatever its agent last said, and an
// agent without checks reports none (healthy).
func health(h *ferryv1.Host) string {
	switch {
	case h.GetState() != "ready":
		return "unreachable"
	case h.GetHealth() == "":
		return "healthy"
	}
	return h.GetHealth()
}

// EvacuationCounts counts an evacuation's VMs: planned (all), done
// (completed), failed (failed or unplaced) and in flight (migrating).
func EvacuationCounts(e *ferryv1.Evacuation) (planned, done, failed, inFlight int) {
	for _, it := range e.GetItems() {
		planned++
		switch it.GetStatus() {
		case "completed":
			done++
		case "failed", "unplaced":
			failed++
		case "migrating":
			inFlight++
		}
	}
	return planned, done, failed, inFlight
}

func evacuationRow(e *ferryv1.Evacuation, now time.Time) Evacuation {
	r := Evacuation{Host: e.GetHost(), Reason: e.GetReason(), State: e.GetState(), Message: e.GetMessage(), Plan: e.GetPlan(),
		PredictedEtaMs: e.GetPredictedEtaMs(), MeasuredMs: e.GetMeasuredMs(), Items: []EvacItem{}}
	r.Planned, r.Done, r.Failed, r.InFlight = EvacuationCounts(e)
	if e.GetState() == "running" && e.GetStartedAt() != nil {
		r.MeasuredMs = max(r.MeasuredMs, now.Sub(e.GetStartedAt().AsTime()).Milliseconds())
	}
	items := append([]*ferryv1.EvacuationItem(nil), e.GetItems()...)
	sort.SliceStable(items, func(i, j int) bool { return items[i].GetOrder() < items[j].GetOrder() })
	for _, it := range items {
		p := it.GetProgress()
		if it.GetStatus() == "completed" {
			p = 1
		}
		r.Items = append(r.Items, EvacItem{VM: it.GetVm(), To: it.GetTo(), Strategy: it.GetStrategy(), Status: it.GetStatus(),
			MigrationID: it.GetMigrationId(), Attempts: it.GetAttempts(), Progress: p, PredictedMs: it.GetPredictedMs(),
			MeasuredMs: it.GetMeasuredMs(), Error: it.GetError()})
	}
	return r
}

func balancerView(b *ferryv1.BalanceResponse) *Balancer {
	if b == nil {
		return nil
	}
	r := &Balancer{Mode: b.GetMode(), ImbalanceBefore: b.GetImbalanceBefore(), ImbalanceAfter: b.GetImbalanceAfter(), Why: b.GetWhy(),
		Active: b.GetActive(), Proposals: []Proposal{}}
	if t := b.GetPlannedAt(); t != nil {
		pt := t.AsTime()
		r.PlannedAt = &pt
	}
	for _, p := range b.GetProposals() {
		r.Proposals = append(r.Proposals, Proposal{VM: p.GetVm(), From: p.GetFrom(), To: p.GetTo(), Strategy: p.GetStrategy(), Gain: p.GetGain(),
			Cost: p.GetCost(), Reason: p.GetReason(), PredictedMs: p.GetPredictedMs(), PredictedDowntimeMs: p.GetPredictedDowntimeMs()})
	}
	return r
}
