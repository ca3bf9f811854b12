package agent

import (
	"bytes"
	"log/slog"
	"os"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	ferryv1 "github.com/ferryvm/ferry/gen/ferry/v1"
)

func TestReaperChoosesOnlyLongUnnamedQEMUs(t *testing.T) {
	t0 := time.Unix(1_000_000, 0)
	grace := time.Minute
	old := t0.Add(-time.Hour)
	auth := func(vms, migs []string) expectation {
		e := expectation{authoritative: true, vms: map[string]bool{}, migrations: map[string]bool{}}
		for _, n := range vms {
			e.vms[n] = true
		}
		for _, id := range migs {
			e.migrations[id] = true
		}
		return e
	}
	facts := []vmFacts{
		{name: "named", qemu: true, started: old},
		{name: "orphan", qemu: true, started: old},
		{name: "young", qemu: true, started: t0.Add(30 * time.Second)},
		{name: "migrating", qemu: true, started: old, migrations: []string{"m1"}},
		{name: "stopped", qemu: false, started: old},
		{name: "ran", qemu: true, started: old, migrations: []string{"m9"}, ran: true},
	}
	exp := auth([]string{"named"}, []string{"m1"})
	var r reaper
	steps := []struct {
		at         time.Duration
		exp        expectation
		reap, warn []string
	}{
		{0, exp, nil, nil},                                           // first seen unnamed: the grace starts
		{30 * time.Second, exp, nil, nil},                            // unnamed for less than the grace
		{61 * time.Second, expectation{}, nil, nil},                  // not authoritative: never reaps
		{61 * time.Second, exp, []string{"orphan"}, []string{"ran"}}, // young appeared 31s before
		{62 * time.Second, exp, []string{"orphan"}, nil},             // the warning is given once
		{95 * time.Second, exp, []string{"orphan", "young"}, nil},
		{96 * time.Second, auth([]string{"named", "orphan", "young"}, []string{"m1"}), nil, nil}, // named again: reset
		{97 * time.Second, exp, nil, nil},
		{98 * time.Second, auth(nil, nil), nil, nil}, // named was named 2s ago... and migrating unnamed since now
	}
	for i, s := range steps {
		reap, warn := r.observe(t0.Add(s.at), grace, s.exp, facts)
		if !reflect.DeepEqual(reap, s.reap) || !reflect.DeepEqual(warn, s.warn) {
			t.Fatalf("step %d (t+%s): reap %v warn %v, want reap %v warn %v", i, s.at, reap, warn, s.reap, s.warn)
		}
	}
	// Every VM unnamed for the grace and old enough: all but the one that ran.
	reap, _ := r.observe(t0.Add(98*time.Second+grace), grace, auth(nil, nil), facts)
	if want := []string{"migrating", "named", "orphan", "young"}; !reflect.DeepEqual(reap, want) {
		t.Fatalf("reap %v, want %v", reap, want)
	}
}

