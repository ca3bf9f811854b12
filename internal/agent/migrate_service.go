package agent

import (
	"context"
	"fmt"
	agentv1 "github.com/ferryvm/ferry/gen/ferry/agent/v1"
	"time"

	"connectrpc.com/connect"
	"github.com/ferryvm/ferry/internal/qmp"
)

// migrationService implements agentv1connect.MigrationAgentServiceHandler:
// the steps of both sides of a migration, each idempotent.
type migrationService struct{ a *Agent }

func (s *migrationService) PrepareIncoming(ctx context.Context, req *connect.Request[agentv1.PrepareIncomingRequest]) (*connect.Response[agentv1.PrepareIncomingResponse], error) {
	uri, nbd, err := s.a.prepareIncoming(ctx, req.Msg)
	if err != nil {
		return nil, err
	}
	return connect.NewResponse(&agentv1.PrepareIncomingResponse{Uri: uri, NbdAddress: nbd, Transport: transport(req.Msg.InsecureTransport)}), nil
}

func (s *migrationService) QueryIncoming(_ context.Context, req *connect.Request[agentv1.MigrationStepRequest]) (*connect.Response[agentv1.IncomingStatusResponse], error) {
	st, err := s.a.queryIncoming(req.Msg.Name, req.Msg.MigrationId)
	if err != nil {
		return nil, err
	}
	return connect.NewResponse(&agentv1.IncomingStatusResponse{Status: st}), nil
}

func (s *migrationService) ArmResume(ctx context.Context, req *connect.Request[agentv1.MigrationStepRequest]) (*connect.Response[agentv1.IncomingStatusResponse], error) {
	st, err := s.a.armResume(ctx, req.Msg.Name, req.Msg.MigrationId)
	if err != nil {
		return nil, err
	}
	return connect.NewResponse(&agentv1.IncomingStatusResponse{Status: st}), nil
}

func (s *migrationService) FinishIncoming(ctx context.Context, req *connect.Request[agentv1.MigrationStepRequest]) (*connect.Response[agentv1.IncomingStatusResponse], error) {
	st, err := s.a.finishIncoming(ctx, req.Msg.Name, req.Msg.MigrationId)
	if err != nil {
		return nil, err
	}
	return connect.NewResponse(&agentv1.IncomingStatusResponse{Status: st}), nil
}

func (s *migrationService) AbortIncoming(ctx context.Context, req *connect.Request[agentv1.MigrationStepRequest]) (*connect.Response[agentv1.StepResponse], error) {
	if err := s.a.abortIncoming(ctx, req.Msg.Name, req.Msg.MigrationId); err != nil {
		return nil, err
	}
	return connect.NewResponse(&agentv1.StepResponse{}), nil
}

func (s *migrationService) StartOutgoing(ctx context.Context, req *connect.Request[agentv1.StartOutgoingRequest]) (*connect.Response[agentv1.OutgoingStatusResponse], error) {
	st, err := s.a.startOutgoing(ctx, req.Msg)
	if err != nil {
		return nil, err
	}
	return connect.NewResponse(&agentv1.OutgoingStatusResponse{Status: st}), nil
}

func (s *migrationService) QueryOutgoing(ctx context.Context, req *connect.Request[agentv1.MigrationStepRequest]) (*connect.Response[agentv1.OutgoingStatusResponse], error) {
	v, out, err := s.a.outgoingFor(req.Msg.Name, req.Msg.MigrationId)
	if connect.CodeOf(err) == connect.CodeNotFound {
		// The contract: a VM whose QEMU lives here but that has no such
		// outgoing migration answers status "none"; NotFound means the
		// VM (its QEMU) is not here.
		if st, ok := s.a.noOutgoing(ctx, req.Msg.Name); ok {
			return connect.NewResponse(&agentv1.OutgoingStatusResponse{Status: st}), nil
		}
	}
	if err != nil {
		return nil, err
	}
	if err := v.setDowntimeLimit(ctx, out, req.Msg.DowntimeLimitMs); err != nil {
		s.a.log.Warn("stepped downtime target not applied; the next poll tries again", "vm", req.Msg.Name, "err", err)
	}
	if err := v.setMaxBandwidth(ctx, out, req.Msg.MaxBandwidthBytes); err != nil {
		s.a.log.Warn("bandwidth share not applied; the next poll tries again", "vm", req.Msg.Name, "err", err)
	}
	if w := req.Msg.WaitMs; w > 0 {
		out.waitChange(ctx, req.Msg.KnownStatus, time.Duration(min(w, 5000))*time.Millisecond)
	}
	st, err := v.outgoingStatus(ctx)
	if err != nil {
		return nil, err
	}
	return connect.NewResponse(&agentv1.OutgoingStatusResponse{Status: st}), nil
}

func (s *migrationService) ContinueOutgoing(ctx context.Context, req *connect.Request[agentv1.MigrationStepRequest]) (*connect.Response[agentv1.OutgoingStatusResponse], error) {
	st, err := s.a.continueOutgoing(ctx, req.Msg.Name, req.Msg.MigrationId)
	if err != nil {
		return nil, err
	}
	return connect.NewResponse(&agentv1.OutgoingStatusResponse{Status: st}), nil
}

