package exec

import (
	"context"
	"testing"

	agentv1 "github.com/ferryvm/ferry/gen/ferry/agent/v1"
	ferryv1 "github.com/ferryvm/ferry/gen/ferry/v1"
	"github.com/ferryvm/ferry/internal/migration/core"
)

// fakeIDAgent records the migration id of every step it is asked.
type fakeIDAgent struct {
	Agent // nil: only the steps below are called
	ids   []string
}

func (f *fakeIDAgent) PrepareIncoming(_ context.Context, req *agentv1.PrepareIncomingRequest) (*agentv1.PrepareIncomingResponse, error) {
	f.ids = append(f.ids, req.MigrationId)
	return &agentv1.PrepareIncomingResponse{Uri: "tcp:h2:1", Transport: "tls"}, nil
}

func (f *fakeIDAgent) AbortIncoming(_ context.Context, req *agentv1.MigrationStepRequest) error {
	f.ids = append(f.ids, req.MigrationId)
	return nil
}

func (f *fakeIDAgent) CancelOutgoingVM(_ context.Context, req *agentv1.MigrationStepRequest) (*ferryv1.VMStatus, error) {
	f.ids = append(f.ids, req.MigrationId)
	return &ferryv1.VMStatus{State: "running"}, nil
}

// TestAttemptStepsCarryTheAttemptID: a retried attempt's agent steps are
// keyed by its own id; the first attempt's by the migration's.
func TestAttemptStepsCarryTheAttemptID(t *testing.T) {
	ag := &fakeIDAgent{}
	p := &performer{id: "mig-1", vm: "vm1", src: ag, dst: ag}
	for _, a := range []core.Action{
		{Kind: core.ActPrepareIncoming, Side: core.Dst, MigrationID: "mig-1"},
		{Kind: core.ActPrepareIncoming, Side: core.Dst, MigrationID: "mig-1-a2"},
		{Kind: core.ActAbortIncoming, Side: core.Dst, MigrationID: "mig-1-a2"},
		{Kind: core.ActCancelOutgoing, Side: core.Src, MigrationID: "mig-1-a3"},
		{Kind: core.ActAbortIncoming, Side: core.Dst},
	} {
		var o core.Observation
		if err := p.do(context.Background(), a, &o); err != nil {
			t.Fatalf("%s: %v", a, err)
		}
	}
	want := []string{"mig-1", "mig-1-a2", "mig-1-a2", "mig-1-a3", "mig-1"}
	if len(ag.ids) != len(want) {
		t.Fatalf("ids %v, want %v", ag.ids, want)
	}
	for i := range want {
		if ag.ids[i] != want[i] {
			t.Errorf("step %d keyed by %q, want %q (all: %v)", i, ag.ids[i], want[i], ag.ids)
		}
	}
}
