package agent

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"connectrpc.com/connect"
	agentv1 "github.com/ferryvm/ferry/gen/ferry/agent/v1"
	"github.com/ferryvm/ferry/internal/qmp/qmptest"
)

const dstURI = "tcp:127.0.0.2:49152"

func startOut(t *testing.T, ta *testAgent, name, id string) (*agentv1.OutgoingStatus, error) {
	t.Helper()
	resp, err := ta.mig.StartOutgoing(testCtx(t), connect.NewRequest(&agentv1.StartOutgoingRequest{DestHost: "h2", Name: name, MigrationId: id, Uri: dstURI,
		MaxBandwidthBytes: 1 << 30, DowntimeLimitMs: 300}))
	if err != nil {
		return nil, err
	}
	return resp.Msg.Status, nil
}

func mustStartOut(t *testing.T, ta *testAgent, name, id string) *agentv1.OutgoingStatus {
	t.Helper()
	st, err := startOut(t, ta, name, id)
	if err != nil {
		t.Fatal(err)
	}
	return st
}

func queryOut(t *testing.T, ta *testAgent, name, id string) *agentv1.OutgoingStatus {
	t.Helper()
	return must[agentv1.OutgoingStatusResponse](t)(ta.mig.QueryOutgoing(testCtx(t), step(name, id))).Status
}

func continueOut(t *testing.T, ta *testAgent, name, id string) *agentv1.OutgoingStatus {
	t.Helper()
	return must[agentv1.OutgoingStatusResponse](t)(ta.mig.ContinueOutgoing(testCtx(t), step(name, id))).Status
}

func cancelOut(t *testing.T, ta *testAgent, name, id string, resumeCompleted bool) (*agentv1.StepResponse, error) {
	t.Helper()
	req := step(name, id)
	req.Msg.ResumeCompleted = resumeCompleted
	resp, err := ta.mig.CancelOutgoing(testCtx(t), req)
	if err != nil {
		return nil, err
	}
	return resp.Msg, nil
}

// leaving starts VM name and its outgoing migration id.
func leaving(t *testing.T, ta *testAgent, name, id string) *qmptest.FakeQEMU {
	t.Helper()
	startVM(t, ta, name)
	mustStartOut(t, ta, name, id)
	return ta.qemu(name)
}

// atPreSwitchover plays the transfer converging and waits for the agent
// to see it.
func atPreSwitchover(t *testing.T, ta *testAgent, q *qmptest.FakeQEMU, name, id string) {
	t.Helper()
	if err := q.ReachPreSwitchover(); err != nil {
		t.Fatal(err)
	}
	eventually(t, "pre-switchover", func() bool { return queryOut(t, ta, name, id).Status == "pre-switchover" })
	// The event's time is written to the VM's outgoing record right after
	// the status moves; a restart test must not race that write.
	v, ok := ta.a.find(name)
	if !ok {
		t.Fatalf("VM %s not on the agent", name)
	}
	eventually(t, "pre-switchover time persisted", func() bool {
		var rec outgoingRecord
		ok, err := readRecord(filepath.Join(v.dir, outgoingFile), &rec)
		return err == nil && ok && !rec.PreSwitchoverAt.IsZero()
	})
}

func TestStartOutgoingIdempotentAndAfterRestart(t *testing.T) {
	ta := newTestAgent(t)
	startVM(t, ta, "web")
	q := ta.qemu("web")
	st := mustStartOut(t, ta, "web", "m1")
	if st.Status != "active" || !q.Capability("pause-before-switchover") || string(q.Parameter("downtime-limit")) != "300" {
		t.Fatalf("StartOutgoing: %+v, pause-before-switchover %v, downtime-limit %s", st, q.Capability("pause-before-switchover"), q.Parameter("downtime-limit"))
	}
	if st := mustStartOut(t, ta, "web", "m1"); st.Status != "active" || q.Server().Count("migrate") != 1 {
		t.Fatalf("repeated StartOutgoing: %+v, %d migrate sent", st, q.Server().Count("migrate"))
	}
	_, err := startOut(t, ta, "web", "m2")
	wantCode(t, err, connect.CodeFailedPrecondition)

	ta = ta.restart()
	if st := mustStartOut(t, ta, "web", "m1"); st.Status != "active" || q.Server().Count("migrate") != 1 {
		t.Fatalf("StartOutgoing after restart: %+v, %d migrate sent", st, q.Server().Count("migrate"))
	}
	if st := queryOut(t, ta, "web", "m1"); st.Status != "active" || st.TotalBytes == 0 || st.QemuStatus != "running" {
		t.Fatalf("QueryOutgoing after restart (rebuilt from query-migrate): %+v", st)
	}
	// A VM that is here without that migration answers "none" (the
	// contract); NotFound is for a VM that is not here.
	if st := queryOut(t, ta, "web", "nope"); st.Status != "none" || st.QemuStatus != "running" {
		t.Fatalf("QueryOutgoing of another migration id: %+v, want none/running", st)
	}
	_, err = ta.mig.QueryOutgoing(testCtx(t), step("nope", "m1"))
	wantCode(t, err, connect.CodeNotFound)
}

