package agent

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"
	agentv1 "github.com/ferryvm/ferry/gen/ferry/agent/v1"
	ferryv1 "github.com/ferryvm/ferry/gen/ferry/v1"
	"github.com/ferryvm/ferry/internal/pki"
	"github.com/ferryvm/ferry/internal/qemu"
	"github.com/ferryvm/ferry/internal/qmp/qmptest"
)

// fakeRuntime is a QEMURuntime that starts qmptest.FakeQEMUs instead of
// QEMU. It outlives the Agents of a test, like QEMU processes outlive an
// agent, so a new Agent over the same data dir reattaches to them.
type fakeRuntime struct {
	t       *testing.T
	mu      sync.Mutex
	byPath  map[string]*fakeProc
	nextPID int
	starts  int
}

func newFakeRuntime(t *testing.T) *fakeRuntime {
	rt := &fakeRuntime{t: t, byPath: map[string]*fakeProc{}, nextPID: 4000}
	t.Cleanup(func() {
		rt.mu.Lock()
		defer rt.mu.Unlock()
		for _, p := range rt.byPath {
			p.q.Close()
		}
	})
	return rt
}

// fakeProc is a fake QEMU process.
type fakeProc struct {
	q       *qmptest.FakeQEMU
	pid     int
	started time.Time
}

func (p *fakeProc) PID() int                { return p.pid }
func (p *fakeProc) Alive() bool             { return p.q.Alive() }
func (p *fakeProc) Exited() <-chan struct{} { return p.q.Exited() }
func (p *fakeProc) Kill() error             { p.q.Crash(); return nil }
func (p *fakeProc) StartedAt() time.Time    { return p.started }
func (p *fakeProc) RSSBytes() int64         { return 0 }

func (rt *fakeRuntime) Start(_ context.Context, _ string, cfg qemu.Config) (QEMUProcess, error) {
	rt.mu.Lock()
	defer rt.mu.Unlock()
	path := cfg.Paths.QMPSocket
	if old := rt.byPath[path]; old != nil && old.Alive() {
		return nil, fmt.Errorf("fake qemu: already running as pid %d", old.pid)
	}
	var opts []qmptest.FakeOption
	if cfg.Incoming != "" {
		opts = append(opts, qmptest.Incoming())
	}
	q, err := qmptest.StartFakeQEMU(path, opts...)
	if err != nil {
		return nil, err
	}
	rt.nextPID++
	rt.starts++
	p := &fakeProc{q: q, pid: rt.nextPID, started: time.Now()}
	rt.byPath[path] = p
	return p, nil
}

func (rt *fakeRuntime) Attach(paths qemu.Paths) (QEMUProcess, error) {
	rt.mu.Lock()
	defer rt.mu.Unlock()
	p := rt.byPath[paths.QMPSocket]
	if p == nil || !p.Alive() {
		return nil, fmt.Errorf("fake qemu: attach %s: %w", paths.Dir, qemu.ErrNotRunning)
	}
	return p, nil
}

// qemuOf returns the fake QEMU of VM name under data dir dir.
func (rt *fakeRuntime) qemuOf(dir, name string) *qmptest.FakeQEMU {
	rt.t.Helper()
	rt.mu.Lock()
	defer rt.mu.Unlock()
	p := rt.byPath[qemu.PathsFor(filepath.Join(dir, "vms", name)).QMPSocket]
	if p == nil {
		rt.t.Fatalf("no fake QEMU for VM %s", name)
	}
	return p.q
}

func (rt *fakeRuntime) startCount() int {
	rt.mu.Lock()
	defer rt.mu.Unlock()
	return rt.starts
}

// testAgent is a real Agent over fake QEMUs, with its RPC handlers.
type testAgent struct {
	t   *testing.T
	a   *Agent
	rt  *fakeRuntime
	dir string
	svc *service
	mig *migrationService
}

// newTestAgent starts an Agent over a fresh data dir.
func newTestAgent(t *testing.T) *testAgent {
	t.Helper()
	dir, err := os.MkdirTemp("", "fagent") // short: unix socket paths are limited
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return startTestAgent(t, newFakeRuntime(t), dir)
}

