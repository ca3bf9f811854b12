package exec

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"
	agentv1 "github.com/ferryvm/ferry/gen/ferry/agent/v1"
	statev1 "github.com/ferryvm/ferry/gen/ferry/state/v1"
	ferryv1 "github.com/ferryvm/ferry/gen/ferry/v1"
	"github.com/ferryvm/ferry/internal/migration/core"
	"google.golang.org/protobuf/proto"
)

// fakeQEMUPair is an in-process stand-in for the two agents and their
// QEMUs of one pre-copy: the source reaches pre-switchover after a few
// polls, completes on continue; the armed destination runs once the
// source completed. It only knows the happy path and aborts.
type fakeQEMUPair struct {
	mu        sync.Mutex
	polls     int
	srcStatus string // QEMU's migration status on the source
	srcRuns   bool
	dstState  string // "", listening, armed, running, aborted
	dstRan    bool
	guestDead bool // CheckGuestAlive answers alive=false
	plainDst  bool // the destination answers as an agent without TLS streams
	hold      bool // the source's transfer stays active (never reaches pre-switchover)
	// stuck: a transfer started without postcopy-ram stays active (a guest
	// that outruns plain pre-copy); a cancelled transfer and an aborted
	// destination may be started again (a retried attempt).
	stuck    bool
	stuckNow bool
	calls    []string
	prepared *agentv1.PrepareIncomingRequest // the last PrepareIncoming
	started  *agentv1.StartOutgoingRequest   // the last StartOutgoing
	polledBW []int64                         // each QueryOutgoing's max_bandwidth_bytes
}

func (f *fakeQEMUPair) note(s string) {
	f.calls = append(f.calls, s)
}

// fakeAgent is one side of fakeQEMUPair as an Agent.
type fakeAgent struct {
	f   *fakeQEMUPair
	src bool
}

var errFakeUnsupported = connect.NewError(connect.CodeUnimplemented, errors.New("fake agent: not modelled"))

func (a fakeAgent) PrepareIncoming(_ context.Context, req *agentv1.PrepareIncomingRequest) (*agentv1.PrepareIncomingResponse, error) {
	a.f.mu.Lock()
	defer a.f.mu.Unlock()
	a.f.note("PrepareIncoming")
	a.f.prepared = req
	if a.f.dstState == "" || a.f.stuck && a.f.dstState == "aborted" {
		a.f.dstState = "listening"
	}
	tr := "tls"
	if req.InsecureTransport {
		tr = "plain"
	}
	if a.f.plainDst {
		tr = ""
	}
	return &agentv1.PrepareIncomingResponse{Uri: "tcp:fake:1", Transport: tr}, nil
}

func (a fakeAgent) inStatus() *agentv1.IncomingStatus {
	pid := int64(2)
	if a.f.dstState == "aborted" {
		pid = 0
	}
	return &agentv1.IncomingStatus{State: a.f.dstState, Ran: a.f.dstRan, Vm: &ferryv1.VMStatus{Pid: pid, State: "paused"}}
}

func (a fakeAgent) QueryIncoming(context.Context, *agentv1.MigrationStepRequest) (*agentv1.IncomingStatus, error) {
	a.f.mu.Lock()
	defer a.f.mu.Unlock()
	return a.inStatus(), nil
}

func (a fakeAgent) ArmResume(context.Context, *agentv1.MigrationStepRequest) (*agentv1.IncomingStatus, error) {
	a.f.mu.Lock()
	defer a.f.mu.Unlock()
	a.f.note("ArmResume")
	if a.f.dstState == "listening" {
		a.f.dstState = "armed"
	}
	return a.inStatus(), nil
}

func (a fakeAgent) FinishIncoming(context.Context, *agentv1.MigrationStepRequest) (*agentv1.IncomingStatus, error) {
	a.f.mu.Lock()
	defer a.f.mu.Unlock()
	if a.f.srcStatus == "completed" && (a.f.dstState == "armed" || a.f.dstState == "running") {
		a.f.note("FinishIncoming")
		a.f.dstState, a.f.dstRan = "running", true
		return a.inStatus(), nil
	}
	return nil, connect.NewError(connect.CodeDeadlineExceeded, errors.New("fake: not running yet"))
}