func TestStartOutgoingAfterLostMigrateReply(t *testing.T) {
	ta := newTestAgent(t)
	startVM(t, ta, "web")
	q := ta.qemu("web")
	q.Server().DropNextReply("migrate")
	ctx := testCtx(t)
	short, cancel := contextWithTimeout(ctx, 300*time.Millisecond)
	defer cancel()
	if _, err := ta.mig.StartOutgoing(short, connect.NewRequest(&agentv1.StartOutgoingRequest{DestHost: "h2", Name: "web", MigrationId: "m1", Uri: dstURI})); err == nil {
		t.Fatal("StartOutgoing answered although QEMU's reply was lost")
	}
	// QEMU did start migrating; the agent restarts and the step is retried.
	ta = ta.restart()
	if st := mustStartOut(t, ta, "web", "m1"); st.Status != "active" || q.Server().Count("migrate") != 1 {
		t.Fatalf("retried StartOutgoing: %+v, %d migrate sent", st, q.Server().Count("migrate"))
	}
}

func TestQueryOutgoingLongPoll(t *testing.T) {
	ta := newTestAgent(t)
	q := leaving(t, ta, "web", "m1")
	_, out, err := ta.a.outgoingFor("web", "m1")
	if err != nil {
		t.Fatal(err)
	}
	eventually(t, "the agent to see the migration active", func() bool {
		out.mu.Lock()
		defer out.mu.Unlock()
		return out.status == "active"
	})
	go func() {
		time.Sleep(50 * time.Millisecond)
		_ = q.ReachPreSwitchover()
	}()
	req := step("web", "m1")
	req.Msg.WaitMs, req.Msg.KnownStatus = 5000, "active"
	st := must[agentv1.OutgoingStatusResponse](t)(ta.mig.QueryOutgoing(testCtx(t), req)).Status
	if st.Status != "pre-switchover" || st.QemuStatus != "finish-migrate" || st.PreSwitchoverAt == nil {
		t.Fatalf("long poll: %+v", st)
	}
}

func TestContinueOutgoingIdempotentAndAfterRestart(t *testing.T) {
	for _, restart := range []bool{false, true} {
		ta := newTestAgent(t)
		q := leaving(t, ta, "web", "m1")
		atPreSwitchover(t, ta, q, "web", "m1")
		before := queryOut(t, ta, "web", "m1")
		if restart {
			ta = ta.restart()
			st := queryOut(t, ta, "web", "m1")
			if st.Status != "pre-switchover" || st.StoppedAt == nil || !st.StoppedAt.AsTime().Equal(before.StoppedAt.AsTime()) ||
				!st.PreSwitchoverAt.AsTime().Equal(before.PreSwitchoverAt.AsTime()) {
				t.Fatalf("after restart (event times kept): %+v, before %+v", st, before)
			}
		}
		st := continueOut(t, ta, "web", "m1")
		if q.MigrationStatus() != "completed" || st.ContinuedAt == nil {
			t.Fatalf("restart %v: ContinueOutgoing: %+v, QEMU %s", restart, st, q.MigrationStatus())
		}
		continueOut(t, ta, "web", "m1")
		if restart {
			ta = ta.restart()
			continueOut(t, ta, "web", "m1")
		}
		if n := q.Server().Count("migrate-continue"); n != 1 {
			t.Fatalf("restart %v: %d migrate-continue sent, want 1", restart, n)
		}
	}
}