func startTestAgent(t *testing.T, rt *fakeRuntime, dir string) *testAgent {
	t.Helper()
	a, err := New(Config{Name: "h1", Listen: "127.0.0.1:0", Server: "unix:///nonexistent", DataDir: dir, Accel: "tcg",
		MigrationIP: "127.0.0.1", AllowPaths: []string{os.TempDir()}, QEMU: rt, OrphanGrace: time.Minute, Log: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(a.vmsDir(), 0o755); err != nil {
		t.Fatal(err)
	}
	giveTestIdentity(t, a)
	if err := a.reattachAll(testCtx(t)); err != nil {
		t.Fatal(err)
	}
	ta := &testAgent{t: t, a: a, rt: rt, dir: dir, svc: &service{a}, mig: &migrationService{a}}
	t.Cleanup(ta.die)
	return ta
}

// testCA is the fake cluster CA of the agent tests (made once: a key
// pair takes a while).
var testCA = sync.OnceValues(func() (*pki.CA, error) { return pki.NewCA("test") })

// giveTestIdentity saves an agent and a stream certificate for a's host
// from testCA, as a join would, so migrations can have encrypted streams.
func giveTestIdentity(t *testing.T, a *Agent) {
	t.Helper()
	ca, err := testCA()
	if err != nil {
		t.Fatal(err)
	}
	cert, key, err := ca.IssueKeyPair(pki.KindAgent, a.cfg.Name, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if err := a.saveIdentity(ca.CertPEM, cert, key); err != nil {
		t.Fatal(err)
	}
	scert, skey, err := ca.IssueKeyPair(pki.KindQEMU, a.cfg.Name, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if err := a.takeStream(ca.CertPEM, scert, skey); err != nil {
		t.Fatal(err)
	}
	id, err := a.savedIdentity()
	if err != nil {
		t.Fatal(err)
	}
	a.ident.Store(id)
}

// restart plays the agent process dying (its QEMUs keep running) and a
// new agent starting over the same data dir.
func (ta *testAgent) restart() *testAgent {
	ta.t.Helper()
	ta.die()
	return startTestAgent(ta.t, ta.rt, ta.dir)
}

// die lets go of every QEMU without touching it, as the death of the
// agent process would.
func (ta *testAgent) die() {
	ta.a.mu.Lock()
	vms := ta.a.vms
	ta.a.vms = map[string]*vm{}
	ta.a.mu.Unlock()
	for _, v := range vms {
		v.mu.Lock()
		if v.mon != nil {
			_ = v.mon.Close()
		}
		v.proc, v.mon = nil, nil // its watcher ignores the QEMU's end now
		v.mu.Unlock()
	}
}

func (ta *testAgent) qemu(name string) *qmptest.FakeQEMU { return ta.rt.qemuOf(ta.dir, name) }

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// testSpec is a valid spec with no NICs or disks (nothing needs root).
func testSpec(t *testing.T, name string) *ferryv1.VMSpec {
	kernel := filepath.Join(t.TempDir(), "vmlinuz")
	if err := os.WriteFile(kernel, []byte("fake kernel"), 0o644); err != nil {
		t.Fatal(err)
	}
	return &ferryv1.VMSpec{Name: name, Vcpus: 1, MemoryMib: 128, Boot: &ferryv1.BootSpec{Kernel: kernel}}
}

// eventually waits (bounded) for cond.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func wantCode(t *testing.T, err error, code connect.Code) {
	t.Helper()
	if connect.CodeOf(err) != code {
		t.Fatalf("got %v (code %v), want code %v", err, connect.CodeOf(err), code)
	}
}

func must[T any](t *testing.T) func(*connect.Response[T], error) *T {
	return func(r *connect.Response[T], err error) *T {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		return r.Msg
	}
}

func step(name, id string) *connect.Request[agentv1.MigrationStepRequest] {
	return connect.NewRequest(&agentv1.MigrationStepRequest{Name: name, MigrationId: id})
}

func contextWithTimeout(ctx context.Context, d time.Duration) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, d)
}
