package agent

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	ferryv1 "github.com/ferryvm/ferry/gen/ferry/v1"
	"github.com/ferryvm/ferry/internal/migration"
	"github.com/ferryvm/ferry/internal/qmp"
)

// teleFakeQMP is a fake QEMU monitor for the telemetry tests: it answers
// the QMP handshake, calc-dirty-rate and query-dirty-rate (with rate MB/s)
// and counts the calc-dirty-rate commands.
type teleFakeQMP struct {
	rate  int64
	calcs atomic.Int32
}

func (f *teleFakeQMP) serve(t *testing.T) *qmp.Monitor {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "qmp.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		c, err := l.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		enc := json.NewEncoder(c)
		_ = enc.Encode(map[string]any{"QMP": map[string]any{"version": map[string]any{"qemu": map[string]int{"major": 10, "minor": 0, "micro": 2}}, "capabilities": []string{}}})
		sc := bufio.NewScanner(c)
		for sc.Scan() {
			var cmd struct {
				Execute string          `json:"execute"`
				ID      json.RawMessage `json:"id"`
			}
			if json.Unmarshal(sc.Bytes(), &cmd) != nil {
				return
			}
			var ret any = map[string]any{}
			switch cmd.Execute {
			case "calc-dirty-rate":
				f.calcs.Add(1)
			case "query-dirty-rate":
				ret = map[string]any{"status": "measured", "dirty-rate": f.rate, "start-time": 1, "calc-time": 1, "sample-pages": 512, "mode": "page-sampling"}
			}
			reply := map[string]any{"return": ret}
			if len(cmd.ID) > 0 {
				reply["id"] = cmd.ID
			}
			_ = enc.Encode(reply)
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	mon, err := qmp.Connect(ctx, sock)
	if err != nil {
		t.Fatalf("connect fake QMP: %v", err)
	}
	t.Cleanup(func() { mon.Close() })
	return mon
}

// teleFakeProc stands for a QEMU process: this test process itself, so
// the RAM count scans a mapping the test made.
type teleFakeProc struct{}

func (teleFakeProc) PID() int        { return os.Getpid() }
func (teleFakeProc) Alive() bool     { return true }
func (teleFakeProc) RSSBytes() int64 { return 1 << 20 }

func newTelemetryTestAgent(t *testing.T) (*Agent, *vm) {
	t.Helper()
	a, err := New(Config{Name: "h1", Listen: "127.0.0.1:0", Server: "unix:///nonexistent", DataDir: t.TempDir(),
		Log: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	v := a.getOrCreate("web")
	v.spec = &ferryv1.VMSpec{Name: "web", MemoryMib: 512}
	v.state = "running"
	return a, v
}

func TestMeasureDirtyFromTelemetryWhenFresh(t *testing.T) {
	a, v := newTelemetryTestAgent(t)
	f := &teleFakeQMP{rate: 10}
	sv := vmSampleView{proc: teleFakeProc{}, mon: f.serve(t), memBytes: 512 << 20, running: true}
	h := a.telemetry()
	rec := h.record("web", sv.proc)
	ctx := context.Background()

	measured, err := h.measureDirty(ctx, v, rec, sv, 1, time.Minute)
	if err != nil || !measured || f.calcs.Load() != 1 {
		t.Fatalf("first sample: measured %v, err %v, calc-dirty-rate %d times", measured, err, f.calcs.Load())
	}
	// Fresh: a plan's request is answered from the series, QEMU untouched.
	measured, err = h.measureDirty(ctx, v, rec, sv, 1, time.Minute)
	if err != nil || measured || f.calcs.Load() != 1 {
		t.Errorf("fresh series: measured %v, err %v, calc-dirty-rate %d times", measured, err, f.calcs.Load())
	}
	e, ok := rec.dirty.Estimate(time.Now())
	if !ok || e.Samples != 1 || e.Value < 9.5 || e.Value > 9.6 { // 10 MB/s = 9.54 MiB/s
		t.Errorf("series after one sample: %+v", e)
	}
	// max age 0 (the background sampler) always measures.
	if measured, err := h.measureDirty(ctx, v, rec, sv, 1, 0); err != nil || !measured || f.calcs.Load() != 2 {
		t.Errorf("max age 0: measured %v, err %v, calls %d", measured, err, f.calcs.Load())
	}
}

func TestDirtySampleOverlappingAMigrationIsDiscarded(t *testing.T) {
	a, v := newTelemetryTestAgent(t)
	f := &teleFakeQMP{rate: 50}
	sv := vmSampleView{proc: teleFakeProc{}, mon: f.serve(t), memBytes: 512 << 20, running: true}
	h := a.telemetry()
	rec := h.record("web", sv.proc)
	v.out = &outgoing{id: "m1", state: migration.SrcMigrating}
	if got := v.sampleView(); !got.migrating {
		t.Fatalf("a VM with an outgoing migration is not seen migrating: %+v", got)
	}
	if _, err := h.measureDirty(context.Background(), v, rec, sv, 1, 0); err != errMigrating {
		t.Errorf("sample during a migration: err %v, want errMigrating", err)
	}
	if rec.dirty.Len() != 0 {
		t.Errorf("a sample that overlapped a migration was kept")
	}
	v.out.state = migration.SrcCancelled // rolled back: the VM runs on here
	if got := v.sampleView(); got.migrating {
		t.Errorf("a cancelled migration still counts as migrating")
	}
}

func TestRecordIsPerQEMUAndForgetStopsTheSampler(t *testing.T) {
	a, _ := newTelemetryTestAgent(t)
	h := a.telemetry()
	p1, p2 := &teleFakeProcPtr{pid: 1}, &teleFakeProcPtr{pid: 2}
	r1 := h.record("web", p1)
	r1.dirty.Add(time.Now(), 5)
	if h.record("web", p1) != r1 {
		t.Error("the same QEMU got a new record")
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	r1.cancel, r1.done = cancel, make(chan struct{})
	go func() { <-ctx.Done(); close(r1.done) }()
	r2 := h.record("web", p2) // a new QEMU (restart, arrival): fresh record
	if r2 == r1 || r2.dirty.Len() != 0 {
		t.Error("a new QEMU kept the old one's samples")
	}
	select {
	case <-r1.done:
	default:
		t.Error("the old QEMU's sampler was not stopped")
	}
	h.forget("web")
	if _, ok := h.vms["web"]; ok {
		t.Error("forget kept the record")
	}
}

type teleFakeProcPtr struct{ pid int }

func (p *teleFakeProcPtr) PID() int        { return p.pid }
func (p *teleFakeProcPtr) Alive() bool     { return true }
func (p *teleFakeProcPtr) RSSBytes() int64 { return 0 }

func TestSamplePagesPerGiB(t *testing.T) {
	for _, tc := range []struct {
		memBytes int64
		want     int64
	}{
		{0, 0},
		{512 << 20, 16384},
		{1 << 30, 16384},
		{4 << 30, 4096},
		{64 << 30, 256},
		{1 << 40, 128},
	} {
		if got := samplePagesPerGiB(tc.memBytes); got != tc.want {
			t.Errorf("samplePagesPerGiB(%d MiB) = %d, want %d", tc.memBytes>>20, got, tc.want)
		}
	}
}
