package store

import (
	"context"
	"encoding/json"
	"fmt"

	"github.com/ferryvm/ferry/internal/policy"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// policiesKey holds the cluster's migration policies (policy.Set, JSON).
const policiesKey = "/ferry/policies"

// PutPolicies validates set and stores it as the cluster's migration
// policies (fenced like every write). An invalid set is refused with the
// policy's error (policy.ErrInvalid) and nothing is written.
func (s *Etcd) PutPolicies(ctx context.Context, set policy.Set) error {
	if err := set.Validate(); err != nil {
		return fmt.Errorf("store policies: %w", err)
	}
	b, err := json.Marshal(set)
	if err != nil {
		return fmt.Errorf("store policies: encode: %w", err)
	}
	if _, _, err := s.write(ctx, "store policies", nil, []clientv3.Op{clientv3.OpPut(policiesKey, string(b))}); err != nil {
		return err
	}
	return nil
}

// GetPolicies returns the cluster's migration policies; a cluster that
// never stored any has the zero Set (every default).
func (s *Etcd) GetPolicies(ctx context.Context) (policy.Set, error) {
	resp, err := s.c.Get(ctx, policiesKey)
	if err != nil {
		return policy.Set{}, fmt.Errorf("get policies: %w", err)
	}
	if len(resp.Kvs) == 0 {
		return policy.Set{}, nil
	}
	var set policy.Set
	if err := json.Unmarshal(resp.Kvs[0].Value, &set); err != nil {
		return policy.Set{}, fmt.Errorf("get policies: decode %s: %w", policiesKey, err)
	}
	return set, nil
}