func (a fakeAgent) CheckGuestAlive(_ context.Context, req *agentv1.CheckGuestAliveRequest) (*agentv1.CheckGuestAliveResponse, error) {
	a.f.mu.Lock()
	defer a.f.mu.Unlock()
	a.f.note("CheckGuestAlive")
	if !a.f.dstRan || req.TimeoutMs <= 0 {
		return nil, connect.NewError(connect.CodeFailedPrecondition, errors.New("fake: checked before the destination ran, or without a timeout"))
	}
	if a.f.guestDead {
		return &agentv1.CheckGuestAliveResponse{AliveAfterMs: -1, Method: "guest-ping", Detail: "fake: no answer"}, nil
	}
	return &agentv1.CheckGuestAliveResponse{Alive: true, AliveAfterMs: 12, Method: "guest-ping"}, nil
}

func (a fakeAgent) AbortIncoming(context.Context, *agentv1.MigrationStepRequest) error {
	a.f.mu.Lock()
	defer a.f.mu.Unlock()
	a.f.note("AbortIncoming")
	if a.f.dstRan {
		return connect.NewError(connect.CodeFailedPrecondition, errors.New("fake: it ran"))
	}
	a.f.dstState = "aborted"
	return nil
}

func (a fakeAgent) outStatus() *agentv1.OutgoingStatus {
	return &agentv1.OutgoingStatus{Status: a.f.srcStatus, TransferredBytes: int64(a.f.polls) << 20, TotalBytes: 64 << 20, DirtySyncCount: 1}
}

func (a fakeAgent) StartOutgoing(_ context.Context, req *agentv1.StartOutgoingRequest) (*agentv1.OutgoingStatus, error) {
	a.f.mu.Lock()
	defer a.f.mu.Unlock()
	a.f.note("StartOutgoing")
	a.f.started = req
	if a.f.srcStatus == "" || a.f.stuck && a.f.srcStatus == "cancelled" {
		a.f.srcStatus, a.f.polls, a.f.stuckNow = "active", 0, a.f.stuck && !req.Postcopy
	}
	return a.outStatus(), nil
}

func (a fakeAgent) QueryOutgoing(_ context.Context, req *agentv1.MigrationStepRequest) (*agentv1.OutgoingStatus, error) {
	a.f.mu.Lock()
	defer a.f.mu.Unlock()
	a.f.polls++
	a.f.polledBW = append(a.f.polledBW, req.MaxBandwidthBytes)
	if a.f.srcStatus == "active" && a.f.polls >= 3 && !a.f.hold && !a.f.stuckNow {
		a.f.srcStatus, a.f.srcRuns = "pre-switchover", false
	}
	return a.outStatus(), nil
}

func (a fakeAgent) ContinueOutgoing(context.Context, *agentv1.MigrationStepRequest) (*agentv1.OutgoingStatus, error) {
	a.f.mu.Lock()
	defer a.f.mu.Unlock()
	a.f.note("ContinueOutgoing")
	if a.f.srcStatus == "pre-switchover" {
		a.f.srcStatus = "completed"
	}
	return a.outStatus(), nil
}

func (a fakeAgent) CancelOutgoingVM(context.Context, *agentv1.MigrationStepRequest) (*ferryv1.VMStatus, error) {
	a.f.mu.Lock()
	defer a.f.mu.Unlock()
	a.f.note("CancelOutgoing")
	a.f.srcStatus, a.f.srcRuns = "cancelled", true
	return &ferryv1.VMStatus{State: "running", Pid: 1}, nil
}

func (a fakeAgent) FinishOutgoing(context.Context, *agentv1.MigrationStepRequest) error {
	a.f.mu.Lock()
	defer a.f.mu.Unlock()
	a.f.note("FinishOutgoing")
	return nil
}

func (a fakeAgent) GetVM(context.Context, string) (*ferryv1.VMStatus, error) {
	a.f.mu.Lock()
	defer a.f.mu.Unlock()
	if a.src {
		if a.f.srcRuns {
			return &ferryv1.VMStatus{State: "running", Pid: 1}, nil
		}
		return nil, connect.NewError(connect.CodeNotFound, errors.New("fake: gone"))
	}
	if a.f.dstState == "running" {
		return &ferryv1.VMStatus{State: "running", Pid: 2}, nil
	}
	return nil, connect.NewError(connect.CodeNotFound, errors.New("fake: not here"))
}

