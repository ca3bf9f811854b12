package agent

import (
	"os"
	"testing"

	"connectrpc.com/connect"
	agentv1 "github.com/ferryvm/ferry/gen/ferry/agent/v1"
	"github.com/ferryvm/ferry/internal/qmp/qmptest"
)

func prepare(t *testing.T, ta *testAgent, name, id string) (string, error) {
	t.Helper()
	resp, err := ta.mig.PrepareIncoming(testCtx(t), connect.NewRequest(&agentv1.PrepareIncomingRequest{SourceHost: "h1", Spec: testSpec(t, name), MigrationId: id}))
	if err != nil {
		return "", err
	}
	return resp.Msg.Uri, nil
}

func mustPrepare(t *testing.T, ta *testAgent, name, id string) string {
	t.Helper()
	uri, err := prepare(t, ta, name, id)
	if err != nil {
		t.Fatal(err)
	}
	return uri
}

func queryIn(t *testing.T, ta *testAgent, name, id string) *agentv1.IncomingStatus {
	t.Helper()
	return must[agentv1.IncomingStatusResponse](t)(ta.mig.QueryIncoming(testCtx(t), step(name, id))).Status
}

func arm(t *testing.T, ta *testAgent, name, id string) *agentv1.IncomingStatus {
	t.Helper()
	return must[agentv1.IncomingStatusResponse](t)(ta.mig.ArmResume(testCtx(t), step(name, id))).Status
}

func finishIn(t *testing.T, ta *testAgent, name, id string) *agentv1.IncomingStatus {
	t.Helper()
	return must[agentv1.IncomingStatusResponse](t)(ta.mig.FinishIncoming(testCtx(t), step(name, id))).Status
}

func TestPrepareIncomingIdempotentAndAfterRestart(t *testing.T) {
	ta := newTestAgent(t)
	uri := mustPrepare(t, ta, "web", "m1")
	if uri != "tcp:127.0.0.1:49152" {
		t.Fatalf("uri %q", uri)
	}
	q := ta.qemu("web")
	if !q.Capability("events") || q.RunState() != qmptest.RunInMigrate {
		t.Fatalf("destination: events %v, run state %s", q.Capability("events"), q.RunState())
	}
	if again := mustPrepare(t, ta, "web", "m1"); again != uri || ta.rt.startCount() != 1 || q.Server().Count("migrate-incoming") != 1 {
		t.Fatalf("repeated PrepareIncoming: uri %q, %d QEMU starts, %d migrate-incoming", again, ta.rt.startCount(), q.Server().Count("migrate-incoming"))
	}
	_, err := prepare(t, ta, "web", "m2")
	wantCode(t, err, connect.CodeFailedPrecondition)

	ta = ta.restart()
	if again := mustPrepare(t, ta, "web", "m1"); again != uri || ta.rt.startCount() != 1 {
		t.Fatalf("PrepareIncoming after restart: uri %q, %d QEMU starts", again, ta.rt.startCount())
	}
	if st := queryIn(t, ta, "web", "m1"); st.State != "listening" || st.Ran || st.Vm.Pid == 0 {
		t.Fatalf("QueryIncoming after restart: %+v", st)
	}
	// A VM that runs here as its own is never prepared as a destination.
	startVM(t, ta, "db")
	_, err = prepare(t, ta, "db", "m3")
	wantCode(t, err, connect.CodeFailedPrecondition)
}

func TestQueryIncomingUnknown(t *testing.T) {
	ta := newTestAgent(t)
	_, err := ta.mig.QueryIncoming(testCtx(t), step("web", "m1"))
	wantCode(t, err, connect.CodeNotFound)
	mustPrepare(t, ta, "web", "m1")
	_, err = ta.mig.QueryIncoming(testCtx(t), step("web", "other"))
	wantCode(t, err, connect.CodeNotFound)
}

func TestArmResumeIdempotentAndRun(t *testing.T) {
	ta := newTestAgent(t)
	mustPrepare(t, ta, "web", "m1")
	q := ta.qemu("web")
	if st := arm(t, ta, "web", "m1"); st.State != "armed" || st.Ran {
		t.Fatalf("ArmResume: %+v", st)
	}
	if st := arm(t, ta, "web", "m1"); st.State != "armed" || q.Server().Count("cont") != 1 {
		t.Fatalf("second ArmResume: %+v, %d cont sent", st, q.Server().Count("cont"))
	}
	if q.RunState() != qmptest.RunInMigrate {
		t.Fatalf("armed destination runs before its state arrived: %s", q.RunState())
	}
	if err := q.ArriveIncoming(); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the destination to run", func() bool { return queryIn(t, ta, "web", "m1").Ran })
	if st := queryIn(t, ta, "web", "m1"); st.State != "running" || st.ResumedAt == nil || st.LoadedAt == nil {
		t.Fatalf("after the state arrived: %+v", st)
	}
	ta = ta.restart()
	if st := arm(t, ta, "web", "m1"); st.State != "running" || !st.Ran {
		t.Fatalf("ArmResume after restart: %+v", st)
	}
	if st := queryIn(t, ta, "web", "m1"); !st.Ran || st.State != "running" {
		t.Fatalf("QueryIncoming after restart: ran must be kept: %+v", st)
	}
}