func TestContinueOutgoingRefusedBeforePreSwitchover(t *testing.T) {
	ta := newTestAgent(t)
	leaving(t, ta, "web", "m1")
	_, err := ta.mig.ContinueOutgoing(testCtx(t), step("web", "m1"))
	wantCode(t, err, connect.CodeFailedPrecondition)
	_, err = ta.mig.ContinueOutgoing(testCtx(t), step("web", "other"))
	wantCode(t, err, connect.CodeNotFound)
}

func TestCancelOutgoingIdempotent(t *testing.T) {
	ta := newTestAgent(t)
	q := leaving(t, ta, "web", "m1")
	resp, err := cancelOut(t, ta, "web", "m1", false)
	if err != nil {
		t.Fatal(err)
	}
	if q.MigrationStatus() != "cancelled" || q.RunState() != qmptest.RunRunning || resp.Vm.State != "running" {
		t.Fatalf("CancelOutgoing: QEMU %s/%s, reply %+v", q.MigrationStatus(), q.RunState(), resp.Vm)
	}
	if _, err := cancelOut(t, ta, "web", "m1", false); err != nil {
		t.Fatalf("second CancelOutgoing: %v", err)
	}
	if n := q.Server().Count("migrate_cancel"); n != 1 {
		t.Fatalf("%d migrate_cancel sent, want 1", n)
	}
	// A late StartOutgoing of the cancelled migration does not start it again.
	_, err = startOut(t, ta, "web", "m1")
	wantCode(t, err, connect.CodeFailedPrecondition)
	ta = ta.restart()
	if _, err := cancelOut(t, ta, "web", "m1", false); err != nil {
		t.Fatalf("CancelOutgoing after restart: %v", err)
	}
	_, err = startOut(t, ta, "web", "m1")
	wantCode(t, err, connect.CodeFailedPrecondition)
	if n := q.Server().Count("migrate"); n != 1 {
		t.Fatalf("%d migrate sent, want 1", n)
	}
	// A new migration may start.
	mustStartOut(t, ta, "web", "m2")
}

func TestCancelOutgoingAfterRestartAtPreSwitchover(t *testing.T) {
	ta := newTestAgent(t)
	q := leaving(t, ta, "web", "m1")
	atPreSwitchover(t, ta, q, "web", "m1")
	ta = ta.restart()
	if _, err := cancelOut(t, ta, "web", "m1", false); err != nil {
		t.Fatal(err)
	}
	if q.RunState() != qmptest.RunRunning {
		t.Fatalf("source after cancel: %s", q.RunState())
	}
	if st := getVM(t, ta, "web"); st.State != "running" {
		t.Fatalf("GetVM: %+v", st)
	}
}

func TestCancelOutgoingOfACompletedSource(t *testing.T) {
	for _, restart := range []bool{false, true} {
		ta := newTestAgent(t)
		q := leaving(t, ta, "web", "m1")
		atPreSwitchover(t, ta, q, "web", "m1")
		continueOut(t, ta, "web", "m1")
		if restart {
			ta = ta.restart()
		}
		_, err := cancelOut(t, ta, "web", "m1", false)
		wantCode(t, err, connect.CodeFailedPrecondition)
		if q.RunState() != qmptest.RunPostMigrate {
			t.Fatalf("restart %v: a completed source was resumed without resume_completed: %s", restart, q.RunState())
		}
		if st := getVM(t, ta, "web"); st.State != "paused" {
			t.Fatalf("restart %v: a completed source is reported %q, want paused", restart, st.State)
		}
		resp, err := cancelOut(t, ta, "web", "m1", true)
		if err != nil {
			t.Fatalf("restart %v: resume_completed: %v", restart, err)
		}
		if q.RunState() != qmptest.RunRunning || resp.Vm.State != "running" {
			t.Fatalf("restart %v: source after resume_completed: %s, reply %+v", restart, q.RunState(), resp.Vm)
		}
		if _, err := cancelOut(t, ta, "web", "m1", true); err != nil {
			t.Fatalf("restart %v: repeated resume_completed: %v", restart, err)
		}
		if n := q.Server().Count("cont"); n != 1 {
			t.Fatalf("restart %v: %d cont sent, want 1", restart, n)
		}
	}
}

