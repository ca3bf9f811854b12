package store

import (
	"context"
	"encoding/json"
	"fmt"

	"github.com/ferryvm/ferry/internal/rebalance"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// balancerKey holds the balancer's state (rebalance.State, JSON).
const balancerKey = "/ferry/balancer"

// GetBalancerState returns the balancer's persisted state (zero if none).
func (s *Etcd) GetBalancerState(ctx context.Context) (rebalance.State, error) {
	resp, err := s.c.Get(ctx, balancerKey)
	if err != nil {
		return rebalance.State{}, fmt.Errorf("get balancer state: %w", err)
	}
	var st rebalance.State
	if len(resp.Kvs) == 0 {
		return st, nil
	}
	if err := json.Unmarshal(resp.Kvs[0].Value, &st); err != nil {
		return rebalance.State{}, fmt.Errorf("get balancer state: decode %s: %w", balancerKey, err)
	}
	return st, nil
}

// PutBalancerState stores the balancer's state (fenced like every write).
func (s *Etcd) PutBalancerState(ctx context.Context, st rebalance.State) error {
	b, err := json.Marshal(st)
	if err != nil {
		return fmt.Errorf("store balancer state: %w", err)
	}
	_, _, err = s.write(ctx, "store balancer state", nil, []clientv3.Op{clientv3.OpPut(balancerKey, string(b))})
	return err
}
