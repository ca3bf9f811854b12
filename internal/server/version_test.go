package server

import (
	"context"
	"errors"
	"strings"
	"testing"

	"connectrpc.com/connect"
	ferryv1 "github.com/ferryvm/ferry/gen/ferry/v1"
	"github.com/ferryvm/ferry/internal/version"
)

func TestHeartbeatRefusesAgentTwoMinorVersionsApart(t *testing.T) {
	s, st := newTestServer(t)
	s.version = "1.4.0"
	h := &hostService{s}
	ctx := context.Background()
	_, err := h.Heartbeat(ctx, connect.NewRequest(&ferryv1.HeartbeatRequest{Host: &ferryv1.Host{Name: "old", Address: "unix:///nonexistent/old", FerryVersion: "1.2.5"}}))
	if connect.CodeOf(err) != connect.CodeFailedPrecondition || !errors.Is(err, version.ErrIncompatible) {
		t.Fatalf("heartbeat of a 1.2.5 agent to a 1.4.0 server: %v, want FailedPrecondition wrapping ErrIncompatible", err)
	}
	for _, want := range []string{"1.4.0", "1.2.5", "old"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("refusal %q does not name %s", err, want)
		}
	}
	if _, err := st.GetHost(ctx, "old"); err == nil {
		t.Fatal("a refused agent was registered")
	}
	resp, err := h.Heartbeat(ctx, connect.NewRequest(&ferryv1.HeartbeatRequest{Host: &ferryv1.Host{Name: "near", Address: "unix:///nonexistent/near", FerryVersion: "1.3.9"}}))
	if err != nil {
		t.Fatalf("heartbeat of a 1.3.9 agent to a 1.4.0 server: %v, want accepted", err)
	}
	if resp.Msg.ServerVersion != "1.4.0" {
		t.Fatalf("heartbeat reply server_version %q, want 1.4.0", resp.Msg.ServerVersion)
	}
	got, err := st.GetHost(ctx, "near")
	if err != nil || got.FerryVersion != "1.3.9" {
		t.Fatalf("stored host near: %v, err %v; want ferry_version 1.3.9", got, err)
	}
}