func (fakeAgent) StartPostcopy(context.Context, *agentv1.MigrationStepRequest) (*agentv1.OutgoingStatus, error) {
	return nil, errFakeUnsupported
}
func (fakeAgent) PauseMigration(context.Context, *agentv1.MigrationStepRequest) error {
	return errFakeUnsupported
}
func (fakeAgent) RecoverIncoming(context.Context, *agentv1.MigrationStepRequest) (string, error) {
	return "", errFakeUnsupported
}
func (fakeAgent) ResumeOutgoing(context.Context, *agentv1.ResumeOutgoingRequest) (*agentv1.OutgoingStatus, error) {
	return nil, errFakeUnsupported
}
func (fakeAgent) ProbeListen(context.Context) (string, error)            { return "", errFakeUnsupported }
func (fakeAgent) ProbeSend(context.Context, string, time.Duration) error { return errFakeUnsupported }
func (fakeAgent) StartVM(context.Context, *ferryv1.VMSpec) (*ferryv1.VMStatus, error) {
	return nil, errFakeUnsupported
}
func (fakeAgent) StopVM(context.Context, string, bool) (*ferryv1.VMStatus, error) {
	return nil, errFakeUnsupported
}
func (fakeAgent) DeleteVM(context.Context, string, string, bool) error { return nil }
func (fakeAgent) PrepareDiskCopy(context.Context, *agentv1.PrepareDiskCopyRequest) (*agentv1.PrepareDiskCopyResponse, error) {
	return nil, errors.New("fake agent: no disk copy")
}
func (fakeAgent) CopyDisks(context.Context, *agentv1.CopyDisksRequest) (*agentv1.OutgoingStatus, error) {
	return nil, errors.New("fake agent: no disk copy")
}

// fakeRecords is an in-memory Records.
type fakeRecords struct {
	mu   sync.Mutex
	recs map[string]*statev1.MigrationRecord
	fail bool
}

func (r *fakeRecords) PutMigration(_ context.Context, m *statev1.MigrationRecord) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.fail {
		return errors.New("fake store down")
	}
	r.recs[m.Id] = proto.Clone(m).(*statev1.MigrationRecord)
	return nil
}

func (r *fakeRecords) ListMigrations(context.Context) ([]*statev1.MigrationRecord, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []*statev1.MigrationRecord
	for _, m := range r.recs {
		out = append(out, proto.Clone(m).(*statev1.MigrationRecord))
	}
	return out, nil
}

func (r *fakeRecords) get(id string) *statev1.MigrationRecord {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.recs[id]
}

// newFakeEngine runs an Engine over fakes and returns it with its parts.
func newFakeEngine(t *testing.T) (*Engine, *fakeQEMUPair, *fakeVMStore, *fakeRecords, context.CancelFunc, chan error) {
	t.Helper()
	return newFakeEngineWith(t, Knobs{Spec: &ferryv1.VMSpec{Name: "web"}})
}

