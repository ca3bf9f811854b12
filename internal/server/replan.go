package server

import (
	"context"
	"fmt"

	ferryv1 "github.com/ferryvm/ferry/gen/ferry/v1"
)

// replanMigration re-plans a migration's report for the strategy the
// engine retries it as (exec.Config.Replan): a pre-copy auto chose that
// could not converge at its downtime cap, retried once as hybrid (or
// converge). The plan's inputs stay those measured at the start; the QEMU
// tuning is chosen anew for the strategy (hybrid: one stream, postcopy-ram
// armed, postcopy-preempt where both hosts have it), the prediction is the
// plan's for it, and the options name it, so the knobs and the controller
// built from the report are the new strategy's.
func (s *Server) replanMigration(ctx context.Context, m *ferryv1.Migration, strategy string) error {
	src, err := s.store.GetHost(ctx, m.GetFrom())
	if err != nil {
		return fmt.Errorf("source host %s of the re-plan: %w", m.GetFrom(), err)
	}
	dst, err := s.store.GetHost(ctx, m.GetTo())
	if err != nil {
		return fmt.Errorf("destination host %s of the re-plan: %w", m.GetTo(), err)
	}
	m.Strategy = strategy
	if m.Options != nil {
		m.Options.Strategy = strategy
	}
	if plan := m.GetPlan(); plan != nil && plan.Inputs != nil {
		plan.Tuning = tunePlan(strategy, plan.Inputs, m.GetOptions(), src, dst)
		m.Predicted = predictionFor(plan, strategy)
	}
	return nil
}
