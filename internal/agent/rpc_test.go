package agent

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"testing"

	"connectrpc.com/connect"
	agentv1 "github.com/ferryvm/ferry/gen/ferry/agent/v1"
	"github.com/ferryvm/ferry/gen/ferry/agent/v1/agentv1connect"
	ferryv1 "github.com/ferryvm/ferry/gen/ferry/v1"
	"github.com/ferryvm/ferry/internal/qmp/qmptest"
)

// serve exposes the agent's RPC handlers over HTTP, as Run does.
func (ta *testAgent) serve() (agentv1connect.AgentServiceClient, agentv1connect.MigrationAgentServiceClient) {
	mux := http.NewServeMux()
	mux.Handle(agentv1connect.NewAgentServiceHandler(ta.svc))
	mux.Handle(agentv1connect.NewMigrationAgentServiceHandler(ta.mig))
	srv := httptest.NewServer(mux)
	ta.t.Cleanup(srv.Close)
	return agentv1connect.NewAgentServiceClient(srv.Client(), srv.URL), agentv1connect.NewMigrationAgentServiceClient(srv.Client(), srv.URL)
}

func TestRPCsOverHTTP(t *testing.T) {
	ta := newTestAgent(t)
	svc, mig := ta.serve()
	ctx := testCtx(t)
	st := must[agentv1.AgentStartVMResponse](t)(svc.StartVM(ctx, connect.NewRequest(&agentv1.AgentStartVMRequest{Spec: testSpec(t, "web")}))).Status
	if st.State != "running" {
		t.Fatalf("StartVM over HTTP: %+v", st)
	}
	_, err := mig.QueryIncoming(ctx, step("nope", "m1"))
	wantCode(t, err, connect.CodeNotFound) // the code survives the wire

	// Console: the serial log from an offset.
	if err := os.WriteFile(ta.a.newVM("web").paths.SerialLog, []byte("boot...FERRY-GUEST READY\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	stream, err := svc.Console(ctx, connect.NewRequest(&ferryv1.ConsoleRequest{Name: "web", Offset: 7}))
	if err != nil {
		t.Fatal(err)
	}
	var got []byte
	for stream.Receive() {
		got = append(got, stream.Msg().Data...)
	}
	if err := stream.Err(); err != nil || string(got) != "FERRY-GUEST READY\n" {
		t.Fatalf("Console: %q, %v", got, err)
	}

	// Measure: calc-dirty-rate then query-dirty-rate.
	q := ta.qemu("web")
	q.Server().HandleStatic("calc-dirty-rate", qmptest.Reply{})
	q.Server().HandleStatic("query-dirty-rate", qmptest.Reply{Raw: json.RawMessage(`{"status": "measured", "dirty-rate": 10, "sample-pages": 512, "mode": "page-sampling", "start-time": 1, "calc-time": 1}`)})
	m := must[agentv1.MeasureResponse](t)(mig.Measure(ctx, connect.NewRequest(&agentv1.MeasureRequest{Name: "web", Seconds: 1})))
	if m.DirtyRateMibps < 9.5 || m.DirtyRateMibps > 9.6 || m.MemoryBytes != 128<<20 {
		t.Fatalf("Measure: %+v", m)
	}
	_, err = mig.Measure(ctx, connect.NewRequest(&agentv1.MeasureRequest{Name: "web", Seconds: 60}))
	wantCode(t, err, connect.CodeInvalidArgument)

	// ProbeListen + ProbeSend: a bandwidth probe over loopback.
	addr := must[agentv1.ProbeListenResponse](t)(mig.ProbeListen(ctx, connect.NewRequest(&agentv1.ProbeListenRequest{}))).Address
	p := must[agentv1.ProbeSendResponse](t)(mig.ProbeSend(ctx, connect.NewRequest(&agentv1.ProbeSendRequest{Address: addr, DurationMs: 100})))
	if p.Bytes <= 0 || p.Mibps <= 0 {
		t.Fatalf("ProbeSend: %+v", p)
	}
}
