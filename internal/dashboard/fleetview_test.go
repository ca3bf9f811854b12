package dashboard

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	ferryv1 "github.com/ferryvm/ferry/gen/ferry/v1"
)

// TestBuildFleet: each host's health (an unreachable host is unreachable
// whatever its agent said; no checks is healthy), its reasons and its
// maintenance state from its evacuation record; the evacuation with its
// plan, ETA, counts and per-VM progress in plan order; the balancer's
// recommendations.
func TestBuildFleet(t *testing.T) {
	now := t0.Add(time.Minute)
	in := Input{
		Hosts: []*ferryv1.Host{
			{Name: "h1", State: "ready"},
			{Name: "h2", State: "ready", Health: "degraded", HealthDetail: "disk /var: 97% full", Maintenance: true},
			{Name: "h3", State: "unreachable", Health: "healthy"},
		},
		Evacuations: []*ferryv1.Evacuation{{Host: "h2", Reason: "degraded", State: "running", Plan: []string{"plan: 3 VMs", "a → h1"},
			PredictedEtaMs: 9000, StartedAt: ts(45 * time.Second), Items: []*ferryv1.EvacuationItem{
				{Vm: "c", Status: "unplaced", Order: 3, Error: "no host has room"},
				{Vm: "a", To: "h1", Status: "completed", Order: 1, Progress: 0.98, MeasuredMs: 4000},
				{Vm: "b", To: "h1", Status: "migrating", Order: 2, Progress: 0.4, MigrationId: "mig-9", Attempts: 1},
			}}},
		Balance: &ferryv1.BalanceResponse{Mode: "recommend", ImbalanceBefore: 0.3, ImbalanceAfter: 0.1, PlannedAt: ts(0),
			Proposals: []*ferryv1.BalanceProposal{{Vm: "a", From: "h1", To: "h3", Strategy: "precopy", Gain: 0.2, PredictedMs: 3000}}},
	}
	s := Build(in, now)
	want := []struct{ health, detail, evac string }{{"healthy", "", ""}, {"degraded", "disk /var: 97% full", "running"}, {"unreachable", "", ""}}
	for i, w := range want {
		h := s.Hosts[i]
		if h.Health != w.health || h.HealthDetail != w.detail || h.Evacuation != w.evac || h.Maintenance != (w.evac != "") {
			t.Errorf("host %s: health %q (%q), maintenance %v %q; want %+v", h.Name, h.Health, h.HealthDetail, h.Maintenance, h.Evacuation, w)
		}
	}
	if len(s.Evacuations) != 1 {
		t.Fatalf("%d evacuations, want 1", len(s.Evacuations))
	}
	e := s.Evacuations[0]
	if e.Planned != 3 || e.Done != 1 || e.Failed != 1 || e.InFlight != 1 || e.PredictedEtaMs != 9000 || e.MeasuredMs != 15000 || len(e.Plan) != 2 {
		t.Errorf("evacuation %+v: want 3 planned, 1 done, 1 failed, 1 in flight, ETA 9 s, 15 s so far, the plan", e)
	}
	var order []string
	for _, it := range e.Items {
		order = append(order, it.VM)
	}
	if strings.Join(order, ",") != "a,b,c" || e.Items[0].Progress != 1 || e.Items[1].Progress != 0.4 || e.Items[1].MigrationID != "mig-9" || e.Items[2].Error == "" {
		t.Errorf("items %+v: want plan order, a done (progress 1), b at 0.4, c's reason", e.Items)
	}
	b := s.Balancer
	if b == nil || b.Mode != "recommend" || len(b.Proposals) != 1 || b.Proposals[0].To != "h3" || b.PlannedAt == nil || b.ImbalanceAfter != 0.1 {
		t.Errorf("balancer %+v", b)
	}
	empty, err := json.Marshal(Build(Input{}, now))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(empty), `"evacuations":[]`) || strings.Contains(string(empty), `"balancer"`) {
		t.Errorf("empty snapshot %s: want an empty list of evacuations and no balancer", empty)
	}
}
