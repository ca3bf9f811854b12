package policy

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/ferryvm/ferry/internal/planner"
)

func ptr[T any](v T) *T { return &v }

func TestValidate(t *testing.T) {
	tests := []struct {
		name string
		set  Set
		want string // "" = valid
	}{
		{"zero is valid", Set{}, ""},
		{"negative parallel", Set{Cluster: Policy{MaxParallelPerSource: -1}}, "cluster.maxParallelPerSource = -1"},
		{"source above cluster", Set{Cluster: Policy{MaxParallelCluster: 2, MaxParallelPerSource: 3}}, "exceeds maxParallelCluster"},
		{"migration above host", Set{Cluster: Policy{BandwidthPerHost: 100, BandwidthPerMigration: 200}}, "one migration cannot use more than its host"},
		{"unknown strategy", Set{Cluster: Policy{AllowedStrategies: []string{"teleport"}}}, `unknown strategy "teleport"`},
		{"label without key", Set{Labels: []LabelOverride{{Value: "x"}}}, "labels[0].key is empty"},
		{"duplicate label", Set{Labels: []LabelOverride{{Key: "a", Value: "1"}, {Key: "a", Value: "1"}}}, "labels[1]: label a=1 has two overrides"},
		{"empty strategies override", Set{VMs: map[string]Override{"web": {AllowedStrategies: []string{}}}}, "vms[web].allowedStrategies is empty"},
		{"downtime too long", Set{VMs: map[string]Override{"db": {MaxDowntime: ptr(2 * time.Minute)}}}, "vms[db].maxDowntime = 2m0s"},
		{"downtime below a millisecond", Set{Cluster: Policy{MaxDowntime: time.Microsecond}}, "cluster.maxDowntime = 1µs"},
		{"negative progress timeout", Set{Labels: []LabelOverride{{Key: "t", Value: "g", Override: Override{ProgressTimeout: ptr(-time.Second)}}}}, "labels[0].override.progressTimeout"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.set.Validate()
			if tc.want == "" {
				if err != nil {
					t.Fatalf("Validate = %v, want nil", err)
				}
				return
			}
			if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Validate = %v, want ErrInvalid containing %q", err, tc.want)
			}
		})
	}
}

func TestResolve(t *testing.T) {
	s := Set{
		Cluster: Policy{MaxParallelCluster: 4, MaxDowntime: 500 * time.Millisecond, BandwidthPerHost: 1000},
		Labels: []LabelOverride{
			{Key: "tier", Value: "gold", Override: Override{MaxDowntime: ptr(100 * time.Millisecond), AllowedStrategies: []string{"precopy", "postcopy"}}},
			{Key: "app", Value: "db", Override: Override{MaxDowntime: ptr(50 * time.Millisecond)}},
		},
		VMs: map[string]Override{"db-1": {BandwidthPerMigration: ptr(300.0)}},
	}
	if err := s.Validate(); err != nil {
		t.Fatal(err)
	}
	plain := s.Resolve("web-1", nil)
	if plain.MaxDowntime != 500*time.Millisecond || plain.MaxParallelPerSource != 2 || plain.ProgressTimeout != DefaultProgressTimeout {
		t.Errorf("plain = %+v", plain.Policy)
	}
	if got := strings.Join(plain.AllowedStrategies, ","); got != "precopy,converge,postcopy,hybrid" {
		t.Errorf("default strategies = %s", got)
	}
	// app=db sorts before tier=gold, so tier=gold's 100ms wins.
	gold := s.Resolve("db-1", map[string]string{"tier": "gold", "app": "db"})
	if gold.MaxDowntime != 100*time.Millisecond {
		t.Errorf("gold downtime = %v, want 100ms", gold.MaxDowntime)
	}
	if got := strings.Join(gold.Sources, "|"); got != "cluster|label app=db|label tier=gold|vm db-1" {
		t.Errorf("sources = %s", got)
	}
	pp := gold.PlannerPolicy(4 << 30)
	if !pp.AllowPrecopy || pp.AllowConverge || !pp.AllowPostcopy || pp.AllowCold || pp.MaxTotal != 4*DefaultCompletionTimeoutPerGiB {
		t.Errorf("planner policy = %+v", pp)
	}
	if b := gold.Bandwidth(2000, 4); b != 250 {
		t.Errorf("bandwidth = %v, want 250 (host cap 1000 over 4)", b)
	}
	if b := gold.Bandwidth(2000, 1); b != 300 {
		t.Errorf("bandwidth = %v, want 300 (per-migration cap)", b)
	}
	// Resolve must not alias the set's slices.
	gold.AllowedStrategies[0] = planner.StrategyCold
	if s.Labels[0].Override.AllowedStrategies[0] != "precopy" {
		t.Error("Resolve aliased the override's strategies")
	}
}