func TestFinishOutgoingIdempotentAndAfterRestart(t *testing.T) {
	for _, restart := range []bool{false, true} {
		ta := newTestAgent(t)
		q := leaving(t, ta, "web", "m1")
		atPreSwitchover(t, ta, q, "web", "m1")
		_, err := ta.mig.FinishOutgoing(testCtx(t), step("web", "m1"))
		wantCode(t, err, connect.CodeFailedPrecondition) // not completed
		continueOut(t, ta, "web", "m1")
		if restart {
			ta = ta.restart()
		}
		must[agentv1.StepResponse](t)(ta.mig.FinishOutgoing(testCtx(t), step("web", "m1")))
		if q.Alive() {
			t.Fatalf("restart %v: FinishOutgoing left the source QEMU", restart)
		}
		if _, err := os.Stat(ta.a.newVM("web").dir); !os.IsNotExist(err) {
			t.Fatalf("restart %v: FinishOutgoing left the directory: %v", restart, err)
		}
		must[agentv1.StepResponse](t)(ta.mig.FinishOutgoing(testCtx(t), step("web", "m1")))
		ta = ta.restart()
		must[agentv1.StepResponse](t)(ta.mig.FinishOutgoing(testCtx(t), step("web", "m1")))
	}
}

func TestStartPostcopyIdempotent(t *testing.T) {
	ta := newTestAgent(t)
	startVM(t, ta, "web")
	must[agentv1.OutgoingStatusResponse](t)(ta.mig.StartOutgoing(testCtx(t), connect.NewRequest(&agentv1.StartOutgoingRequest{DestHost: "h2", Name: "web", MigrationId: "m1", Uri: dstURI, Postcopy: true})))
	q := ta.qemu("web")
	for i := 0; i < 2; i++ {
		must[agentv1.OutgoingStatusResponse](t)(ta.mig.StartPostcopy(testCtx(t), step("web", "m1")))
	}
	if n := q.Server().Count("migrate-start-postcopy"); n != 1 {
		t.Fatalf("%d migrate-start-postcopy sent, want 1", n)
	}
	atPreSwitchover(t, ta, q, "web", "m1")
	continueOut(t, ta, "web", "m1")
	eventually(t, "post-copy", func() bool { return queryOut(t, ta, "web", "m1").PostcopyStartedAt != nil })
	ta = ta.restart()
	must[agentv1.OutgoingStatusResponse](t)(ta.mig.StartPostcopy(testCtx(t), step("web", "m1")))
	if n := q.Server().Count("migrate-start-postcopy"); n != 1 {
		t.Fatalf("after restart: %d migrate-start-postcopy sent, want 1", n)
	}
	// A post-copy source is never resumed by a plain cancel.
	_, err := cancelOut(t, ta, "web", "m1", false)
	wantCode(t, err, connect.CodeFailedPrecondition)
}

func TestPostcopyPauseRecoverResumeIdempotent(t *testing.T) {
	src := newTestAgent(t)
	dst := newTestAgent(t)
	startVM(t, src, "web")
	must[agentv1.OutgoingStatusResponse](t)(src.mig.StartOutgoing(testCtx(t), connect.NewRequest(&agentv1.StartOutgoingRequest{DestHost: "h2", Name: "web", MigrationId: "m1", Uri: dstURI, Postcopy: true})))
	mustPrepare(t, dst, "web", "m1")
	sq, dq := src.qemu("web"), dst.qemu("web")
	sq.SetMigrationStatus("postcopy-active")
	dq.SetMigrationStatus("postcopy-active")
	for i := 0; i < 2; i++ {
		must[agentv1.StepResponse](t)(src.mig.PauseMigration(testCtx(t), step("web", "m1")))
		must[agentv1.StepResponse](t)(dst.mig.PauseMigration(testCtx(t), step("web", "m1")))
	}
	if sq.Server().Count("migrate-pause") != 1 || dq.Server().Count("migrate-pause") != 1 {
		t.Fatalf("migrate-pause sent %d and %d times, want once each", sq.Server().Count("migrate-pause"), dq.Server().Count("migrate-pause"))
	}
	uri := must[agentv1.RecoverResponse](t)(dst.mig.RecoverIncoming(testCtx(t), step("web", "m1"))).Uri
	if again := must[agentv1.RecoverResponse](t)(dst.mig.RecoverIncoming(testCtx(t), step("web", "m1"))).Uri; again != uri || dq.Server().Count("migrate-recover") != 1 {
		t.Fatalf("repeated RecoverIncoming: %q then %q, %d migrate-recover", uri, again, dq.Server().Count("migrate-recover"))
	}
	for i := 0; i < 2; i++ {
		must[agentv1.OutgoingStatusResponse](t)(src.mig.ResumeOutgoing(testCtx(t), connect.NewRequest(&agentv1.ResumeOutgoingRequest{Name: "web", MigrationId: "m1", Uri: uri})))
	}
	if n := sq.Server().Count("migrate"); n != 2 { // the start, then one resume
		t.Fatalf("%d migrate sent, want 2", n)
	}
	if sq.MigrationStatus() != "postcopy-active" {
		t.Fatalf("source after resume: %s", sq.MigrationStatus())
	}
}