// newFakeEngineWith is newFakeEngine with the migrations' knobs.
func newFakeEngineWith(t *testing.T, knobs Knobs, share ...func(string) int64) (*Engine, *fakeQEMUPair, *fakeVMStore, *fakeRecords, context.CancelFunc, chan error) {
	t.Helper()
	pair := &fakeQEMUPair{srcRuns: true}
	vms := &fakeVMStore{vms: map[string]*ferryv1.VM{
		"web": {Spec: &ferryv1.VMSpec{Name: "web"}, Host: "h1", Generation: 5, State: "migrating", MigrationId: "mig-1"},
	}}
	recs := &fakeRecords{recs: map[string]*statev1.MigrationRecord{}}
	vms.recs = recs
	e := New(Config{
		Store: vms, Records: recs,
		AgentFor: func(_ context.Context, host string) (Agent, error) { return fakeAgent{f: pair, src: host == "h1"}, nil },
		Knobs:    func(*ferryv1.Migration, *ferryv1.VM) Knobs { return knobs },
	})
	if len(share) > 0 {
		e.cfg.Bandwidth = share[0]
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	stopped := make(chan struct{})
	go func() {
		err := e.Run(ctx)
		close(stopped)
		done <- err
	}()
	for i := 0; ; i++ {
		e.mu.Lock()
		running := e.running
		e.mu.Unlock()
		if running {
			break
		}
		if i > 1000 {
			t.Fatal("engine did not start")
		}
		time.Sleep(time.Millisecond)
	}
	t.Cleanup(func() { cancel(); <-stopped })
	return e, pair, vms, recs, cancel, done
}

func newFakeRecord(t *testing.T) (core.Record, *ferryv1.Migration) {
	t.Helper()
	now := time.Now()
	rec, err := core.New("mig-1", "web", "h1", "h2", core.Precopy, core.VMRunning, 5,
		core.Options{StallTimeout: 5 * time.Second, Timeout: time.Minute, RecoveryWindow: time.Minute}, now)
	if err != nil {
		t.Fatal(err)
	}
	return rec, &ferryv1.Migration{Id: "mig-1", Vm: "web", From: "h1", To: "h2", Strategy: "precopy", Options: &ferryv1.MigrationOptions{}}
}

// waitStatus polls the engine's report until status is want.
func waitStatus(t *testing.T, e *Engine, recs *fakeRecords, id, want string) *ferryv1.Migration {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		m, ok := e.Get(id, false)
		if !ok {
			if pr := recs.get(id); pr != nil {
				m = Render(pr)
			}
		}
		if m != nil && m.Status == want {
			return m
		}
		time.Sleep(5 * time.Millisecond)
	}
	m, _ := e.Get(id, false)
	t.Fatalf("migration %s not %s within 10s: %v", id, want, m)
	return nil
}

func TestEngineDrivesAPrecopyToItsEnd(t *testing.T) {
	e, pair, vms, recs, _, _ := newFakeEngine(t)
	rec, report := newFakeRecord(t)
	if err := e.Start(context.Background(), rec, report); err != nil {
		t.Fatal(err)
	}
	m := waitStatus(t, e, recs, "mig-1", "completed")
	vm, _ := vms.GetVM(context.Background(), "web")
	if vm.Host != "h2" || vm.State != "running" || vm.MigrationId != "" {
		t.Errorf("VM record after the migration: host %s state %s migration %q; want h2, running, unlocked", vm.Host, vm.State, vm.MigrationId)
	}
	pr := recs.get("mig-1")
	if pr.GetState() != "completed" || pr.GetReport().GetStatus() != "completed" || !pr.GetFacts().GetOwnerSwitched() {
		t.Errorf("stored record: state %s report status %s facts %v", pr.GetState(), pr.GetReport().GetStatus(), pr.GetFacts())
	}
	if m.GuestAliveAfterMs != 12 || m.GuestAliveMethod != "guest-ping" || len(m.Warnings) != 0 {
		t.Errorf("report: guestAliveAfterMs %d method %q warnings %q; want 12 by guest-ping, none", m.GuestAliveAfterMs, m.GuestAliveMethod, m.Warnings)
	}
	if m.TransferredBytes == 0 || len(m.Events) < 4 {
		t.Errorf("report: transferred %d, %d events; want figures and the history", m.TransferredBytes, len(m.Events))
	}
	pair.mu.Lock()
	defer pair.mu.Unlock()
	t.Logf("agent calls: %v", pair.calls)
	// The destination is armed only after the owner CAS, and continue
	// only after it is armed; the guest-alive check runs beside the
	// source's quit, both after the destination ran (and the final record
	// above carries its answer).
	calls := slices.Clone(pair.calls)
	if n := len(calls); n == 7 && calls[5] == "FinishOutgoing" && calls[6] == "CheckGuestAlive" {
		calls[5], calls[6] = calls[6], calls[5]
	}
	want := []string{"PrepareIncoming", "StartOutgoing", "ArmResume", "ContinueOutgoing", "FinishIncoming", "CheckGuestAlive", "FinishOutgoing"}
	if fmt.Sprint(calls) != fmt.Sprint(want) {
		t.Errorf("agent calls %v, want %v (the last two in either order)", pair.calls, want)
	}
	// Encrypted streams by default, each side naming the other host.
	if p, st := pair.prepared, pair.started; p.SourceHost != "h1" || p.InsecureTransport || st.DestHost != "h2" || st.InsecureTransport {
		t.Errorf("PrepareIncoming source_host %q insecure %v, StartOutgoing dest_host %q insecure %v; want h1/h2 on TLS",
			p.SourceHost, p.InsecureTransport, st.DestHost, st.InsecureTransport)
	}
}

