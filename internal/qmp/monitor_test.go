package qmp

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"github.com/ferryvm/ferry/internal/qmp/qmptest"
	"net"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

func connectFake(t *testing.T, s *qmptest.Server, opts ...Option) *Monitor {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	m, err := Connect(ctx, s.Path(), opts...)
	if err != nil {
		t.Fatalf("Connect: %v", err)
	}
	t.Cleanup(func() { _ = m.Close() })
	return m
}

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func TestHandshake(t *testing.T) {
	s := qmptest.NewServer(t)
	m := connectFake(t, s)

	v := m.Version()
	if v.String() != "7.2.22" || v.Package != "Debian 1:7.2+dfsg-7+deb12u18+b3" {
		t.Fatalf("Version() = %q %q", v.String(), v.Package)
	}
	if !v.AtLeast(7, 2) || v.AtLeast(7, 3) || !v.AtLeast(6, 9) {
		t.Fatalf("AtLeast is wrong for %s", v)
	}
	if got := m.Capabilities(); !reflect.DeepEqual(got, []string{"oob"}) {
		t.Fatalf("Capabilities() = %v", got)
	}
	// The first (and only) command must be the capabilities negotiation.
	if err := m.Run(testCtx(t), "query-status", nil, nil); !errors.Is(err, ErrCommandNotFound) {
		t.Fatalf("unhandled command: got %v, want ErrCommandNotFound", err)
	}
	rcv := s.Received()
	if len(rcv) != 2 || rcv[0].Execute != "qmp_capabilities" || rcv[1].Execute != "query-status" {
		t.Fatalf("received %+v", rcv)
	}
	if string(rcv[0].Arguments) != `{"enable":["oob"]}` || !m.OOB() {
		t.Fatalf("the greeting offers oob: qmp_capabilities must enable it, got arguments %s (OOB %v)", rcv[0].Arguments, m.OOB())
	}
	if rcv[1].Arguments != nil {
		t.Fatalf("commands without arguments must omit the member: %+v", rcv)
	}
	ids := map[string]bool{}
	for _, c := range rcv {
		var id string
		if err := json.Unmarshal(c.ID, &id); err != nil || !strings.HasPrefix(id, idPrefix) || ids[id] {
			t.Fatalf("bad or duplicate id %s", c.ID)
		}
		ids[id] = true
	}
}

func TestConnectFailures(t *testing.T) {
	t.Run("no socket", func(t *testing.T) {
		_, err := Connect(testCtx(t), filepath.Join(t.TempDir(), "missing.sock"))
		if !errors.Is(err, ErrNotConnected) || errors.Is(err, ErrHandshake) {
			t.Fatalf("got %v, want ErrNotConnected", err)
		}
		if !strings.HasPrefix(err.Error(), "qmp: connect: ") {
			t.Fatalf("message style: %q", err)
		}
	})
	t.Run("bad greeting", func(t *testing.T) {
		s := qmptest.NewServer(t, qmptest.WithGreeting(`{"hello": "world"}`))
		_, err := Connect(testCtx(t), s.Path())
		if !errors.Is(err, ErrHandshake) {
			t.Fatalf("got %v, want ErrHandshake", err)
		}
	})
	t.Run("capabilities refused", func(t *testing.T) {
		s := qmptest.NewServer(t, qmptest.WithCapabilitiesError(&qmptest.Error{Class: ClassCommandNotFound, Desc: "Capabilities negotiation is already complete"}))
		_, err := Connect(testCtx(t), s.Path())
		var ce *CommandError
		if !errors.Is(err, ErrHandshake) || !errors.As(err, &ce) || ce.Command != "qmp_capabilities" {
			t.Fatalf("got %v, want ErrHandshake wrapping a qmp_capabilities CommandError", err)
		}
	})
	t.Run("silent server times out", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "silent.sock")
		ln, err := net.Listen("unix", path)
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		start := time.Now()
		_, err = Connect(testCtx(t), path, WithHandshakeTimeout(100*time.Millisecond))
		if !errors.Is(err, ErrHandshake) || time.Since(start) > 3*time.Second {
			t.Fatalf("got %v after %v", err, time.Since(start))
		}
		ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
		defer cancel()
		_, err = Connect(ctx, path, WithHandshakeTimeout(0))
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("got %v, want context.DeadlineExceeded", err)
		}
	})
}

