package agent

import (
	"os"
	"testing"

	"connectrpc.com/connect"
	agentv1 "github.com/ferryvm/ferry/gen/ferry/agent/v1"
	ferryv1 "github.com/ferryvm/ferry/gen/ferry/v1"
	"github.com/ferryvm/ferry/internal/qmp/qmptest"
)

func startVM(t *testing.T, ta *testAgent, name string) *ferryv1.VMStatus {
	t.Helper()
	return must[agentv1.AgentStartVMResponse](t)(ta.svc.StartVM(testCtx(t), connect.NewRequest(&agentv1.AgentStartVMRequest{Spec: testSpec(t, name)}))).Status
}

func getVM(t *testing.T, ta *testAgent, name string) *ferryv1.VMStatus {
	t.Helper()
	return must[agentv1.AgentGetVMResponse](t)(ta.svc.GetVM(testCtx(t), connect.NewRequest(&agentv1.AgentGetVMRequest{Name: name}))).Status
}

func TestStartVMIdempotentAndAfterRestart(t *testing.T) {
	ta := newTestAgent(t)
	first := startVM(t, ta, "web")
	if first.State != "running" || first.Pid == 0 {
		t.Fatalf("first start: %+v", first)
	}
	again := startVM(t, ta, "web")
	if again.Pid != first.Pid || ta.rt.startCount() != 1 {
		t.Fatalf("second StartVM started another QEMU: pid %d → %d, %d starts", first.Pid, again.Pid, ta.rt.startCount())
	}
	ta = ta.restart()
	st := getVM(t, ta, "web")
	if st.State != "running" || st.Pid != first.Pid {
		t.Fatalf("after restart: %+v, want running pid %d", st, first.Pid)
	}
	if st := startVM(t, ta, "web"); st.Pid != first.Pid || ta.rt.startCount() != 1 {
		t.Fatalf("StartVM after restart started another QEMU: %+v, %d starts", st, ta.rt.startCount())
	}
}

func TestPausedQEMUIsReportedPaused(t *testing.T) {
	ta := newTestAgent(t)
	startVM(t, ta, "web")
	ta.qemu("web").SetRunState(qmptest.RunPaused)
	check := func(ta *testAgent) {
		t.Helper()
		if st := getVM(t, ta, "web"); st.State != "paused" || st.QemuStatus != "paused" {
			t.Fatalf("GetVM of a paused QEMU: state %q qemu %q, want paused", st.State, st.QemuStatus)
		}
		list := must[agentv1.AgentListVMsResponse](t)(ta.svc.ListVMs(testCtx(t), connect.NewRequest(&agentv1.AgentListVMsRequest{})))
		if len(list.Vms) != 1 || list.Vms[0].State != "paused" {
			t.Fatalf("ListVMs of a paused QEMU: %+v", list.Vms)
		}
		if h := ta.a.report("x"); len(h.Vms) != 1 || h.Vms[0].State != "paused" {
			t.Fatalf("heartbeat report of a paused QEMU: %+v", h.Vms)
		}
	}
	check(ta)
	check(ta.restart())
}

func TestStopVMIdempotent(t *testing.T) {
	ta := newTestAgent(t)
	startVM(t, ta, "web")
	q := ta.qemu("web")
	stop := func() *ferryv1.VMStatus {
		return must[agentv1.AgentStopVMResponse](t)(ta.svc.StopVM(testCtx(t), connect.NewRequest(&agentv1.AgentStopVMRequest{Name: "web"}))).Status
	}
	if st := stop(); st.State != "stopped" || st.Pid != 0 || q.Alive() {
		t.Fatalf("StopVM: %+v, QEMU alive %v", st, q.Alive())
	}
	if st := stop(); st.State != "stopped" {
		t.Fatalf("second StopVM: %+v", st)
	}
	ta = ta.restart()
	if st := stop(); st.State != "stopped" {
		t.Fatalf("StopVM after restart: %+v", st)
	}
	st := must[agentv1.AgentStopVMResponse](t)(ta.svc.StopVM(testCtx(t), connect.NewRequest(&agentv1.AgentStopVMRequest{Name: "nope"}))).Status
	if st.State != "stopped" {
		t.Fatalf("StopVM of an unknown VM: %+v", st)
	}
}

func TestDeleteVMIdempotent(t *testing.T) {
	ta := newTestAgent(t)
	startVM(t, ta, "web")
	q := ta.qemu("web")
	del := func(ta *testAgent) {
		t.Helper()
		must[agentv1.AgentDeleteVMResponse](t)(ta.svc.DeleteVM(testCtx(t), connect.NewRequest(&agentv1.AgentDeleteVMRequest{Name: "web"})))
	}
	del(ta)
	if q.Alive() {
		t.Fatal("DeleteVM left the QEMU running")
	}
	if _, err := os.Stat(ta.a.newVM("web").dir); !os.IsNotExist(err) {
		t.Fatalf("DeleteVM left the VM directory: %v", err)
	}
	del(ta)
	ta = ta.restart()
	del(ta)
	_, err := ta.svc.GetVM(testCtx(t), connect.NewRequest(&agentv1.AgentGetVMRequest{Name: "web"}))
	wantCode(t, err, connect.CodeNotFound)
}

func TestGetAndListVMsAfterRestart(t *testing.T) {
	ta := newTestAgent(t)
	a := startVM(t, ta, "a")
	b := startVM(t, ta, "b")
	ta = ta.restart()
	list := must[agentv1.AgentListVMsResponse](t)(ta.svc.ListVMs(testCtx(t), connect.NewRequest(&agentv1.AgentListVMsRequest{})))
	if len(list.Vms) != 2 || list.Vms[0].Pid != a.Pid || list.Vms[1].Pid != b.Pid || list.Vms[0].State != "running" {
		t.Fatalf("ListVMs after restart: %+v", list.Vms)
	}
	// A QEMU that died while the agent was away is reported failed.
	ta.die()
	ta.qemu("a").Crash()
	ta = startTestAgent(t, ta.rt, ta.dir)
	if st := getVM(t, ta, "a"); st.State != "failed" || st.Pid != 0 {
		t.Fatalf("VM whose QEMU died while the agent was away: %+v", st)
	}
	_, err := ta.svc.GetVM(testCtx(t), connect.NewRequest(&agentv1.AgentGetVMRequest{Name: "zzz"}))
	wantCode(t, err, connect.CodeNotFound)
}
