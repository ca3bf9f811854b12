package server

import (
	"context"
	"reflect"
	"testing"

	"connectrpc.com/connect"
	ferryv1 "github.com/ferryvm/ferry/gen/ferry/v1"
)

func TestHeartbeatReplyNamesWhatTheRecordsPlaceOnTheHost(t *testing.T) {
	s, st := newTestServer(t)
	ctx := context.Background()
	for _, m := range []*ferryv1.Migration{
		{Id: "m-live", Vm: "moving", From: "h2", To: "h1", Status: "running"},
		{Id: "m-done", Vm: "gone", From: "h1", To: "h2", Status: "completed"},
		{Id: "m-other", Vm: "far", From: "h2", To: "h3", Status: "running"},
	} {
		if err := st.PutMigration(ctx, m); err != nil {
			t.Fatal(err)
		}
	}
	h := &hostService{s}
	resp, err := h.Heartbeat(ctx, connect.NewRequest(&ferryv1.HeartbeatRequest{Host: &ferryv1.Host{Name: "h1", Address: "unix:///nonexistent/h1",
		Vms: []*ferryv1.VMStatus{{Name: "web", State: "paused", Pid: 7}}}}))
	if err != nil {
		t.Fatal(err)
	}
	got := resp.Msg
	if !got.Authoritative || !reflect.DeepEqual(got.ExpectedVms, []string{"moving", "web"}) || !reflect.DeepEqual(got.InflightMigrations, []string{"m-live"}) {
		t.Fatalf("heartbeat reply: authoritative %v, expected %v, in flight %v", got.Authoritative, got.ExpectedVms, got.InflightMigrations)
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
