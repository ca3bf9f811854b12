package agent

import (
	"context"
	"time"

	"connectrpc.com/connect"
	ferryv1 "github.com/ferryvm/ferry/gen/ferry/v1"
)

// migrationService implements ferryv1connect.MigrationAgentServiceHandler:
// the steps of both sides of a migration, each idempotent.
type migrationService struct{ a *Agent }

func (s *migrationService) PrepareIncoming(ctx context.Context, req *connect.Request[ferryv1.PrepareIncomingRequest]) (*connect.Response[ferryv1.PrepareIncomingResponse], error) {
	uri, err := s.a.prepareIncoming(ctx, req.Msg)
	if err != nil {
		return nil, err
	}
	return connect.NewResponse(&ferryv1.PrepareIncomingResponse{Uri: uri}), nil
}

func (s *migrationService) QueryIncoming(_ context.Context, req *connect.Request[ferryv1.MigrationStepRequest]) (*connect.Response[ferryv1.IncomingStatusResponse], error) {
	v, err := s.a.lookup(req.Msg.Name)
	if err != nil {
		return nil, err
	}
	return connect.NewResponse(&ferryv1.IncomingStatusResponse{Status: v.incomingStatus()}), nil
}

func (s *migrationService) ArmResume(_ context.Context, req *connect.Request[ferryv1.MigrationStepRequest]) (*connect.Response[ferryv1.IncomingStatusResponse], error) {
	st, err := s.a.armResume(req.Msg.Name, req.Msg.MigrationId)
	if err != nil {
		return nil, err
	}
	return connect.NewResponse(&ferryv1.IncomingStatusResponse{Status: st}), nil
}

func (s *migrationService) FinishIncoming(ctx context.Context, req *connect.Request[ferryv1.MigrationStepRequest]) (*connect.Response[ferryv1.IncomingStatusResponse], error) {
	st, err := s.a.finishIncoming(ctx, req.Msg.Name, req.Msg.MigrationId)
	if err != nil {
		return nil, err
	}
	return connect.NewResponse(&ferryv1.IncomingStatusResponse{Status: st}), nil
}

func (s *migrationService) AbortIncoming(_ context.Context, req *connect.Request[ferryv1.MigrationStepRequest]) (*connect.Response[ferryv1.StepResponse], error) {
	if err := s.a.abortIncoming(req.Msg.Name, req.Msg.MigrationId); err != nil {
		return nil, err
	}
	return connect.NewResponse(&ferryv1.StepResponse{}), nil
}

func (s *migrationService) StartOutgoing(ctx context.Context, req *connect.Request[ferryv1.StartOutgoingRequest]) (*connect.Response[ferryv1.OutgoingStatusResponse], error) {
	st, err := s.a.startOutgoing(ctx, req.Msg)
	if err != nil {
		return nil, err
	}
	return connect.NewResponse(&ferryv1.OutgoingStatusResponse{Status: st}), nil
}

func (s *migrationService) QueryOutgoing(ctx context.Context, req *connect.Request[ferryv1.MigrationStepRequest]) (*connect.Response[ferryv1.OutgoingStatusResponse], error) {
	v, out, err := s.a.outgoingFor(req.Msg.Name, req.Msg.MigrationId)
	if err != nil {
		return nil, err
	}
	if w := req.Msg.WaitMs; w > 0 {
		out.waitChange(ctx, req.Msg.KnownStatus, time.Duration(min(w, 5000))*time.Millisecond)
	}
	st, err := v.outgoingStatus(ctx)
	if err != nil {
		return nil, err
	}
	return connect.NewResponse(&ferryv1.OutgoingStatusResponse{Status: st}), nil
}

func (s *migrationService) ContinueOutgoing(ctx context.Context, req *connect.Request[ferryv1.MigrationStepRequest]) (*connect.Response[ferryv1.OutgoingStatusResponse], error) {
	st, err := s.a.continueOutgoing(ctx, req.Msg.Name, req.Msg.MigrationId)
	if err != nil {
		return nil, err
	}
	return connect.NewResponse(&ferryv1.OutgoingStatusResponse{Status: st}), nil
}

func (s *migrationService) CancelOutgoing(ctx context.Context, req *connect.Request[ferryv1.MigrationStepRequest]) (*connect.Response[ferryv1.StepResponse], error) {
	st, err := s.a.cancelOutgoing(ctx, req.Msg.Name, req.Msg.MigrationId)
	if err != nil {
		return nil, err
	}
	return connect.NewResponse(&ferryv1.StepResponse{Vm: st}), nil
}

func (s *migrationService) FinishOutgoing(ctx context.Context, req *connect.Request[ferryv1.MigrationStepRequest]) (*connect.Response[ferryv1.StepResponse], error) {
	if err := s.a.finishOutgoing(ctx, req.Msg.Name, req.Msg.MigrationId); err != nil {
		return nil, err
	}
	return connect.NewResponse(&ferryv1.StepResponse{}), nil
}