func TestEngineWarnsWhenTheGuestIsUnresponsive(t *testing.T) {
	e, pair, vms, recs, _, _ := newFakeEngine(t)
	pair.guestDead = true
	rec, report := newFakeRecord(t)
	if err := e.Start(context.Background(), rec, report); err != nil {
		t.Fatal(err)
	}
	waitStatus(t, e, recs, "mig-1", "completed")
	// The guest ran on the destination: it stays there, the report says why
	// it is suspicious (also as stored).
	vm, _ := vms.GetVM(context.Background(), "web")
	if vm.Host != "h2" || vm.State != "running" {
		t.Errorf("VM record: host %s state %s; want h2 running (never rolled back)", vm.Host, vm.State)
	}
	m := recs.get("mig-1").GetReport()
	if m.GuestAliveAfterMs != -1 || len(m.Warnings) != 1 || !strings.HasPrefix(m.Warnings[0], WarnGuestUnresponsive+": ") {
		t.Fatalf("stored report: guestAliveAfterMs %d warnings %q; want -1 and one %q warning", m.GuestAliveAfterMs, m.Warnings, WarnGuestUnresponsive)
	}
	var warned bool
	for i, ev := range m.Events {
		if ev.State == warningState {
			warned = strings.Contains(ev.Message, WarnGuestUnresponsive) && i < len(m.Events)-1 // before completed
		}
	}
	if !warned {
		t.Errorf("events %v: want a warning event before the end", m.Events)
	}
	// A report rendered again from the stored one keeps the warning event.
	again := Render(recs.get("mig-1"))
	if n := len(warningEvents(again)); n != 1 {
		t.Errorf("re-rendered report has %d warning events, want 1", n)
	}
}

func TestEngineRefusesToStartWhenNotRunning(t *testing.T) {
	e := New(Config{Records: &fakeRecords{recs: map[string]*statev1.MigrationRecord{}}})
	rec, report := newFakeRecord(t)
	if err := e.Start(context.Background(), rec, report); !errors.Is(err, ErrNotRunning) {
		t.Fatalf("Start without Run = %v, want ErrNotRunning", err)
	}
}

func TestEngineStopsAndTheNextRunRecovers(t *testing.T) {
	e, pair, _, recs, cancel, done := newFakeEngine(t)
	rec, report := newFakeRecord(t)
	recs.fail = false
	// A record persisted mid-transfer by a previous leader; the agents'
	// QEMUs go on with the transfer.
	rec.State, rec.Facts.DestPrepared, rec.Facts.OutgoingStarted, rec.DestURI = core.Transferring, true, true, "tcp:fake:1"
	pair.srcStatus, pair.dstState = "active", "listening"
	pr := core.ToProto(rec)
	pr.Report = report
	cancel()
	<-done
	if err := recs.PutMigration(context.Background(), pr); err != nil {
		t.Fatal(err)
	}
	// This replica leads again: it recovers the record and, the owner not
	// having switched, adopts the running transfer (core/handover.go).
	ctx, cancel2 := context.WithCancel(context.Background())
	defer cancel2()
	go func() { _ = e.Run(ctx) }()
	m := waitStatus(t, e, recs, "mig-1", "completed")
	if !slices.ContainsFunc(m.Events, func(ev *ferryv1.MigrationEvent) bool { return strings.Contains(ev.Message, "adopted by a new leader") }) {
		t.Errorf("events %v: want the adoption", m.Events)
	}
}

