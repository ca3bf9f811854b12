// Package qmptest provides fakes of QEMU's QMP monitor for unit tests: Server
// is a scripted QMP server on a unix socket (greeting, capabilities
// negotiation, one reply per command, events pushed on demand, a log of
// every command received, replies that can be dropped or connections
// closed), and FakeQEMU is a small model of a QEMU process on top of it
// (run state and migration status acted on by the commands the agent
// sends). Neither runs QEMU; both are for tests only.
//
// The package does not import internal/qmp, so internal/qmp's own tests can
// use it.
package qmptest

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

// Greeting is the QMP greeting a QEMU 7.2.22 on Debian 12 sends; servers
// send it unless WithGreeting says otherwise.
const Greeting = `{"QMP": {"version": {"qemu": {"micro": 22, "minor": 2, "major": 7}, "package": "Debian 1:7.2+dfsg-7+deb12u18+b3"}, "capabilities": ["oob"]}}`

// Error is a QMP error reply ({"class": ..., "desc": ...}).
type Error struct {
	Class string `json:"class"`
	Desc  string `json:"desc"`
}

// GenericError returns an Error of class GenericError.
func GenericError(format string, args ...any) *Error {
	return &Error{Class: "GenericError", Desc: fmt.Sprintf(format, args...)}
}

// Reply tells the fake server how to answer one command.
type Reply struct {
	Return any             // marshalled as "return"; nil means {}
	Raw    json.RawMessage // verbatim "return" value, wins over Return
	Err    *Error          // answer with an error instead
	Delay  time.Duration   // answer after Delay, from another goroutine
	Events []string        // raw event objects (see Event) written before the answer
	After  func()          // runs once the answer was written (e.g. exit after quit)
	Close  bool            // close the connection instead of answering
	Never  bool            // never answer
}

// Handler computes the reply to one command from its arguments.
type Handler func(args json.RawMessage) Reply

// Command is one command the fake server received. A command sent out of
// band ("exec-oob") has its name in Execute too, and OOB set.
type Command struct {
	Execute   string          `json:"execute"`
	ExecOOB   string          `json:"exec-oob,omitempty"`
	Arguments json.RawMessage `json:"arguments"`
	ID        json.RawMessage `json:"id"`
	OOB       bool            `json:"-"`
}

// Option configures a Server before it accepts connections.
type Option func(*Server)

// WithGreeting replaces the greeting line.
func WithGreeting(g string) Option { return func(s *Server) { s.greeting = g } }

// WithCapabilitiesError answers qmp_capabilities with e.
func WithCapabilitiesError(e *Error) Option { return func(s *Server) { s.capsErr = e } }

// Server is a scripted fake QMP server on a unix socket. Like QEMU it
// serves one client at a time. Commands without a handler get a
// CommandNotFound error.
type Server struct {
	path string
	ln   net.Listener

	greeting string
	capsErr  *Error

	mu       sync.Mutex
	handlers map[string]Handler
	faults   map[string][]fault
	conn     net.Conn
	received []Command
	replied  []string // ids in the order replies were written
	closed   bool

	wmu sync.Mutex // serialises writes to conn
	wg  sync.WaitGroup
}

type fault int

const (
	faultDrop fault = iota + 1
	faultClose
)

// NewServer starts a fake server on a socket in t.TempDir and stops it when
// the test ends.
func NewServer(t testing.TB, opts ...Option) *Server {
	t.Helper()
	s, err := Listen(filepath.Join(t.TempDir(), "qmp.sock"), opts...)
	if err != nil {
		t.Fatalf("fake QMP server: %v", err)
	}
	t.Cleanup(s.Close)
	return s
}

// Listen starts a fake server on the unix socket path (removing a stale
// socket file first). Close stops it.
func Listen(path string, opts ...Option) (*Server, error) {
	_ = os.Remove(path)
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("qmptest: listen %s: %w", path, err)
	}
	s := &Server{path: path, ln: ln, greeting: Greeting, handlers: map[string]Handler{}, faults: map[string][]fault{}}
	for _, o := range opts {
		o(s)
	}
	s.wg.Add(1)
	go s.acceptLoop()
	return s, nil
}

// Path returns the server's socket path.
func (s *Server) Path() string { return s.path }

// Close stops accepting, closes the current connection, waits for the
// server's goroutines and removes the socket file. It is idempotent.
func (s *Server) Close() {
	s.mu.Lock()
	already := s.closed
	s.closed = true
	s.mu.Unlock()
	if already {
		return
	}
	_ = s.ln.Close()
	s.CloseConn()
	s.wg.Wait()
	_ = os.Remove(s.path)
}

