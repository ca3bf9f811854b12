package qmp

import (
	"encoding/json"
	"fmt"
	"net"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

// fakeGreeting is what QEMU 7.2.22 on Debian 12 sends.
const fakeGreeting = `{"QMP": {"version": {"qemu": {"micro": 22, "minor": 2, "major": 7}, "package": "Debian 1:7.2+dfsg-7+deb12u18+b3"}, "capabilities": ["oob"]}}`

// fakeReply tells the fake server how to answer one command.
type fakeReply struct {
	Return any             // marshalled as "return"; nil means {}
	Raw    json.RawMessage // verbatim "return" value, wins over Return
	Err    *wireError      // answer with an error instead
	Delay  time.Duration   // answer after Delay, from another goroutine
	Events []string        // raw event objects written before the answer
	Close  bool            // close the connection instead of answering
	Never  bool            // never answer
}

// fakeHandler computes the reply to one command from its arguments.
type fakeHandler func(args json.RawMessage) fakeReply

// fakeCommand is one command the fake server received.
type fakeCommand struct {
	Execute   string          `json:"execute"`
	Arguments json.RawMessage `json:"arguments"`
	ID        json.RawMessage `json:"id"`
}

// fakeServer is a scripted QMP server on a unix socket.
type fakeServer struct {
	t    *testing.T
	path string
	ln   net.Listener

	greeting string
	capsErr  *wireError // reply to qmp_capabilities with this error

	mu       sync.Mutex
	handlers map[string]fakeHandler
	conn     net.Conn
	wmu      sync.Mutex // serialises writes to conn
	received []fakeCommand
	replied  []string // ids in the order replies were written
	wg       sync.WaitGroup
}

// newFakeServer starts a fake server; configure runs before it accepts.
func newFakeServer(t *testing.T, configure ...func(*fakeServer)) *fakeServer {
	t.Helper()
	path := filepath.Join(t.TempDir(), "qmp.sock")
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	s := &fakeServer{t: t, path: path, ln: ln, greeting: fakeGreeting, handlers: map[string]fakeHandler{}}
	for _, c := range configure {
		c(s)
	}
	s.wg.Add(1)
	go s.acceptLoop()
	t.Cleanup(func() {
		_ = ln.Close()
		s.CloseConn()
		s.wg.Wait()
	})
	return s
}

// Handle registers a handler for command.
func (s *fakeServer) Handle(command string, h fakeHandler) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.handlers[command] = h
}

// HandleStatic registers a constant reply for command.
func (s *fakeServer) HandleStatic(command string, r fakeReply) {
	s.Handle(command, func(json.RawMessage) fakeReply { return r })
}

// Received returns the commands received so far (qmp_capabilities included).
func (s *fakeServer) Received() []fakeCommand {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]fakeCommand(nil), s.received...)
}

// Replied returns the ids in the order their replies were written.
func (s *fakeServer) Replied() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.replied...)
}

// Emit writes an event on the current connection.
func (s *fakeServer) Emit(name string, data any) {
	s.t.Helper()
	if err := s.write([]byte(fakeEvent(name, data))); err != nil {
		s.t.Errorf("emit %s: %v", name, err)
	}
}

// CloseConn closes the current client connection.
func (s *fakeServer) CloseConn() {
	s.mu.Lock()
	c := s.conn
	s.mu.Unlock()
	if c != nil {
		_ = c.Close()
	}
}

func fakeEvent(name string, data any) string {
	now := time.Now()
	ev := map[string]any{
		"event":     name,
		"timestamp": map[string]int64{"seconds": now.Unix(), "microseconds": int64(now.Nanosecond() / 1000)},
	}
	if data != nil {
		ev["data"] = data
	}
	b, _ := json.Marshal(ev)
	return string(b)
}

func (s *fakeServer) write(b []byte) error {
	s.mu.Lock()
	c := s.conn
	s.mu.Unlock()
	if c == nil {
		return fmt.Errorf("no connection")
	}
	s.wmu.Lock()
	defer s.wmu.Unlock()
	_, err := c.Write(append(b, '\r', '\n'))
	return err
}

func (s *fakeServer) acceptLoop() {
	defer s.wg.Done()
	for {
		c, err := s.ln.Accept()
		if err != nil {
			return
		}
		s.mu.Lock()
		s.conn = c
		s.mu.Unlock()
		s.serve(c) // one client at a time, like QEMU
	}
}

func (s *fakeServer) serve(c net.Conn) {
	defer c.Close()
	if err := s.write([]byte(s.greeting)); err != nil {
		return
	}
	dec := json.NewDecoder(c)
	for {
		var cmd fakeCommand
		if err := dec.Decode(&cmd); err != nil {
			return
		}
		s.mu.Lock()
		s.received = append(s.received, cmd)
		h := s.handlers[cmd.Execute]
		s.mu.Unlock()

		var r fakeReply
		switch {
		case cmd.Execute == "qmp_capabilities":
			r = fakeReply{Err: s.capsErr}
		case h != nil:
			r = h(cmd.Arguments)
		default:
			r = fakeReply{Err: &wireError{Class: ClassCommandNotFound, Desc: "The command " + cmd.Execute + " has not been found"}}
		}
		if r.Close {
			return
		}
		if r.Never {
			continue
		}
		if r.Delay > 0 {
			s.wg.Add(1)
			go func() {
				defer s.wg.Done()
				time.Sleep(r.Delay)
				s.answer(cmd, r)
			}()
			continue
		}
		s.answer(cmd, r)
	}
}

func (s *fakeServer) answer(cmd fakeCommand, r fakeReply) {
	for _, ev := range r.Events {
		_ = s.write([]byte(ev))
	}
	msg := map[string]any{"id": cmd.ID}
	switch {
	case r.Err != nil:
		msg["error"] = r.Err
	case r.Raw != nil:
		msg["return"] = r.Raw
	case r.Return != nil:
		msg["return"] = r.Return
	default:
		msg["return"] = struct{}{}
	}
	b, err := json.Marshal(msg)
	if err != nil {
		s.t.Errorf("fake server marshal: %v", err)
		return
	}
	s.wmu.Lock() // keep "replied" order identical to the wire order
	s.mu.Lock()
	c := s.conn
	var id string
	_ = json.Unmarshal(cmd.ID, &id)
	s.replied = append(s.replied, id)
	s.mu.Unlock()
	if c != nil {
		_, _ = c.Write(append(b, '\n'))
	}
	s.wmu.Unlock()
}
