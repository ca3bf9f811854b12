package exec

import (
	"context"

	agentv1 "github.com/ferryvm/ferry/gen/ferry/agent/v1"
	ferryv1 "github.com/ferryvm/ferry/gen/ferry/v1"
	"github.com/ferryvm/ferry/internal/migration/core"
)

// attempt returns the agent to perform a with: ag itself for the first
// attempt, else ag with every migration step keyed by the attempt's id
// (core.Action.MigrationID, "<id>-a<n>"): an agent refuses to start again
// an id it cancelled or ended, so a retried pre-copy needs its own.
func (p *performer) attempt(ag Agent, a core.Action) Agent {
	if a.MigrationID == "" || a.MigrationID == p.id {
		return ag
	}
	return attemptAgent{Agent: ag, id: a.MigrationID}
}

// attemptAgent is an Agent whose migration steps carry id as their
// migration id; the VM lifecycle calls pass through unchanged.
type attemptAgent struct {
	Agent
	id string
}

func (g attemptAgent) step(req *agentv1.MigrationStepRequest) *agentv1.MigrationStepRequest {
	req.MigrationId = g.id
	return req
}

func (g attemptAgent) PrepareIncoming(ctx context.Context, req *agentv1.PrepareIncomingRequest) (*agentv1.PrepareIncomingResponse, error) {
	req.MigrationId = g.id
	return g.Agent.PrepareIncoming(ctx, req)
}

func (g attemptAgent) QueryIncoming(ctx context.Context, req *agentv1.MigrationStepRequest) (*agentv1.IncomingStatus, error) {
	return g.Agent.QueryIncoming(ctx, g.step(req))
}

func (g attemptAgent) ArmResume(ctx context.Context, req *agentv1.MigrationStepRequest) (*agentv1.IncomingStatus, error) {
	return g.Agent.ArmResume(ctx, g.step(req))
}

func (g attemptAgent) FinishIncoming(ctx context.Context, req *agentv1.MigrationStepRequest) (*agentv1.IncomingStatus, error) {
	return g.Agent.FinishIncoming(ctx, g.step(req))
}

func (g attemptAgent) AbortIncoming(ctx context.Context, req *agentv1.MigrationStepRequest) error {
	return g.Agent.AbortIncoming(ctx, g.step(req))
}

func (g attemptAgent) StartOutgoing(ctx context.Context, req *agentv1.StartOutgoingRequest) (*agentv1.OutgoingStatus, error) {
	req.MigrationId = g.id
	return g.Agent.StartOutgoing(ctx, req)
}

func (g attemptAgent) QueryOutgoing(ctx context.Context, req *agentv1.MigrationStepRequest) (*agentv1.OutgoingStatus, error) {
	return g.Agent.QueryOutgoing(ctx, g.step(req))
}

func (g attemptAgent) ContinueOutgoing(ctx context.Context, req *agentv1.MigrationStepRequest) (*agentv1.OutgoingStatus, error) {
	return g.Agent.ContinueOutgoing(ctx, g.step(req))
}

func (g attemptAgent) FinishOutgoing(ctx context.Context, req *agentv1.MigrationStepRequest) error {
	return g.Agent.FinishOutgoing(ctx, g.step(req))
}

func (g attemptAgent) StartPostcopy(ctx context.Context, req *agentv1.MigrationStepRequest) (*agentv1.OutgoingStatus, error) {
	return g.Agent.StartPostcopy(ctx, g.step(req))
}

func (g attemptAgent) PauseMigration(ctx context.Context, req *agentv1.MigrationStepRequest) error {
	return g.Agent.PauseMigration(ctx, g.step(req))
}

func (g attemptAgent) RecoverIncoming(ctx context.Context, req *agentv1.MigrationStepRequest) (string, error) {
	return g.Agent.RecoverIncoming(ctx, g.step(req))
}

func (g attemptAgent) ResumeOutgoing(ctx context.Context, req *agentv1.ResumeOutgoingRequest) (*agentv1.OutgoingStatus, error) {
	req.MigrationId = g.id
	return g.Agent.ResumeOutgoing(ctx, req)
}

func (g attemptAgent) CancelOutgoingVM(ctx context.Context, req *agentv1.MigrationStepRequest) (*ferryv1.VMStatus, error) {
	return g.Agent.CancelOutgoingVM(ctx, g.step(req))
}