// syncBuffer is a log sink safe for concurrent writers.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func TestReapOrphansStopsAndRemovesUnnamedQEMUs(t *testing.T) {
	ta := newTestAgent(t)
	var logs syncBuffer
	ta.a.log = slog.New(slog.NewTextHandler(&logs, nil))
	ta.a.cfg.OrphanGrace = 50 * time.Millisecond
	startVM(t, ta, "kept")
	startVM(t, ta, "orphan")
	mustPrepare(t, ta, "arriving", "m1")
	mustPrepare(t, ta, "stale", "m0")
	kept, orphan, arriving, stale := ta.qemu("kept"), ta.qemu("orphan"), ta.qemu("arriving"), ta.qemu("stale")
	resp := &ferryv1.HeartbeatResponse{ExpectedVms: []string{"kept"}, InflightMigrations: []string{"m1"}, Authoritative: true}
	notAuth := &ferryv1.HeartbeatResponse{}
	ctx := testCtx(t)

	ta.a.reapOrphans(ctx, resp) // the grace starts
	time.Sleep(80 * time.Millisecond)
	ta.a.reapOrphans(ctx, notAuth)
	if !orphan.Alive() || !stale.Alive() {
		t.Fatal("a reply that is not authoritative reaped")
	}
	ta.a.reapOrphans(ctx, resp)
	if orphan.Alive() || stale.Alive() {
		t.Fatalf("orphans not reaped: orphan alive %v, stale arrival alive %v", orphan.Alive(), stale.Alive())
	}
	if !kept.Alive() || !arriving.Alive() {
		t.Fatalf("reaped a named VM (%v) or one with an in-flight migration (%v)", !kept.Alive(), !arriving.Alive())
	}
	for _, name := range []string{"orphan", "stale"} {
		if _, err := os.Stat(ta.a.newVM(name).dir); !os.IsNotExist(err) {
			t.Fatalf("reaped VM %s left its directory: %v", name, err)
		}
		if _, ok := ta.a.find(name); ok {
			t.Fatalf("reaped VM %s still listed", name)
		}
	}
	if !strings.Contains(logs.String(), "removing orphan QEMU") || !strings.Contains(logs.String(), "vm=orphan") {
		t.Fatalf("no log line for the reaped QEMU:\n%s", logs.String())
	}
}

func TestReaperGraceRestartsWithTheAgent(t *testing.T) {
	ta := newTestAgent(t)
	ta.a.cfg.OrphanGrace = 50 * time.Millisecond
	startVM(t, ta, "orphan")
	q := ta.qemu("orphan")
	resp := &ferryv1.HeartbeatResponse{Authoritative: true}
	ta.a.reapOrphans(testCtx(t), resp)
	time.Sleep(80 * time.Millisecond)
	ta = ta.restart()
	ta.a.cfg.OrphanGrace = 50 * time.Millisecond
	ta.a.reapOrphans(testCtx(t), resp) // found again: a fresh grace
	if !q.Alive() {
		t.Fatal("reaped a QEMU the restarted agent had just found")
	}
	time.Sleep(80 * time.Millisecond)
	ta.a.reapOrphans(testCtx(t), resp)
	if q.Alive() {
		t.Fatal("orphan not reaped after the grace")
	}
}

func TestStrandedArrivalIsAdopted(t *testing.T) {
	ta := newTestAgent(t)
	mustPrepare(t, ta, "web", "m1")
	arm(t, ta, "web", "m1")
	if err := ta.qemu("web").ArriveIncoming(); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the destination to run", func() bool { return queryIn(t, ta, "web", "m1").Ran })
	// In flight: left to the engine.
	ta.a.reapOrphans(testCtx(t), &ferryv1.HeartbeatResponse{ExpectedVms: []string{"web"}, InflightMigrations: []string{"m1"}, Authoritative: true})
	if st := queryIn(t, ta, "web", "m1"); st.State != "running" {
		t.Fatalf("arrival adopted while its migration is in flight: %+v", st)
	}
	// The migration ended and the record names this host: adopted.
	ta.a.reapOrphans(testCtx(t), &ferryv1.HeartbeatResponse{ExpectedVms: []string{"web"}, Authoritative: true})
	if st := queryIn(t, ta, "web", "m1"); st.State != "adopted" || getVM(t, ta, "web").State != "running" {
		t.Fatalf("stranded arrival not adopted: %+v", st)
	}
}

func TestIncomingMarkerOfAnOlderAgentIsRead(t *testing.T) {
	dir := t.TempDir()
	path := dir + "/" + incomingMarker
	if err := os.WriteFile(path, []byte("mig-1234\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	var rec incomingRecord
	ok, err := readRecord(path, &rec)
	if !ok || err != nil || rec.ID != "mig-1234" || rec.Ran || rec.Adopted {
		t.Fatalf("legacy marker: ok %v err %v rec %+v", ok, err, rec)
	}
	if ok, err := readRecord(dir+"/none", &rec); ok || err != nil {
		t.Fatalf("missing record: ok %v err %v", ok, err)
	}
}