func TestArmResumeRefusals(t *testing.T) {
	ta := newTestAgent(t)
	_, err := ta.mig.ArmResume(testCtx(t), step("web", "m1"))
	wantCode(t, err, connect.CodeFailedPrecondition) // unknown
	mustPrepare(t, ta, "web", "m1")
	must[agentv1.StepResponse](t)(ta.mig.AbortIncoming(testCtx(t), step("web", "m1")))
	_, err = ta.mig.ArmResume(testCtx(t), step("web", "m1"))
	wantCode(t, err, connect.CodeFailedPrecondition) // aborted
}

func TestArmedDestinationResumedAfterRestart(t *testing.T) {
	ta := newTestAgent(t)
	mustPrepare(t, ta, "web", "m1")
	q := ta.qemu("web")
	// The agent dies after persisting the arming but before cont reached
	// QEMU: the next agent sends it.
	q.Server().CloseOnNext("cont")
	if _, err := ta.mig.ArmResume(testCtx(t), step("web", "m1")); err == nil {
		t.Fatal("ArmResume succeeded although cont was lost")
	}
	ta = ta.restart()
	eventually(t, "cont from the restarted agent", func() bool { return q.Server().Count("cont") == 2 })
	if err := q.ArriveIncoming(); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the destination to run", func() bool { return q.RunState() == qmptest.RunRunning })
	if st := queryIn(t, ta, "web", "m1"); st.State != "armed" && st.State != "running" {
		t.Fatalf("after restart: %+v", st)
	}
}

func TestFinishIncomingIdempotentAndAfterRestart(t *testing.T) {
	ta := newTestAgent(t)
	mustPrepare(t, ta, "web", "m1")
	arm(t, ta, "web", "m1")
	q := ta.qemu("web")
	if err := q.ArriveIncoming(); err != nil {
		t.Fatal(err)
	}
	st := finishIn(t, ta, "web", "m1")
	if st.State != "adopted" || !st.Ran || st.Vm.State != "running" || st.LoadedAt == nil || st.ResumedAt == nil {
		t.Fatalf("FinishIncoming (event times are the downtime figures): %+v", st)
	}
	if again := finishIn(t, ta, "web", "m1"); again.State != "adopted" || again.Vm.Pid != st.Vm.Pid {
		t.Fatalf("second FinishIncoming: %+v", again)
	}
	eventually(t, "announce-self", func() bool { return q.Server().Count("announce-self") == 1 })
	ta = ta.restart()
	if again := finishIn(t, ta, "web", "m1"); again.State != "adopted" || again.Vm.Pid != st.Vm.Pid {
		t.Fatalf("FinishIncoming after restart: %+v", again)
	}
	if st := queryIn(t, ta, "web", "m1"); st.ResumedAt == nil {
		t.Fatalf("QueryIncoming after restart lost the event times: %+v", st)
	}
	if st := queryIn(t, ta, "web", "m1"); st.State != "adopted" || !st.Ran {
		t.Fatalf("QueryIncoming of an adopted VM after restart: %+v", st)
	}
	if st := getVM(t, ta, "web"); st.State != "running" {
		t.Fatalf("adopted VM after restart: %+v", st)
	}
}

func TestFinishIncomingAfterRestartBeforeAdoption(t *testing.T) {
	ta := newTestAgent(t)
	mustPrepare(t, ta, "web", "m1")
	arm(t, ta, "web", "m1")
	if err := ta.qemu("web").ArriveIncoming(); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the destination to run", func() bool { return queryIn(t, ta, "web", "m1").Ran })
	ta = ta.restart() // ran, not adopted yet
	if st := finishIn(t, ta, "web", "m1"); st.State != "adopted" || !st.Ran {
		t.Fatalf("FinishIncoming after restart: %+v", st)
	}
}

func TestAbortIncomingIdempotent(t *testing.T) {
	ta := newTestAgent(t)
	must[agentv1.StepResponse](t)(ta.mig.AbortIncoming(testCtx(t), step("web", "m1"))) // unknown: OK
	mustPrepare(t, ta, "web", "m1")
	q := ta.qemu("web")
	dir := ta.a.newVM("web").dir
	must[agentv1.StepResponse](t)(ta.mig.AbortIncoming(testCtx(t), step("web", "m1")))
	if q.Alive() {
		t.Fatal("AbortIncoming left the destination QEMU running")
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Fatalf("AbortIncoming left the directory: %v", err)
	}
	must[agentv1.StepResponse](t)(ta.mig.AbortIncoming(testCtx(t), step("web", "m1")))
	if st := queryIn(t, ta, "web", "m1"); st.State != "aborted" || st.Ran || st.Vm.GetPid() != 0 {
		t.Fatalf("QueryIncoming after abort: %+v", st)
	}
	// A late PrepareIncoming of the aborted migration starts nothing.
	_, err := prepare(t, ta, "web", "m1")
	wantCode(t, err, connect.CodeFailedPrecondition)
	if ta.rt.startCount() != 1 {
		t.Fatalf("%d QEMU starts, want 1", ta.rt.startCount())
	}
	ta = ta.restart()
	must[agentv1.StepResponse](t)(ta.mig.AbortIncoming(testCtx(t), step("web", "m1")))
}