func TestConcurrentRunsOutOfOrder(t *testing.T) {
	s := qmptest.NewServer(t)
	// "echo" answers with its arguments after the requested delay, so
	// replies come back in a different order than the commands were sent.
	s.Handle("echo", func(args json.RawMessage) qmptest.Reply {
		var a struct {
			N     int `json:"n"`
			Delay int `json:"delay"`
		}
		_ = json.Unmarshal(args, &a)
		return qmptest.Reply{Raw: args, Delay: time.Duration(a.Delay) * time.Millisecond}
	})
	m := connectFake(t, s)
	ctx := testCtx(t)

	const n = 30
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var out struct {
				N int `json:"n"`
			}
			args := map[string]int{"n": i, "delay": (n - i) * 3}
			if err := m.Run(ctx, "echo", args, &out); err != nil {
				errs <- err
				return
			}
			if out.N != i {
				errs <- errors.New("reply routed to the wrong caller")
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}

	// Prove the replies really were out of order on the wire.
	var sent []string
	for _, c := range s.Received() {
		var id string
		_ = json.Unmarshal(c.ID, &id)
		if c.Execute == "echo" {
			sent = append(sent, id)
		}
	}
	var replied []string
	for _, id := range s.Replied() {
		if slices.Contains(sent, id) {
			replied = append(replied, id)
		}
	}
	if len(replied) != n || slices.Equal(sent, replied) {
		t.Fatalf("replies were not reordered: sent %v replied %v", sent, replied)
	}
}

func TestCommandErrorsMapToSentinels(t *testing.T) {
	s := qmptest.NewServer(t)
	m := connectFake(t, s)
	all := []error{ErrGenericError, ErrCommandNotFound, ErrDeviceNotActive, ErrDeviceNotFound, ErrKVMMissingCap}
	cases := []struct {
		class string
		want  error
	}{
		{ClassGenericError, ErrGenericError},
		{ClassCommandNotFound, ErrCommandNotFound},
		{ClassDeviceNotActive, ErrDeviceNotActive},
		{ClassDeviceNotFound, ErrDeviceNotFound},
		{ClassKVMMissingCap, ErrKVMMissingCap},
	}
	for _, c := range cases {
		s.HandleStatic("fail-"+c.class, qmptest.Reply{Err: &qmptest.Error{Class: c.class, Desc: "it broke: " + c.class}})
		err := m.Run(testCtx(t), "fail-"+c.class, map[string]any{"x": 1}, nil)
		for _, sentinel := range all {
			if got := errors.Is(err, sentinel); got != (sentinel == c.want) {
				t.Errorf("%s: errors.Is(%v, %v) = %v", c.class, err, sentinel, got)
			}
		}
		if errors.Is(err, ErrClosed) {
			t.Errorf("%s: a QEMU error must not match ErrClosed", c.class)
		}
		var ce *CommandError
		if !errors.As(err, &ce) || ce.Class != c.class || ce.Command != "fail-"+c.class || ce.Desc != "it broke: "+c.class {
			t.Errorf("%s: errors.As gave %+v", c.class, ce)
		}
		if want := "qmp: fail-" + c.class + ": it broke: " + c.class; err.Error() != want {
			t.Errorf("message %q, want %q", err, want)
		}
	}
	// Unknown classes still produce a CommandError.
	s.HandleStatic("odd", qmptest.Reply{Err: &qmptest.Error{Class: "SomethingNew", Desc: "new"}})
	var ce *CommandError
	if err := m.Run(testCtx(t), "odd", nil, nil); !errors.As(err, &ce) || errors.Is(err, ErrGenericError) {
		t.Fatalf("got %v", err)
	}
	// The monitor keeps working after errors.
	if _, err := m.QueryStatus(testCtx(t)); !errors.Is(err, ErrCommandNotFound) {
		t.Fatalf("got %v", err)
	}
}