func TestRestartedVMCanMigrateAgain(t *testing.T) {
	ta := newTestAgent(t)
	leaving(t, ta, "web", "m1")
	must[agentv1.AgentStopVMResponse](t)(ta.svc.StopVM(testCtx(t), connect.NewRequest(&agentv1.AgentStopVMRequest{Name: "web", Force: true})))
	startVM(t, ta, "web")
	mustStartOut(t, ta, "web", "m2") // the old QEMU's migration is over with it
	if st := queryOut(t, ta, "web", "m1"); st.Status != "none" {
		t.Fatalf("QueryOutgoing of the old QEMU's migration: %+v, want none", st)
	}
}

func TestOutgoingRecordWithoutAMigrationIsDropped(t *testing.T) {
	ta := newTestAgent(t)
	startVM(t, ta, "web")
	v, _ := ta.a.find("web")
	// The agent died between recording the migration and sending migrate.
	if err := writeRecord(v.dir+"/"+outgoingFile, outgoingRecord{ID: "m1", URI: dstURI}); err != nil {
		t.Fatal(err)
	}
	ta = ta.restart()
	if st := queryOut(t, ta, "web", "m1"); st.Status != "none" || st.QemuStatus != "running" {
		t.Fatalf("QueryOutgoing of the never-sent migration: %+v, want none/running", st)
	}
	if st := mustStartOut(t, ta, "web", "m1"); st.Status != "active" {
		t.Fatalf("StartOutgoing after the lost start: %+v", st)
	}
}

// TestQueryOutgoingSetsTheSteppedDowntimeLimit: a poll carrying the
// controller's downtime target gives it to QEMU (once, while the
// migration is active); a target already applied or 0 changes nothing,
// and a migration at pre-switchover is left alone.
func TestQueryOutgoingSetsTheSteppedDowntimeLimit(t *testing.T) {
	ta := newTestAgent(t)
	q := leaving(t, ta, "web", "m1")
	_, out, err := ta.a.outgoingFor("web", "m1")
	if err != nil {
		t.Fatal(err)
	}
	eventually(t, "the agent to see the migration active", func() bool {
		out.mu.Lock()
		defer out.mu.Unlock()
		return out.status == "active"
	})
	poll := func(ms int64) {
		t.Helper()
		req := step("web", "m1")
		req.Msg.DowntimeLimitMs = ms
		must[agentv1.OutgoingStatusResponse](t)(ta.mig.QueryOutgoing(testCtx(t), req))
	}
	if got := string(q.Parameter("downtime-limit")); got != "300" {
		t.Fatalf("downtime-limit after StartOutgoing = %s, want 300", got)
	}
	poll(0)
	poll(300)
	if got := string(q.Parameter("downtime-limit")); got != "300" {
		t.Fatalf("downtime-limit after polls without a new target = %s, want 300", got)
	}
	poll(18)
	if got := string(q.Parameter("downtime-limit")); got != "18" {
		t.Fatalf("downtime-limit after a poll with target 18 ms = %s, want 18", got)
	}
	atPreSwitchover(t, ta, q, "web", "m1")
	poll(40)
	if got := string(q.Parameter("downtime-limit")); got != "18" {
		t.Fatalf("downtime-limit changed at pre-switchover to %s, want it left at 18", got)
	}
}
