package server

import (
	"context"
	"testing"

	"connectrpc.com/connect"
	ferryv1 "github.com/ferryvm/ferry/gen/ferry/v1"
	"github.com/ferryvm/ferry/internal/auth"
)

// TestHeartbeatOnlyForOwnHost: an agent certificate reports only its own
// host name.
func TestHeartbeatOnlyForOwnHost(t *testing.T) {
	s, _ := newTestServer(t)
	h := &hostService{s}
	ctx := auth.WithCaller(context.Background(), auth.Caller{Role: auth.RoleAgent, ID: "agent:h2", Host: "h2"})
	_, err := h.Heartbeat(ctx, connect.NewRequest(&ferryv1.HeartbeatRequest{Host: &ferryv1.Host{Name: "h1", Address: "unix:///nonexistent/h1"}}))
	if connect.CodeOf(err) != connect.CodePermissionDenied {
		t.Fatalf("h2's agent reporting h1: %v, want permission_denied", err)
	}
	if _, err := h.Heartbeat(ctx, connect.NewRequest(&ferryv1.HeartbeatRequest{Host: &ferryv1.Host{Name: "h2", Address: "unix:///nonexistent/h2"}})); err != nil {
		t.Fatalf("h2's agent reporting h2: %v", err)
	}
}