func (s *migrationService) CancelOutgoing(ctx context.Context, req *connect.Request[agentv1.MigrationStepRequest]) (*connect.Response[agentv1.StepResponse], error) {
	st, err := s.a.cancelOutgoing(ctx, req.Msg.Name, req.Msg.MigrationId, req.Msg.ResumeCompleted)
	if err != nil {
		return nil, err
	}
	return connect.NewResponse(&agentv1.StepResponse{Vm: st}), nil
}

func (s *migrationService) FinishOutgoing(ctx context.Context, req *connect.Request[agentv1.MigrationStepRequest]) (*connect.Response[agentv1.StepResponse], error) {
	if err := s.a.finishOutgoing(ctx, req.Msg.Name, req.Msg.MigrationId); err != nil {
		return nil, err
	}
	return connect.NewResponse(&agentv1.StepResponse{}), nil
}

func (s *migrationService) StartPostcopy(ctx context.Context, req *connect.Request[agentv1.MigrationStepRequest]) (*connect.Response[agentv1.OutgoingStatusResponse], error) {
	st, err := s.a.startPostcopy(ctx, req.Msg.Name, req.Msg.MigrationId)
	if err != nil {
		return nil, err
	}
	return connect.NewResponse(&agentv1.OutgoingStatusResponse{Status: st}), nil
}

func (s *migrationService) RecoverIncoming(ctx context.Context, req *connect.Request[agentv1.MigrationStepRequest]) (*connect.Response[agentv1.RecoverResponse], error) {
	uri, err := s.a.recoverIncoming(ctx, req.Msg.Name, req.Msg.MigrationId)
	if err != nil {
		return nil, err
	}
	return connect.NewResponse(&agentv1.RecoverResponse{Uri: uri}), nil
}

func (s *migrationService) ResumeOutgoing(ctx context.Context, req *connect.Request[agentv1.ResumeOutgoingRequest]) (*connect.Response[agentv1.OutgoingStatusResponse], error) {
	st, err := s.a.resumeOutgoing(ctx, req.Msg)
	if err != nil {
		return nil, err
	}
	return connect.NewResponse(&agentv1.OutgoingStatusResponse{Status: st}), nil
}

func (s *migrationService) Measure(ctx context.Context, req *connect.Request[agentv1.MeasureRequest]) (*connect.Response[agentv1.MeasureResponse], error) {
	resp, err := s.a.measure(ctx, req.Msg)
	if err != nil {
		return nil, err
	}
	return connect.NewResponse(resp), nil
}

func (s *migrationService) ProbeListen(context.Context, *connect.Request[agentv1.ProbeListenRequest]) (*connect.Response[agentv1.ProbeListenResponse], error) {
	addr, err := s.a.probeListen()
	if err != nil {
		return nil, err
	}
	return connect.NewResponse(&agentv1.ProbeListenResponse{Address: addr}), nil
}

func (s *migrationService) ProbeSend(ctx context.Context, req *connect.Request[agentv1.ProbeSendRequest]) (*connect.Response[agentv1.ProbeSendResponse], error) {
	d := time.Duration(req.Msg.DurationMs) * time.Millisecond
	if d <= 0 || d > 10*time.Second {
		return nil, connect.NewError(connect.CodeInvalidArgument, fmt.Errorf("duration_ms: must be 1..10000, got %d", req.Msg.DurationMs))
	}
	if err := probePeer(req.Msg.Address, s.a.cfg.MigrationIP); err != nil {
		return nil, connect.NewError(connect.CodeInvalidArgument, err)
	}
	resp, err := probeSend(ctx, req.Msg.Address, d)
	if err != nil {
		return nil, err
	}
	return connect.NewResponse(resp), nil
}

func (s *migrationService) PauseMigration(ctx context.Context, req *connect.Request[agentv1.MigrationStepRequest]) (*connect.Response[agentv1.StepResponse], error) {
	v, err := s.a.lookup(req.Msg.Name)
	if err != nil {
		return nil, err
	}
	v.mu.Lock()
	mon := v.mon
	v.mu.Unlock()
	if mon == nil {
		return nil, failedPrecondition("VM %s has no QEMU on host %s", req.Msg.Name, s.a.cfg.Name)
	}
	info, qerr := mon.QueryMigrate(ctx)
	if qerr == nil && info.CurrentStatus() == qmp.MigrationStatusPostcopyPaused {
		return connect.NewResponse(&agentv1.StepResponse{}), nil // paused already: a retried step
	}
	if qerr == nil && reconnecting(info.CurrentStatus()) && v.dropOutboundRelay() {
		// A relayed source still reconnecting after a resume into a dead
		// link: its relay took the connection and may never fail it.
		// Closing the relay ends QEMU's channels, and QEMU pauses; the next
		// resume opens a relay again (resumeRelayed).
		if waitPostcopyPaused(ctx, mon, 2*time.Second) {
			s.a.log.Info("post-copy paused on request (its relay closed)", "vm", req.Msg.Name, "migration", req.Msg.MigrationId)
			return connect.NewResponse(&agentv1.StepResponse{}), nil
		}
	}
	if err := mon.MigratePause(ctx); err != nil {
		return nil, fmt.Errorf("migrate-pause: %w", err)
	}
	s.a.log.Info("post-copy paused on request", "vm", req.Msg.Name, "migration", req.Msg.MigrationId)
	return connect.NewResponse(&agentv1.StepResponse{}), nil
}
