package store_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/ferryvm/ferry/internal/policy"
	"github.com/ferryvm/ferry/internal/store"
)

func TestPolicies(t *testing.T) {
	s := newEtcdStore(t).(*store.Etcd)
	ctx := context.Background()
	got, err := s.GetPolicies(ctx)
	if err != nil || got.Cluster.MaxParallelCluster != 0 || len(got.VMs) != 0 {
		t.Fatalf("empty cluster: %+v, %v; want the zero set", got, err)
	}
	d := 50 * time.Millisecond
	set := policy.Set{Cluster: policy.Policy{MaxParallelCluster: 4, MaxParallelPerSource: 2},
		VMs: map[string]policy.Override{"db": {MaxDowntime: &d}}}
	if err := s.PutPolicies(ctx, set); err != nil {
		t.Fatal(err)
	}
	got, err = s.GetPolicies(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if got.Cluster.MaxParallelCluster != 4 || got.VMs["db"].MaxDowntime == nil || *got.VMs["db"].MaxDowntime != d {
		t.Fatalf("round trip: %+v", got)
	}
	bad := policy.Set{Cluster: policy.Policy{MaxParallelPerDest: -1}}
	if err := s.PutPolicies(ctx, bad); !errors.Is(err, policy.ErrInvalid) {
		t.Fatalf("invalid set: err = %v, want policy.ErrInvalid", err)
	}
	if got, _ := s.GetPolicies(ctx); got.Cluster.MaxParallelCluster != 4 {
		t.Fatalf("an invalid set overwrote the stored one: %+v", got)
	}
}
