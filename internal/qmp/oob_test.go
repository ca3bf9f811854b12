package qmp

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/ferryvm/ferry/internal/qmp/qmptest"
)

// The post-copy commands go out of band when the session has it, every
// other command in band; without "oob" in the greeting (or with
// WithoutOOB) nothing is negotiated and they go in band.
func TestOOBCommands(t *testing.T) {
	for _, tc := range []struct {
		name    string
		opts    []qmptest.Option
		connect []Option
		oob     bool
	}{
		{name: "offered", oob: true},
		{name: "not offered", opts: []qmptest.Option{qmptest.WithGreeting(`{"QMP": {"version": {"qemu": {"micro": 0, "minor": 0, "major": 10}, "package": ""}, "capabilities": []}}`)}},
		{name: "declined", connect: []Option{WithoutOOB()}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := qmptest.NewServer(t, tc.opts...)
			s.HandleStatic("migrate-recover", qmptest.Reply{})
			s.HandleStatic("migrate-pause", qmptest.Reply{})
			s.HandleStatic("query-status", qmptest.Reply{Return: map[string]any{"status": "running", "running": true}})
			m := connectFake(t, s, tc.connect...)
			if m.OOB() != tc.oob {
				t.Fatalf("OOB() = %v, want %v", m.OOB(), tc.oob)
			}
			ctx := testCtx(t)
			if err := m.MigrateRecover(ctx, "unix:/x"); err != nil {
				t.Fatal(err)
			}
			if err := m.MigratePause(ctx); err != nil {
				t.Fatal(err)
			}
			if _, err := m.QueryStatus(ctx); err != nil {
				t.Fatal(err)
			}
			rcv := s.Received()
			if len(rcv) != 4 {
				t.Fatalf("received %+v", rcv)
			}
			caps := string(rcv[0].Arguments)
			if tc.oob != (caps == `{"enable":["oob"]}`) {
				t.Errorf("qmp_capabilities arguments %q with oob %v", caps, tc.oob)
			}
			for i, want := range []bool{tc.oob, tc.oob, false} {
				if c := rcv[i+1]; c.OOB != want {
					t.Errorf("%s: out of band %v, want %v", c.Execute, c.OOB, want)
				}
			}
		})
	}
}

// A QEMU whose main loop is blocked answers no in-band command: at most
// MaxInBand of them stay unanswered in its queue (also after their callers
// gave up), a further one fails at once with its context, and an
// out-of-band command still goes through and is answered.
func TestOOBPassesABlockedMainLoop(t *testing.T) {
	s := qmptest.NewServer(t)
	s.HandleStatic("query-migrate", qmptest.Reply{Never: true})
	s.HandleStatic("migrate-recover", qmptest.Reply{})
	m := connectFake(t, s)
	for range MaxInBand + 2 {
		ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
		_, err := m.QueryMigrate(ctx)
		cancel()
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("query-migrate on a blocked main loop: %v, want a deadline", err)
		}
	}
	if err := m.MigrateRecover(testCtx(t), "unix:/x"); err != nil {
		t.Fatalf("migrate-recover out of band: %v", err)
	}
	var inBand, oob int
	for _, c := range s.Received()[1:] {
		if c.OOB {
			oob++
		} else {
			inBand++
		}
	}
	if inBand != MaxInBand || oob != 1 {
		t.Fatalf("QEMU received %d in-band commands (want %d: the rest waited for a slot) and %d out of band", inBand, MaxInBand, oob)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	_, err := m.QueryMigrate(ctx)
	if err == nil || !strings.Contains(err.Error(), "has not answered") {
		t.Fatalf("in-band command with every slot held: %v, want an error saying QEMU has not answered", err)
	}
}

// A reply frees its in-band slot, also one whose caller gave up.
func TestOOBSlotFreedByLateReply(t *testing.T) {
	s := qmptest.NewServer(t)
	s.HandleStatic("query-status", qmptest.Reply{Delay: 100 * time.Millisecond, Return: map[string]any{"status": "running", "running": true}})
	m := connectFake(t, s)
	for range MaxInBand {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Millisecond)
		_, _ = m.QueryStatus(ctx)
		cancel()
	}
	// The late replies arrive after 100 ms and free the slots.
	if _, err := m.QueryStatus(testCtx(t)); err != nil {
		t.Fatalf("query-status after the late replies: %v", err)
	}
}
