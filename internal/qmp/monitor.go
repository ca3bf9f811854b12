package qmp

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"sync"
	"time"
)

// DefaultHandshakeTimeout bounds the greeting and capabilities negotiation
// when Connect's context has no earlier deadline. QEMU serves one QMP
// client per socket, so a second client would otherwise wait forever.
const DefaultHandshakeTimeout = 10 * time.Second

// Option configures Connect.
type Option func(*options)

type options struct {
	logWriter        io.Writer
	logFile          string
	name             string
	eventBuffer      int
	handshakeTimeout time.Duration
	noOOB            bool
}

// WithLog writes every QMP exchange to w, one line per message (see the
// package documentation for the format). Writes are serialised; w should
// not block for long because it is also called from the reader goroutine.
func WithLog(w io.Writer) Option { return func(o *options) { o.logWriter = w } }

// WithLogFile appends every QMP exchange to the file at path (created with
// mode 0640 if missing). The file is closed by Monitor.Close. It may be
// combined with WithLog; both then receive every line.
func WithLogFile(path string) Option { return func(o *options) { o.logFile = path } }

// WithName tags every log line with name, typically the VM name.
func WithName(name string) Option { return func(o *options) { o.name = name } }

// WithEventBuffer sets the buffer size of Events() and of every
// Subscription (default DefaultEventBuffer). When a buffer is full the
// oldest event is dropped.
func WithEventBuffer(n int) Option { return func(o *options) { o.eventBuffer = n } }

// WithHandshakeTimeout overrides DefaultHandshakeTimeout; d <= 0 means the
// handshake is bounded by the context only.
func WithHandshakeTimeout(d time.Duration) Option {
	return func(o *options) { o.handshakeTimeout = d }
}

// WithoutOOB keeps the session in band only: out-of-band execution is
// not negotiated even when QEMU offers it (RunOOB then runs in band).
func WithoutOOB() Option { return func(o *options) { o.noOOB = true } }

// Monitor is a QMP connection to one QEMU process. All methods are safe
// for concurrent use; commands may be issued from many goroutines at once.
type Monitor struct {
	w        *wire
	greeting greeting
	events   *Subscription
	path     string
	name     string
	logFile  *os.File

	closeOnce sync.Once
	closeErr  error
}

// Connect dials the QMP unix socket at socketPath, reads the greeting and
// negotiates capabilities. ctx bounds the dial and the handshake only; it
// does not limit the life of the Monitor.
func Connect(ctx context.Context, socketPath string, opts ...Option) (*Monitor, error) {
	o := options{handshakeTimeout: DefaultHandshakeTimeout}
	for _, opt := range opts {
		opt(&o)
	}

	var logFile *os.File
	var sinks []io.Writer
	if o.logWriter != nil {
		sinks = append(sinks, o.logWriter)
	}
	if o.logFile != "" {
		f, err := os.OpenFile(o.logFile, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o640)
		if err != nil {
			return nil, &OpError{Op: "connect", Err: fmt.Errorf("opening QMP log: %w", err)}
		}
		logFile = f
		sinks = append(sinks, f)
	}
	var log *wireLog
	switch len(sinks) {
	case 1:
		log = newWireLog(sinks[0], o.name)
	case 2:
		log = newWireLog(io.MultiWriter(sinks...), o.name)
	}

	hub := newEventHub(o.eventBuffer)
	events := hub.subscribe() // subscribe before any event can arrive
	w, g, err := dialWire(ctx, socketPath, o.handshakeTimeout, !o.noOOB, log, hub)
	if err != nil {
		if logFile != nil {
			_ = logFile.Close()
		}
		return nil, &OpError{Op: "connect", Err: err}
	}
	return &Monitor{
		w:        w,
		greeting: g,
		events:   events,
		path:     socketPath,
		name:     o.name,
		logFile:  logFile,
	}, nil
}

// SocketPath returns the path passed to Connect.
func (m *Monitor) SocketPath() string { return m.path }

// Name returns the name given with WithName, if any.
func (m *Monitor) Name() string { return m.name }

