package cli

import (
	"bytes"
	"context"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	statev1 "github.com/ferryvm/ferry/gen/ferry/state/v1"
	ferryv1 "github.com/ferryvm/ferry/gen/ferry/v1"
	"github.com/ferryvm/ferry/internal/etcdembed/etcdtest"
	"github.com/ferryvm/ferry/internal/server"
)

// syncBuffer is a bytes.Buffer safe to read while the CLI writes it.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}
func (s *syncBuffer) String() string { s.mu.Lock(); defer s.mu.Unlock(); return s.b.String() }

// TestEventsFollowAgainstTheServer: against a real server over embedded
// etcd whose leader records events, `ferry events --vm web --follow`
// prints web's migration's state changes in order as they happen.
func TestEventsFollowAgainstTheServer(t *testing.T) {
	ctx := context.Background()
	st := etcdtest.Store(t, t.TempDir())
	for _, name := range []string{"web", "db"} {
		if err := st.CreateVM(ctx, &ferryv1.VM{Spec: &ferryv1.VMSpec{Name: name, Vcpus: 1, MemoryMib: 256}, Host: "h1", State: "running", Generation: 1}); err != nil {
			t.Fatal(err)
		}
	}
	s := server.New(server.Config{Store: st})
	ectx, stopEngine := context.WithCancel(ctx)
	engineDone := make(chan error, 1)
	go func() { engineDone <- s.RunEngine(ectx) }()
	t.Cleanup(func() { stopEngine(); <-engineDone })
	srv := httptest.NewServer(s.Handler())
	t.Cleanup(srv.Close)
	setVM := func(name, state, host string) {
		t.Helper()
		if _, err := st.UpdateVM(ctx, name, false, func(v *ferryv1.VM) error { v.State, v.Host = state, host; return nil }); err != nil {
			t.Fatal(err)
		}
	}
	// The recorder starts with the engine: wait until it records db.
	for i := 0; ; i++ {
		setVM("db", []string{"stopped", "running"}[i%2], "h1")
		out, _, err := runCLI(t, nil, "--server", srv.URL, "events", "--vm", "db")
		if err != nil {
			t.Fatal(err)
		}
		if out != "" {
			break
		}
		if i > 100 {
			t.Fatal("the leader recorded no event within 10 s")
		}
		time.Sleep(100 * time.Millisecond)
	}

	var out syncBuffer
	fctx, stopFollow := context.WithCancel(ctx)
	defer stopFollow()
	root := NewRoot()
	root.SetOut(&out)
	root.SetErr(&out)
	root.SetArgs([]string{"--server", srv.URL, "events", "--vm", "web", "--follow"})
	followDone := make(chan error, 1)
	go func() { followDone <- root.ExecuteContext(fctx) }()

	setVM("web", "migrating", "h1")
	for _, state := range []string{"pending", "transferring", "switchover", "completed"} {
		if err := st.PutMigration(ctx, &statev1.MigrationRecord{Id: "mig-1", Vm: "web", From: "h1", To: "h2", Strategy: "precopy", State: state}); err != nil {
			t.Fatal(err)
		}
	}
	setVM("web", "running", "h2")
	want := []string{"running -> migrating", "- -> pending", "pending -> transferring", "transferring -> switchover",
		"switchover -> completed", "migrating -> running  moved from h1 to h2"}
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(out.String(), want[len(want)-1]) && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	stopFollow()
	if err := <-followDone; err != nil {
		t.Errorf("follow ended with %v", err)
	}
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	if len(lines) != len(want) {
		t.Fatalf("follow printed %d lines, want %d:\n%s", len(lines), len(want), out.String())
	}
	for i, w := range want {
		if !strings.Contains(lines[i], w) {
			t.Errorf("line %d %q, want %q", i, lines[i], w)
		}
	}
}