func TestContextCancellation(t *testing.T) {
	s := qmptest.NewServer(t)
	s.HandleStatic("slow", qmptest.Reply{Return: map[string]string{"who": "slow"}, Delay: 300 * time.Millisecond})
	s.HandleStatic("fast", qmptest.Reply{Return: map[string]string{"who": "fast"}})
	m := connectFake(t, s)

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Millisecond)
	defer cancel()
	start := time.Now()
	var out struct{ Who string }
	err := m.Run(ctx, "slow", nil, &out)
	if !errors.Is(err, context.DeadlineExceeded) || time.Since(start) > 250*time.Millisecond {
		t.Fatalf("got %v after %v", err, time.Since(start))
	}
	if err.Error() != "qmp: slow: context deadline exceeded" {
		t.Fatalf("message %q", err)
	}
	if out.Who != "" {
		t.Fatalf("result written despite cancellation")
	}

	// Wait until the late reply was sent and must have been discarded,
	// then check the next command gets its own reply.
	deadline := time.Now().Add(3 * time.Second)
	for len(s.Replied()) == 0 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	if err := m.Run(testCtx(t), "fast", nil, &out); err != nil || out.Who != "fast" {
		t.Fatalf("after late reply: %v %+v", err, out)
	}

	// An already-cancelled context sends nothing.
	before := len(s.Received())
	cctx, ccancel := context.WithCancel(context.Background())
	ccancel()
	if err := m.Run(cctx, "fast", nil, nil); !errors.Is(err, context.Canceled) {
		t.Fatalf("got %v", err)
	}
	if len(s.Received()) != before {
		t.Fatalf("a command was sent with a cancelled context")
	}
	if m.Err() != nil {
		t.Fatalf("cancellation must not end the session: %v", m.Err())
	}
}

func TestEvents(t *testing.T) {
	s := qmptest.NewServer(t)
	s.HandleStatic("migrate", qmptest.Reply{Events: []string{qmptest.Event(EventMigration, map[string]string{"status": "setup"})}})
	s.HandleStatic("sync", qmptest.Reply{})
	m := connectFake(t, s)
	ctx := testCtx(t)

	s.Emit(EventMigration, map[string]string{"status": "pre-switchover"})
	s.Emit(EventMigrationPass, map[string]int{"pass": 3})
	s.Emit(EventStop, nil)
	s.Emit(EventResume, nil)
	s.Emit(EventShutdown, map[string]any{"guest": false, "reason": "host-qmp-quit"})

	next := func() Event {
		t.Helper()
		select {
		case ev, ok := <-m.Events():
			if !ok {
				t.Fatal("events channel closed")
			}
			return ev
		case <-ctx.Done():
			t.Fatal("timed out waiting for an event")
		}
		return Event{}
	}
	ev := next()
	mig, err := ev.AsMigration()
	if err != nil || mig.Status != MigrationStatusPreSwitchover {
		t.Fatalf("MIGRATION: %+v %v", mig, err)
	}
	if time.Since(ev.Timestamp) > time.Minute || ev.Timestamp.IsZero() {
		t.Fatalf("timestamp %v", ev.Timestamp)
	}
	if _, err := ev.AsShutdown(); !errors.Is(err, ErrEventMismatch) {
		t.Fatalf("decoding MIGRATION as SHUTDOWN: %v", err)
	}
	if p, err := next().AsMigrationPass(); err != nil || p.Pass != 3 {
		t.Fatalf("MIGRATION_PASS: %+v %v", p, err)
	}
	stop := next()
	if _, err := stop.AsStop(); err != nil || stop.Data != nil {
		t.Fatalf("STOP: %+v %v", stop, err)
	}
	if _, err := next().AsResume(); err != nil {
		t.Fatalf("RESUME: %v", err)
	}
	if sd, err := next().AsShutdown(); err != nil || sd.Guest || sd.Reason != "host-qmp-quit" {
		t.Fatalf("SHUTDOWN: %+v %v", sd, err)
	}

	// A subscription taken before the command sees the event the command
	// triggers, even though it precedes the reply.
	sub := m.Subscribe(EventMigration)
	if err := m.Run(ctx, "migrate", map[string]string{"uri": "tcp:x:1"}, nil); err != nil {
		t.Fatal(err)
	}
	ev, err = sub.Wait(ctx, EventMigration, func(e Event) bool {
		me, _ := e.AsMigration()
		return me.Status == MigrationStatusSetup
	})
	if err != nil {
		t.Fatalf("subscription: %v", err)
	}
	sub.Close()
	sub.Close() // idempotent
	if _, ok := <-sub.C(); ok {
		t.Fatal("closed subscription still delivers")
	}
	if ev := next(); ev.Name != EventMigration {
		t.Fatalf("main channel also got %q", ev.Name)
	}

	// WaitEvent sees an event emitted after it was called.
	done := make(chan struct{})
	go func() {
		for {
			select {
			case <-done:
				return
			case <-time.After(10 * time.Millisecond):
				s.Emit("POWERDOWN", nil)
			}
		}
	}()
	got, err := m.WaitEvent(ctx, "POWERDOWN")
	close(done)
	if err != nil || got.Name != "POWERDOWN" {
		t.Fatalf("WaitEvent: %+v %v", got, err)
	}
	wctx, wcancel := context.WithTimeout(ctx, 20*time.Millisecond)
	defer wcancel()
	if _, err := m.WaitEvent(wctx, "NEVER"); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("WaitEvent timeout: %v", err)
	}
}