func TestAbortIncomingAfterRestartWhileListening(t *testing.T) {
	ta := newTestAgent(t)
	mustPrepare(t, ta, "web", "m1")
	q := ta.qemu("web")
	ta = ta.restart()
	must[agentv1.StepResponse](t)(ta.mig.AbortIncoming(testCtx(t), step("web", "m1")))
	if q.Alive() {
		t.Fatal("AbortIncoming after restart left the destination QEMU running")
	}
}

func TestAbortIncomingRefusesADestinationThatRan(t *testing.T) {
	ta := newTestAgent(t)
	mustPrepare(t, ta, "web", "m1")
	arm(t, ta, "web", "m1")
	q := ta.qemu("web")
	if err := q.ArriveIncoming(); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the destination to run", func() bool { return queryIn(t, ta, "web", "m1").Ran })
	_, err := ta.mig.AbortIncoming(testCtx(t), step("web", "m1"))
	wantCode(t, err, connect.CodeFailedPrecondition)
	// Paused again and the agent restarted: the record still says it ran.
	q.SetRunState(qmptest.RunPaused)
	ta = ta.restart()
	_, err = ta.mig.AbortIncoming(testCtx(t), step("web", "m1"))
	wantCode(t, err, connect.CodeFailedPrecondition)
	if !q.Alive() {
		t.Fatal("a destination that ran was killed")
	}
	if st := queryIn(t, ta, "web", "m1"); !st.Ran {
		t.Fatalf("ran lost across restart: %+v", st)
	}
	// Adopted: refused too.
	q.SetRunState(qmptest.RunRunning)
	finishIn(t, ta, "web", "m1")
	_, err = ta.mig.AbortIncoming(testCtx(t), step("web", "m1"))
	wantCode(t, err, connect.CodeFailedPrecondition)
}

func TestAbortIncomingRefusesARunningDestinationWhoseEventWasMissed(t *testing.T) {
	ta := newTestAgent(t)
	mustPrepare(t, ta, "web", "m1")
	q := ta.qemu("web")
	ta.die()
	q.SetRunState(qmptest.RunRunning) // resumed while no agent watched
	ta = startTestAgent(t, ta.rt, ta.dir)
	_, err := ta.mig.AbortIncoming(testCtx(t), step("web", "m1"))
	wantCode(t, err, connect.CodeFailedPrecondition)
	if st := queryIn(t, ta, "web", "m1"); !st.Ran || st.State != "running" {
		t.Fatalf("%+v", st)
	}
}

func TestDestinationQEMUDeathIsReported(t *testing.T) {
	ta := newTestAgent(t)
	mustPrepare(t, ta, "web", "m1")
	arm(t, ta, "web", "m1")
	ta.qemu("web").Crash()
	eventually(t, "the dead destination to be reported", func() bool {
		st, err := ta.mig.QueryIncoming(testCtx(t), step("web", "m1"))
		return err == nil && st.Msg.Status.Vm.GetPid() == 0 && st.Msg.Status.State == "failed" && !st.Msg.Status.Ran
	})
	_, err := ta.mig.FinishIncoming(testCtx(t), step("web", "m1"))
	wantCode(t, err, connect.CodeFailedPrecondition)
}

func TestAbortIncomingAfterTheArrivalDiedBeforeItRan(t *testing.T) {
	ta := newTestAgent(t)
	mustPrepare(t, ta, "web", "m1")
	q := ta.qemu("web")
	if err := q.ArriveIncoming(); err != nil { // the state is all there
		t.Fatal(err)
	}
	eventually(t, "the state to be loaded", func() bool { return queryIn(t, ta, "web", "m1").LoadedAt != nil })
	q.Crash() // the destination QEMU dies before it ever ran
	eventually(t, "the dead arrival to be removed", func() bool {
		st, err := ta.mig.QueryIncoming(testCtx(t), step("web", "m1"))
		return err == nil && st.Msg.Status.GetVm().GetPid() == 0
	})
	// The engine's proof that the destination never ran: the abort succeeds.
	must[agentv1.StepResponse](t)(ta.mig.AbortIncoming(testCtx(t), step("web", "m1")))
	if st := queryIn(t, ta, "web", "m1"); st.Ran {
		t.Fatalf("QueryIncoming after the dead arrival: %+v, want never ran", st)
	}
}
