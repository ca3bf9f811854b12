package qmptest_test

import (
	"context"
	"errors"
	"path/filepath"
	"testing"
	"time"

	"github.com/ferryvm/ferry/internal/qmp"
	"github.com/ferryvm/ferry/internal/qmp/qmptest"
)

func connect(t *testing.T, q *qmptest.FakeQEMU) *qmp.Monitor {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	m, err := qmp.Connect(ctx, q.Server().Path())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = m.Close() })
	return m
}

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	t.Cleanup(cancel)
	return c
}

func TestFakeQEMUSourceSwitchover(t *testing.T) {
	q, err := qmptest.StartFakeQEMU(filepath.Join(t.TempDir(), "qmp.sock"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(q.Close)
	m := connect(t, q)
	sub := m.Subscribe(qmp.EventMigration, qmp.EventStop)
	defer sub.Close()
	if err := m.MigrateSetCapabilities(ctx(t), []qmp.CapabilityState{{Capability: qmp.CapEvents, State: true}, {Capability: qmp.CapPauseBeforeSwitchover, State: true}}); err != nil {
		t.Fatal(err)
	}
	if err := m.Migrate(ctx(t), "tcp:127.0.0.1:1", qmp.MigrateOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := m.MigrateContinue(ctx(t), qmp.MigrationStatusPreSwitchover); !errors.Is(err, qmp.ErrGenericError) {
		t.Fatalf("migrate-continue while active: %v, want a GenericError", err)
	}
	if err := q.ReachPreSwitchover(); err != nil {
		t.Fatal(err)
	}
	st, err := m.QueryStatus(ctx(t))
	if err != nil || st.Status != qmp.RunStateFinishMigrate || st.Running {
		t.Fatalf("at pre-switchover: %+v %v", st, err)
	}
	if err := m.MigrateContinue(ctx(t), qmp.MigrationStatusPreSwitchover); err != nil {
		t.Fatal(err)
	}
	info, err := m.QueryMigrate(ctx(t))
	if err != nil || info.CurrentStatus() != qmp.MigrationStatusCompleted || info.RAM == nil {
		t.Fatalf("after continue: %+v %v", info, err)
	}
	var seen []string
	deadline := time.After(5 * time.Second)
	for len(seen) < 6 {
		select {
		case ev := <-sub.C():
			if ev.Name == qmp.EventStop {
				seen = append(seen, "STOP")
				continue
			}
			me, _ := ev.AsMigration()
			seen = append(seen, string(me.Status))
		case <-deadline:
			t.Fatalf("events so far %v", seen)
		}
	}
	want := []string{"setup", "active", "STOP", "pre-switchover", "device", "completed"}
	for i := range want {
		if seen[i] != want[i] {
			t.Fatalf("events %v, want %v", seen, want)
		}
	}
	// A completed source resumes on cont (QEMU re-activates its disks).
	if err := m.Cont(ctx(t)); err != nil || q.RunState() != qmptest.RunRunning {
		t.Fatalf("cont of a completed source: %v, state %s", err, q.RunState())
	}
	if err := m.Quit(ctx(t)); err != nil {
		t.Fatal(err)
	}
	select {
	case <-q.Exited():
	case <-time.After(5 * time.Second):
		t.Fatal("fake QEMU did not exit on quit")
	}
}

func TestFakeQEMUIncomingAutostart(t *testing.T) {
	for _, armed := range []bool{false, true} {
		q, err := qmptest.StartFakeQEMU(filepath.Join(t.TempDir(), "qmp.sock"), qmptest.Incoming())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(q.Close)
		m := connect(t, q)
		if err := m.MigrateIncoming(ctx(t), "tcp:10.0.0.1:0"); err != nil {
			t.Fatal(err)
		}
		info, err := m.QueryMigrate(ctx(t))
		if err != nil || len(info.SocketAddress) != 1 || info.SocketAddress[0].Port != "49152" || info.SocketAddress[0].Host != "10.0.0.1" {
			t.Fatalf("listening: %+v %v", info, err)
		}
		if armed {
			if err := m.Cont(ctx(t)); err != nil || q.RunState() != qmptest.RunInMigrate {
				t.Fatalf("cont while inmigrate: %v, state %s (must only set autostart)", err, q.RunState())
			}
		}
		if err := q.ArriveIncoming(); err != nil {
			t.Fatal(err)
		}
		want := qmptest.RunPaused
		if armed {
			want = qmptest.RunRunning
		}
		if q.RunState() != want {
			t.Fatalf("armed %v: after the state arrived %s, want %s", armed, q.RunState(), want)
		}
	}
}

func TestServerFaults(t *testing.T) {
	s := qmptest.NewServer(t)
	s.HandleStatic("ping", qmptest.Reply{})
	m, err := qmp.Connect(ctx(t), s.Path())
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	s.DropNextReply("ping")
	short, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	if err := m.Run(short, "ping", nil, nil); err == nil {
		t.Fatal("a dropped reply was answered")
	}
	if err := m.Run(ctx(t), "ping", nil, nil); err != nil {
		t.Fatalf("the next ping: %v", err)
	}
	if s.Count("ping") != 2 {
		t.Fatalf("received %d pings, want 2", s.Count("ping"))
	}
	s.CloseOnNext("ping")
	if err := m.Run(ctx(t), "ping", nil, nil); !errors.Is(err, qmp.ErrDisconnected) {
		t.Fatalf("closed connection: %v, want ErrDisconnected", err)
	}
}