func TestEventBufferDropsOldest(t *testing.T) {
	s := qmptest.NewServer(t)
	s.HandleStatic("sync", qmptest.Reply{})
	m := connectFake(t, s, WithEventBuffer(4))
	for i := 1; i <= 10; i++ {
		s.Emit(EventMigrationPass, map[string]int{"pass": i})
	}
	// The reader handles messages in order: once this reply is in, all
	// ten events have been dispatched.
	if err := m.Run(testCtx(t), "sync", nil, nil); err != nil {
		t.Fatal(err)
	}
	var passes []int64
	for len(passes) < 4 {
		p, err := (<-m.Events()).AsMigrationPass()
		if err != nil {
			t.Fatal(err)
		}
		passes = append(passes, p.Pass)
	}
	if !slices.Equal(passes, []int64{7, 8, 9, 10}) || m.DroppedEvents() != 6 {
		t.Fatalf("kept %v, dropped %d; want [7 8 9 10] and 6", passes, m.DroppedEvents())
	}
}

func TestServerDisconnect(t *testing.T) {
	s := qmptest.NewServer(t)
	s.HandleStatic("hang", qmptest.Reply{Never: true})
	m := connectFake(t, s)
	sub := m.Subscribe()

	errc := make(chan error, 2)
	for range 2 {
		go func() { errc <- m.Run(context.Background(), "hang", nil, nil) }()
	}
	waitFor(t, func() bool { return len(s.Received()) == 3 })
	s.CloseConn()

	for range 2 {
		select {
		case err := <-errc:
			if !errors.Is(err, ErrClosed) || !errors.Is(err, ErrDisconnected) {
				t.Fatalf("pending call: %v", err)
			}
			if !strings.HasPrefix(err.Error(), "qmp: hang: disconnected from QEMU") {
				t.Fatalf("message %q", err)
			}
		case <-time.After(3 * time.Second):
			t.Fatal("pending call not released")
		}
	}
	select {
	case <-m.Done():
	case <-time.After(3 * time.Second):
		t.Fatal("Done not closed")
	}
	if err := m.Run(testCtx(t), "query-status", nil, nil); !errors.Is(err, ErrClosed) || !errors.Is(err, ErrDisconnected) {
		t.Fatalf("later call: %v", err)
	}
	if _, ok := <-m.Events(); ok {
		t.Fatal("events channel still open")
	}
	if _, ok := <-sub.C(); ok {
		t.Fatal("subscription still open")
	}
	if _, err := sub.Next(testCtx(t)); !errors.Is(err, ErrDisconnected) {
		t.Fatalf("Next after disconnect: %v", err)
	}
	if !errors.Is(m.Err(), ErrDisconnected) {
		t.Fatalf("Err() = %v", m.Err())
	}
	if _, err := m.WaitEvent(testCtx(t), "STOP"); !errors.Is(err, ErrClosed) {
		t.Fatalf("WaitEvent after disconnect: %v", err)
	}
	if err := m.Close(); err != nil {
		t.Fatalf("Close after disconnect: %v", err)
	}
}

func TestClose(t *testing.T) {
	s := qmptest.NewServer(t)
	s.HandleStatic("hang", qmptest.Reply{Never: true})
	m := connectFake(t, s)
	errc := make(chan error, 1)
	go func() { errc <- m.Run(context.Background(), "hang", nil, nil) }()
	waitFor(t, func() bool { return len(s.Received()) == 2 })
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	if err := <-errc; !errors.Is(err, ErrClosed) || errors.Is(err, ErrDisconnected) {
		t.Fatalf("pending call after Close: %v", err)
	}
	if err := m.Stop(testCtx(t)); !errors.Is(err, ErrClosed) || err.Error() != "qmp: stop: monitor closed" {
		t.Fatalf("call after Close: %v", err)
	}
	if err := m.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	var nilMon *Monitor
	if err := nilMon.Run(testCtx(t), "x", nil, nil); !errors.Is(err, ErrNotConnected) {
		t.Fatalf("nil monitor: %v", err)
	}
}

