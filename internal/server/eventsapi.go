package server

import (
	"context"
	"fmt"

	"connectrpc.com/connect"
	ferryv1 "github.com/ferryvm/ferry/gen/ferry/v1"
)

// eventService serves the event history from etcd (every replica).
type eventService struct{ s *Server }

// ListEvents implements ferryv1connect.EventServiceHandler.
func (h *eventService) ListEvents(ctx context.Context, req *connect.Request[ferryv1.ListEventsRequest]) (*connect.Response[ferryv1.ListEventsResponse], error) {
	if req.Msg.Limit < 0 {
		return nil, connect.NewError(connect.CodeInvalidArgument, fmt.Errorf("limit: must be 0 (all) or positive, got %d", req.Msg.Limit))
	}
	all, err := h.s.store.ListEvents(ctx)
	if err != nil {
		return nil, connect.NewError(connect.CodeUnavailable, err)
	}
	var out []*ferryv1.Event
	for _, e := range all {
		if eventMatches(e, req.Msg.Vm) {
			out = append(out, e)
		}
	}
	if n := int(req.Msg.Limit); n > 0 && len(out) > n {
		out = out[len(out)-n:]
	}
	return connect.NewResponse(&ferryv1.ListEventsResponse{Events: out}), nil
}

// WatchEvents implements ferryv1connect.EventServiceHandler: once the
// watch is in place it sends a response without an event (the client then
// knows nothing later is missed), then every matching event recorded until
// the client goes away.
func (h *eventService) WatchEvents(ctx context.Context, req *connect.Request[ferryv1.WatchEventsRequest], stream *connect.ServerStream[ferryv1.WatchEventsResponse]) error {
	ready := func() error { return stream.Send(&ferryv1.WatchEventsResponse{}) }
	err := h.s.store.WatchEvents(ctx, ready, func(e *ferryv1.Event) error {
		if !eventMatches(e, req.Msg.Vm) {
			return nil
		}
		return stream.Send(&ferryv1.WatchEventsResponse{Event: e})
	})
	if ctx.Err() != nil {
		return nil // the client left
	}
	return connect.NewError(connect.CodeUnavailable, err)
}
