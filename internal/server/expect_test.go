package server

import (
	"context"
	"reflect"
	"testing"

	"connectrpc.com/connect"
	ferryv1 "github.com/ferryvm/ferry/gen/ferry/v1"
	"google.golang.org/protobuf/types/known/timestamppb"
)

func TestExpectationNamesWhatTheRecordsPlaceOnTheHost(t *testing.T) {
	vms := []*ferryv1.VM{
		{Spec: &ferryv1.VMSpec{Name: "web"}, Host: "h1"},
		{Spec: &ferryv1.VMSpec{Name: "db"}, Host: "h2"},
		{Spec: &ferryv1.VMSpec{Name: "moving"}, Host: "h2"},
	}
	migs := []*ferryv1.Migration{
		{Id: "m-live", Vm: "moving", From: "h2", To: "h1"},
		{Id: "m-done", Vm: "gone", From: "h1", To: "h2", FinishedAt: timestamppb.Now()},
		{Id: "m-other", Vm: "far", From: "h2", To: "h3"},
		{Id: "m-out", Vm: "web", From: "h1", To: "h3"},
	}
	resp := &ferryv1.HeartbeatResponse{}
	expectationFor("h1", vms, migs, resp)
	if !reflect.DeepEqual(resp.ExpectedVms, []string{"moving", "web"}) || !reflect.DeepEqual(resp.InflightMigrations, []string{"m-live", "m-out"}) {
		t.Fatalf("expected %v, in flight %v", resp.ExpectedVms, resp.InflightMigrations)
	}
}

func TestHeartbeatReplyIsAuthoritativeAndPausedIsRecorded(t *testing.T) {
	s, st := newTestServer(t)
	ctx := context.Background()
	h := &hostService{s}
	resp, err := h.Heartbeat(ctx, connect.NewRequest(&ferryv1.HeartbeatRequest{Host: &ferryv1.Host{Name: "h1", Address: "unix:///nonexistent/h1",
		Vms: []*ferryv1.VMStatus{{Name: "web", State: "paused", Pid: 7}}}}))
	if err != nil {
		t.Fatal(err)
	}
	if !resp.Msg.Authoritative || !reflect.DeepEqual(resp.Msg.ExpectedVms, []string{"web"}) {
		t.Fatalf("heartbeat reply: authoritative %v, expected %v", resp.Msg.Authoritative, resp.Msg.ExpectedVms)
	}
	// The agent reported web's QEMU paused: so does the record.
	vm, err := st.GetVM(ctx, "web")
	if err != nil {
		t.Fatal(err)
	}
	if vm.State != "paused" || vm.Pid != 7 {
		t.Fatalf("record of a paused QEMU: state %q pid %d, want paused 7", vm.State, vm.Pid)
	}
}

func TestHeartbeatReplyOfAFollowerIsNotAuthoritative(t *testing.T) {
	s, _ := newTestServer(t)
	s.replica = replicaHooks{leading: func() bool { return false }} // a replica that does not lead
	resp, err := (&hostService{s}).Heartbeat(context.Background(), connect.NewRequest(&ferryv1.HeartbeatRequest{Host: &ferryv1.Host{Name: "h1", Address: "unix:///nonexistent/h1"}}))
	if err != nil {
		t.Fatal(err)
	}
	if resp.Msg.Authoritative {
		t.Fatal("a follower's heartbeat reply is authoritative: its agent could reap QEMUs on a stale view")
	}
}