// A destination that answers PrepareIncoming without an NBD export of the
// VM's local disks (an agent that knows nothing of them) fails the
// migration before any RAM is sent: its disks would stay empty.
func TestEngineRefusesADestinationWithoutTheDisksExport(t *testing.T) {
	e, pair, vms, recs, _, _ := newFakeEngineWith(t, Knobs{Spec: &ferryv1.VMSpec{Name: "web"},
		LocalDisks: []*agentv1.LocalDisk{{Name: "data", Format: "qcow2", VirtualSizeBytes: 1 << 30}}})
	rec, report := newFakeRecord(t)
	if err := e.Start(context.Background(), rec, report); err != nil {
		t.Fatal(err)
	}
	m := waitStatus(t, e, recs, "mig-1", "failed")
	if !strings.Contains(m.Error, "does not export the VM's 1 local disks") {
		t.Errorf("error %q", m.Error)
	}
	if vm, _ := vms.GetVM(context.Background(), "web"); vm.Host != "h1" {
		t.Errorf("VM on %s after the refusal", vm.Host)
	}
	pair.mu.Lock()
	defer pair.mu.Unlock()
	for _, c := range pair.calls {
		if c == "StartOutgoing" {
			t.Errorf("StartOutgoing sent although the destination exports no disks: %v", pair.calls)
		}
	}
}

// The engine asks both sides for TLS streams naming the other host, and
// refuses a destination that would listen in plaintext (an agent older
// than encrypted streams) before the source sends anything.
func TestEngineAsksForTLSAndRefusesAPlaintextDestination(t *testing.T) {
	e, pair, _, recs, _, _ := newFakeEngineWith(t, Knobs{Spec: &ferryv1.VMSpec{Name: "web"}})
	pair.mu.Lock()
	pair.plainDst = true
	pair.mu.Unlock()
	rec, report := newFakeRecord(t)
	if err := e.Start(context.Background(), rec, report); err != nil {
		t.Fatal(err)
	}
	m := waitStatus(t, e, recs, "mig-1", "failed")
	if !strings.Contains(m.Error, "does not listen on TLS") {
		t.Errorf("error %q", m.Error)
	}
	pair.mu.Lock()
	defer pair.mu.Unlock()
	if p := pair.prepared; p == nil || p.SourceHost != "h1" || p.InsecureTransport {
		t.Errorf("PrepareIncoming %v, want source_host h1 and TLS", p)
	}
	if slices.Contains(pair.calls, "StartOutgoing") {
		t.Errorf("StartOutgoing sent to a plaintext destination: %v", pair.calls)
	}
}

func TestReporterAliveReplacesAnEarlierCheck(t *testing.T) {
	_, report := newFakeRecord(t)
	r := newReporter(report, nil)
	r.Alive(nil, errors.New("fake: agent unreachable"), time.Now())
	r.Alive(&agentv1.CheckGuestAliveResponse{AliveAfterMs: -1, Method: "guest-ping", Detail: "fake: no answer"}, nil, time.Now())
	if w := r.m.Warnings; len(w) != 1 || !strings.HasPrefix(w[0], WarnGuestUnresponsive+": ") || len(r.extra) != 1 {
		t.Fatalf("after two checks: warnings %q, %d events; want only the last one's", w, len(r.extra))
	}
	r.Alive(&agentv1.CheckGuestAliveResponse{Alive: true, AliveAfterMs: 40, Method: "vcpu"}, nil, time.Now())
	if len(r.m.Warnings) != 0 || len(r.extra) != 0 || r.m.GuestAliveAfterMs != 40 || r.m.GuestAliveMethod != "vcpu" {
		t.Fatalf("after an alive check: %q %v %d %q", r.m.Warnings, r.extra, r.m.GuestAliveAfterMs, r.m.GuestAliveMethod)
	}
}