// Handle registers a handler for command.
func (s *Server) Handle(command string, h Handler) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.handlers[command] = h
}

// HandleStatic registers a constant reply for command.
func (s *Server) HandleStatic(command string, r Reply) {
	s.Handle(command, func(json.RawMessage) Reply { return r })
}

// DropNextReply makes the next command called command run its handler
// (the command takes effect) but never answer: a lost reply.
func (s *Server) DropNextReply(command string) { s.addFault(command, faultDrop) }

// CloseOnNext makes the server close the connection when it next receives
// command, without running its handler (the command is lost).
func (s *Server) CloseOnNext(command string) { s.addFault(command, faultClose) }

func (s *Server) addFault(command string, f fault) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.faults[command] = append(s.faults[command], f)
}

func (s *Server) takeFault(command string) fault {
	fs := s.faults[command]
	if len(fs) == 0 {
		return 0
	}
	s.faults[command] = fs[1:]
	return fs[0]
}

// Received returns the commands received so far (qmp_capabilities included).
func (s *Server) Received() []Command {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Command(nil), s.received...)
}

// Count returns how many times command was received.
func (s *Server) Count(command string) int {
	n := 0
	for _, c := range s.Received() {
		if c.Execute == command {
			n++
		}
	}
	return n
}

// Replied returns the ids in the order their replies were written.
func (s *Server) Replied() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.replied...)
}

// Connected reports whether a client is connected.
func (s *Server) Connected() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.conn != nil
}

// Emit writes an event on the current connection; it fails when no client
// is connected.
func (s *Server) Emit(name string, data any) error {
	return s.write([]byte(Event(name, data)))
}

// CloseConn closes the current client connection.
func (s *Server) CloseConn() {
	s.mu.Lock()
	c := s.conn
	s.mu.Unlock()
	if c != nil {
		_ = c.Close()
	}
}

// Event returns the wire form of a QMP event with the current time.
func Event(name string, data any) string {
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

var errNoConn = errors.New("qmptest: no client connected")

func (s *Server) write(b []byte) error {
	s.mu.Lock()
	c := s.conn
	s.mu.Unlock()
	if c == nil {
		return errNoConn
	}
	s.wmu.Lock()
	defer s.wmu.Unlock()
	_, err := c.Write(append(b, '\r', '\n'))
	return err
}

func (s *Server) acceptLoop() {
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
		s.mu.Lock()
		if s.conn == c {
			s.conn = nil
		}
		s.mu.Unlock()
	}
}

func (s *Server) serve(c net.Conn) {
	defer c.Close()
	if err := s.write([]byte(s.greeting)); err != nil {
		return
	}
	dec := json.NewDecoder(c)
	for {
		var cmd Command
		if err := dec.Decode(&cmd); err != nil {
			return
		}
		if cmd.Execute == "" && cmd.ExecOOB != "" {
			cmd.Execute, cmd.OOB = cmd.ExecOOB, true
		}
		s.mu.Lock()
		s.received = append(s.received, cmd)
		h := s.handlers[cmd.Execute]
		f := s.takeFault(cmd.Execute)
		s.mu.Unlock()
		if f == faultClose {
			return
		}

		var r Reply
		switch {
		case cmd.Execute == "qmp_capabilities":
			r = Reply{Err: s.capsErr}
		case h != nil:
			r = h(cmd.Arguments)
		default:
			r = Reply{Err: &Error{Class: "CommandNotFound", Desc: "The command " + cmd.Execute + " has not been found"}}
		}
		if r.Close {
			return
		}
		if r.Never || f == faultDrop {
			if r.After != nil {
				r.After()
			}
			continue
		}
		if r.Delay > 0 {
			s.wg.Add(1)
			go func() {
				defer s.wg.Done()
				time.Sleep(r.Delay)
				s.answer(c, cmd, r)
			}()
			continue
		}
		s.answer(c, cmd, r)
	}
}

func (s *Server) answer(c net.Conn, cmd Command, r Reply) {
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
		b, _ = json.Marshal(map[string]any{"id": cmd.ID, "error": GenericError("qmptest: marshal reply: %v", err)})
	}
	s.wmu.Lock() // keep "replied" order identical to the wire order
	s.mu.Lock()
	var id string
	_ = json.Unmarshal(cmd.ID, &id)
	s.replied = append(s.replied, id)
	s.mu.Unlock()
	_, _ = c.Write(append(b, '\n'))
	s.wmu.Unlock()
	if r.After != nil {
		r.After()
	}
}