// logLine is one parsed line of the QMP log.
type logLine struct {
	time time.Time
	name string
	dir  string
	msg  map[string]any
}

func parseLog(t *testing.T, data []byte) []logLine {
	t.Helper()
	var out []logLine
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		line := sc.Text()
		f := strings.SplitN(line, " ", 4)
		if len(f) != 4 {
			t.Fatalf("malformed log line %q", line)
		}
		ts, err := time.Parse(time.RFC3339Nano, f[0])
		if err != nil {
			t.Fatalf("bad timestamp in %q: %v", line, err)
		}
		l := logLine{time: ts, name: strings.Trim(f[1], "[]"), dir: f[2]}
		if err := json.Unmarshal([]byte(f[3]), &l.msg); err != nil {
			t.Fatalf("payload of %q is not a JSON object: %v", line, err)
		}
		out = append(out, l)
	}
	return out
}

func TestLogEveryExchange(t *testing.T) {
	s := qmptest.NewServer(t)
	s.HandleStatic("query-status", qmptest.Reply{Return: StatusInfo{Status: RunStateRunning, Running: true}})
	s.HandleStatic("stop", qmptest.Reply{Err: &qmptest.Error{Class: ClassGenericError, Desc: "nope"}, Events: []string{qmptest.Event(EventStop, nil)}})
	var buf syncBuffer
	logPath := filepath.Join(t.TempDir(), "vm1-qmp.log")
	m := connectFake(t, s, WithLog(&buf), WithLogFile(logPath), WithName("vm1"))
	ctx := testCtx(t)
	if _, err := m.QueryStatus(ctx); err != nil {
		t.Fatal(err)
	}
	if err := m.Stop(ctx); !errors.Is(err, ErrGenericError) {
		t.Fatal(err)
	}
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}

	lines := parseLog(t, buf.Bytes())
	fileData, err := os.ReadFile(logPath)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(fileData, buf.Bytes()) {
		t.Fatalf("log file and writer differ:\n%s\n---\n%s", fileData, buf.Bytes())
	}
	var summary []string
	for _, l := range lines {
		if l.name != "vm1" {
			t.Fatalf("line without VM name: %+v", l)
		}
		if time.Since(l.time) > time.Minute {
			t.Fatalf("implausible timestamp %v", l.time)
		}
		what := ""
		switch {
		case l.msg["QMP"] != nil:
			what = "greeting"
		case l.msg["execute"] != nil:
			what = l.msg["execute"].(string)
		case l.msg["event"] != nil:
			what = l.msg["event"].(string)
		case l.msg["return"] != nil:
			what = "return"
		case l.msg["error"] != nil:
			what = "error"
		case l.msg["connect"] != nil:
			what = "connect"
		case l.msg["closed"] != nil:
			what = "closed"
		}
		summary = append(summary, l.dir+" "+what)
	}
	want := []string{
		"-- connect",
		"<- greeting",
		"-> qmp_capabilities",
		"<- return",
		"-> query-status",
		"<- return",
		"-> stop",
		"event STOP",
		"<- error",
		"-- closed",
	}
	if !slices.Equal(summary, want) {
		t.Fatalf("log summary\n got %q\nwant %q\nlog:\n%s", summary, want, buf.Bytes())
	}
	// Replies carry the id of the command they answer.
	for i := 2; i+1 < len(lines) && i < 6; i += 2 {
		if lines[i].msg["id"] != lines[i+1].msg["id"] || lines[i].msg["id"] == nil {
			t.Fatalf("line %d/%d ids differ: %v %v", i, i+1, lines[i].msg["id"], lines[i+1].msg["id"])
		}
	}
}

// syncBuffer is a bytes.Buffer safe for concurrent writes.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) Bytes() []byte {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]byte(nil), b.buf.Bytes()...)
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(3 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met in time")
		}
		time.Sleep(2 * time.Millisecond)
	}
}