// Version returns the QEMU version announced in the greeting.
func (m *Monitor) Version() VersionInfo { return m.greeting.QMP.Version }

// Capabilities returns the QMP capabilities announced in the greeting
// (e.g. "oob"). Connect enables "oob" when it is there (see WithoutOOB).
func (m *Monitor) Capabilities() []string {
	return append([]string(nil), m.greeting.QMP.Capabilities...)
}

// OOB reports whether the session negotiated out-of-band execution.
func (m *Monitor) OOB() bool { return m != nil && m.w != nil && m.w.oob }

// Run executes command with args (marshalled as the "arguments" object;
// nil for none) and, if result is non-nil, unmarshals the "return" value
// into it.
//
// If ctx ends first, Run returns an error wrapping ctx.Err(); QEMU still
// executes the command and its late reply is discarded. QEMU errors are
// returned as *CommandError; transport failures match ErrClosed.
func (m *Monitor) Run(ctx context.Context, command string, args any, result any) error {
	return m.run(ctx, command, args, result, false)
}

// RunOOB is Run out of band ("exec-oob") when the session negotiated it,
// else in band: QEMU runs the command in the monitor's own thread, even
// while its main loop is blocked. Only commands QEMU's schema marks
// allow-oob are accepted that way (migrate-recover, migrate-pause).
func (m *Monitor) RunOOB(ctx context.Context, command string, args any, result any) error {
	return m.run(ctx, command, args, result, true)
}

func (m *Monitor) run(ctx context.Context, command string, args any, result any, oob bool) error {
	if m == nil || m.w == nil {
		return &OpError{Op: command, Err: ErrNotConnected}
	}
	ret, err := m.w.call(ctx, command, args, oob)
	if err != nil {
		return opErr(command, err)
	}
	if result == nil {
		return nil
	}
	if err := json.Unmarshal(ret, result); err != nil {
		return &OpError{Op: command, Err: withCause(ErrProtocol, fmt.Errorf("decoding reply: %w", err))}
	}
	return nil
}

// Events returns the monitor's main event channel. It receives every event
// from the moment of Connect, is shared by all callers, drops the oldest
// event when full and is closed when the connection ends. Use Subscribe
// for an independent stream.
func (m *Monitor) Events() <-chan Event { return m.events.C() }

// DroppedEvents returns how many events the Events channel dropped
// because nobody drained it fast enough.
func (m *Monitor) DroppedEvents() uint64 { return m.events.Dropped() }

// Subscribe returns an independent event stream restricted to the given
// event names (all events if none). Subscribe before issuing the command
// whose events you want, then Close the subscription when done.
func (m *Monitor) Subscribe(names ...string) *Subscription {
	return m.w.hub.subscribe(names...)
}

// WaitEvent waits for the next event called name that arrives after the
// call. Events emitted before WaitEvent was called are not seen; use
// Subscribe first when the triggering command is issued beforehand.
func (m *Monitor) WaitEvent(ctx context.Context, name string) (Event, error) {
	s := m.Subscribe(name)
	defer s.Close()
	return s.Wait(ctx, name, nil)
}

// Done returns a channel closed when the connection ends, either by Close
// or because QEMU went away.
func (m *Monitor) Done() <-chan struct{} { return m.w.done }

// Err returns nil while connected, then the reason the connection ended
// (matching ErrClosed, and ErrDisconnected if it was not Close).
func (m *Monitor) Err() error {
	if err := m.w.err(); err != nil {
		return &OpError{Op: "monitor", Err: err}
	}
	return nil
}

// Close ends the session, fails pending commands with ErrClosed, closes
// the event channels and the log file. It returns nil when called again.
func (m *Monitor) Close() error {
	if m == nil || m.w == nil {
		return nil
	}
	m.closeOnce.Do(func() {
		m.w.close()
		if m.logFile != nil {
			if err := m.logFile.Close(); err != nil {
				m.closeErr = &OpError{Op: "close", Err: err}
			}
		}
	})
	return m.closeErr
}