// TestEngineReportsTheEndOnce: the Ended hook (the server's migration
// counters) is told a finished migration's final report exactly once,
// after its terminal record was persisted.
func TestEngineReportsTheEndOnce(t *testing.T) {
	e, _, _, recs, _, _ := newFakeEngine(t)
	var mu sync.Mutex
	var ended []*ferryv1.Migration
	var persisted string
	e.cfg.Ended = func(m *ferryv1.Migration) {
		mu.Lock()
		defer mu.Unlock()
		ended = append(ended, m)
		persisted = recs.get(m.Id).GetState()
	}
	rec, report := newFakeRecord(t)
	if err := e.Start(context.Background(), rec, report); err != nil {
		t.Fatal(err)
	}
	waitStatus(t, e, recs, "mig-1", "completed")
	deadline := time.Now().Add(10 * time.Second)
	for {
		mu.Lock()
		n := len(ended)
		mu.Unlock()
		if n > 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	time.Sleep(50 * time.Millisecond)
	mu.Lock()
	defer mu.Unlock()
	if len(ended) != 1 || ended[0].Status != "completed" || ended[0].Strategy != "precopy" {
		t.Fatalf("Ended calls: %v; want one completed precopy report", ended)
	}
	if persisted != "completed" {
		t.Errorf("record state when Ended ran: %q, want completed (persisted first)", persisted)
	}
}

// TestEngineEndedAcrossALeaderChange: a new leader's engine reports the
// end of a migration it recovered mid-transfer once, and never that of a
// migration the previous leader already finished (its terminal record).
func TestEngineEndedAcrossALeaderChange(t *testing.T) {
	e, pair, _, recs, cancel, done := newFakeEngine(t)
	pair.srcStatus, pair.dstState = "active", "listening"
	var mu sync.Mutex
	ended := map[string]int{}
	e.cfg.Ended = func(m *ferryv1.Migration) { mu.Lock(); ended[m.Id]++; mu.Unlock() }
	cancel()
	<-done
	rec, report := newFakeRecord(t)
	rec.State, rec.Facts.DestPrepared, rec.Facts.OutgoingStarted, rec.DestURI = core.Transferring, true, true, "tcp:fake:1"
	pr := core.ToProto(rec)
	pr.Report = report
	if err := recs.PutMigration(context.Background(), pr); err != nil {
		t.Fatal(err)
	}
	fin := core.ToProto(rec)
	fin.Id, fin.State = "mig-0", string(core.Completed)
	fin.Report = &ferryv1.Migration{Id: "mig-0", Vm: "old", Status: "completed", Strategy: "precopy"}
	if err := recs.PutMigration(context.Background(), fin); err != nil {
		t.Fatal(err)
	}
	ctx, cancel2 := context.WithCancel(context.Background())
	stopped := make(chan struct{})
	go func() { _ = e.Run(ctx); close(stopped) }()
	waitStatus(t, e, recs, "mig-1", "completed")
	cancel2()
	<-stopped // every migration goroutine returned
	mu.Lock()
	defer mu.Unlock()
	if ended["mig-1"] != 1 || ended["mig-0"] != 0 {
		t.Errorf("Ended calls %v, want mig-1 once (recovered, adopted) and mig-0 never (finished before)", ended)
	}
}

// TestEngineGivesTheLiveBandwidthShare: the migration starts at its share
// of the per-host bandwidth (below its own cap) and every progress poll
// carries the share in force then (re-shared as others start and end).
func TestEngineGivesTheLiveBandwidthShare(t *testing.T) {
	var mu sync.Mutex
	share := int64(40 << 20)
	e, pair, _, recs, _, _ := newFakeEngineWith(t, Knobs{Spec: &ferryv1.VMSpec{Name: "web"}, MaxBandwidthBytes: 100 << 20, MaxPostcopyBandwidthBytes: 80 << 20},
		func(id string) int64 {
			mu.Lock()
			defer mu.Unlock()
			if id != "mig-1" {
				return 0
			}
			s := share
			share = 200 << 20 // another migration ended: above the migration's own cap from now on
			return s
		})
	rec, report := newFakeRecord(t)
	if err := e.Start(context.Background(), rec, report); err != nil {
		t.Fatal(err)
	}
	waitStatus(t, e, recs, "mig-1", "completed")
	pair.mu.Lock()
	defer pair.mu.Unlock()
	if st := pair.started; st.MaxBandwidthBytes != 40<<20 || st.MaxPostcopyBandwidthBytes != 40<<20 {
		t.Errorf("StartOutgoing max-bandwidth %d, postcopy %d; want the 40 MiB/s share for both", st.MaxBandwidthBytes, st.MaxPostcopyBandwidthBytes)
	}
	if len(pair.polledBW) == 0 || pair.polledBW[0] != 100<<20 {
		t.Errorf("polls carried %v; want the migration's own 100 MiB/s cap once the share rose above it", pair.polledBW)
	}
}
