package qmp

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// idPrefix starts every command id we send; ids are "ferry-<n>".
const idPrefix = "ferry-"

// longAgo is a deadline in the past, used to interrupt blocked I/O.
var longAgo = time.Unix(1, 0)

// greeting is the first message QEMU sends on a QMP socket.
type greeting struct {
	QMP struct {
		Version      VersionInfo `json:"version"`
		Capabilities []string    `json:"capabilities"`
	} `json:"QMP"`
}

// request is a command on the wire: Execute for the in-band queue,
// ExecOOB for one QEMU runs out of band (in the monitor's own thread).
type request struct {
	Execute   string          `json:"execute,omitempty"`
	ExecOOB   string          `json:"exec-oob,omitempty"`
	Arguments json.RawMessage `json:"arguments,omitempty"`
	ID        string          `json:"id"`
}

// capsArgs are qmp_capabilities' arguments.
type capsArgs struct {
	Enable []string `json:"enable"`
}

// MaxInBand is how many in-band commands a session with out-of-band
// execution keeps unanswered in QEMU at once. QEMU queues in-band
// commands for its main thread and stops reading the socket when that
// queue is nearly full (8), and then an out-of-band command is not read
// either: with a main thread blocked (a post-copy destination touching a
// page the broken link does not bring) the out-of-band migrate-recover
// that would unblock it must still get through. A slot is freed by the
// reply, not by the caller giving up: QEMU still holds a command whose
// caller went away.
const MaxInBand = 4

// wireError is the "error" member of a failed reply.
type wireError struct {
	Class string `json:"class"`
	Desc  string `json:"desc"`
}

// message is any server-to-client message other than the greeting.
type message struct {
	Event     string          `json:"event"`
	Data      json.RawMessage `json:"data"`
	Timestamp *struct {
		Seconds      int64 `json:"seconds"`
		Microseconds int64 `json:"microseconds"`
	} `json:"timestamp"`
	ID     json.RawMessage `json:"id"`
	Return json.RawMessage `json:"return"`
	Error  *wireError      `json:"error"`
}

// reply is what the reader hands to the goroutine waiting for an id.
type reply struct {
	ret  json.RawMessage
	qerr *wireError
	fail error // transport failure; set instead of ret/qerr
}

// wire is one QMP session over a stream socket.
type wire struct {
	conn net.Conn
	dec  *json.Decoder
	log  *wireLog
	hub  *eventHub

	sendLock chan struct{} // one-slot semaphore serialising writes
	nextID   atomic.Uint64

	// oob says out-of-band execution was negotiated; inBand then holds a
	// slot per in-band command QEMU has not answered (MaxInBand).
	oob    bool
	inBand chan struct{}

	mu       sync.Mutex
	pending  map[string]chan reply
	held     map[string]bool // in-band ids holding an inBand slot
	closeErr error           // set once, when the session ends
	done     chan struct{}   // closed when the session ends

	readerDone chan struct{}
}

// dialWire connects to socketPath and performs the QMP handshake. The
// handshake is bounded by ctx and by timeout (if > 0).
func dialWire(ctx context.Context, socketPath string, timeout time.Duration, oob bool, log *wireLog, hub *eventHub) (*wire, greeting, error) {
	var g greeting
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", socketPath)
	if err != nil {
		if ctx.Err() != nil {
			return nil, g, ctx.Err()
		}
		return nil, g, withCause(ErrNotConnected, err)
	}
	log.note(map[string]string{"connect": socketPath})

	w := newWire(conn, log, hub)

	early, err := w.handshake(ctx, timeout, oob, &g)
	if err != nil {
		_ = conn.Close()
		log.note(map[string]string{"handshake-failed": err.Error()})
		if ctx.Err() != nil {
			return nil, g, ctx.Err()
		}
		return nil, g, err
	}
	go w.readLoop(early)
	return w, g, nil
}

// handshake reads the greeting and negotiates capabilities: out-of-band
// execution when oob is asked and the greeting offers it. Messages that
// are neither (events sent before our reply) are returned for later
// dispatch.
func (w *wire) handshake(ctx context.Context, timeout time.Duration, oob bool, g *greeting) ([]json.RawMessage, error) {
	if timeout > 0 {
		_ = w.conn.SetDeadline(time.Now().Add(timeout))
	}
	fired := make(chan struct{})
	stop := context.AfterFunc(ctx, func() {
		_ = w.conn.SetDeadline(longAgo)
		close(fired)
	})
	defer func() {
		if !stop() {
			<-fired
		}
		_ = w.conn.SetDeadline(time.Time{})
	}()

	var raw json.RawMessage
	if err := w.dec.Decode(&raw); err != nil {
		return nil, withCause(ErrHandshake, fmt.Errorf("reading greeting: %w", err))
	}
	w.log.message(dirRecv, raw)
	if err := json.Unmarshal(raw, g); err != nil || g.QMP.Capabilities == nil {
		return nil, withCause(ErrHandshake, fmt.Errorf("not a QMP greeting: %.200s", raw))
	}

	id := w.newID()
	req := request{Execute: "qmp_capabilities", ID: id}
	if oob && slices.Contains(g.QMP.Capabilities, "oob") {
		req.Arguments, _ = json.Marshal(capsArgs{Enable: []string{"oob"}}) // a fixed struct: cannot fail
	}
	b, err := json.Marshal(req)
	if err != nil {
		return nil, err
	}
	w.log.message(dirSend, b)
	if _, err := w.conn.Write(append(b, '\n')); err != nil {
		return nil, withCause(ErrHandshake, err)
	}

	var early []json.RawMessage
	for {
		var raw json.RawMessage
		if err := w.dec.Decode(&raw); err != nil {
			return nil, withCause(ErrHandshake, fmt.Errorf("reading qmp_capabilities reply: %w", err))
		}
		var m message
		if err := json.Unmarshal(raw, &m); err != nil || m.Event != "" || idString(m.ID) != id {
			early = append(early, raw)
			continue
		}
		w.log.message(dirRecv, raw)
		if m.Error != nil {
			return nil, withCause(ErrHandshake, &CommandError{Command: "qmp_capabilities", Class: m.Error.Class, Desc: m.Error.Desc})
		}
		w.oob = req.Arguments != nil
		return early, nil
	}
}

// newWire wraps an open connection. Every message QEMU sends is one line
// of at most MaxLineBytes: a longer one ends the session (ErrProtocol)
// instead of growing the decoder's buffer without bound.
func newWire(conn net.Conn, log *wireLog, hub *eventHub) *wire {
	return &wire{
		conn:       conn,
		dec:        json.NewDecoder(&lineLimiter{r: conn, max: MaxLineBytes}),
		log:        log,
		hub:        hub,
		sendLock:   make(chan struct{}, 1),
		inBand:     make(chan struct{}, MaxInBand),
		pending:    make(map[string]chan reply),
		held:       make(map[string]bool),
		done:       make(chan struct{}),
		readerDone: make(chan struct{}),
	}
}

func (w *wire) newID() string {
	return idPrefix + strconv.FormatUint(w.nextID.Add(1), 10)
}

// idString returns the id as a string, or "" if absent or not a string.
func idString(raw json.RawMessage) string {
	if len(raw) == 0 {
		return ""
	}
	var s string
	if json.Unmarshal(raw, &s) != nil {
		return ""
	}
	return s
}

// readLoop is the single reader: it routes replies and events until the
// connection fails, then shuts the session down.
func (w *wire) readLoop(early []json.RawMessage) {
	defer close(w.readerDone)
	for _, raw := range early {
		w.dispatch(raw)
	}
	for {
		var raw json.RawMessage
		if err := w.dec.Decode(&raw); err != nil {
			if errors.Is(err, ErrProtocol) { // an overlong line (lineLimiter)
				w.shutdown(err)
				return
			}
			w.shutdown(withCause(ErrDisconnected, err))
			return
		}
		w.dispatch(raw)
	}
}

func (w *wire) dispatch(raw json.RawMessage) {
	var m message
	if err := json.Unmarshal(raw, &m); err != nil {
		w.log.message(dirRecv, raw)
		return
	}
	if m.Event != "" {
		w.log.message(dirEvent, raw)
		ev := Event{Name: m.Event}
		if len(m.Data) > 0 && string(m.Data) != "null" {
			ev.Data = append(json.RawMessage(nil), m.Data...)
		}
		if ts := m.Timestamp; ts != nil && ts.Seconds >= 0 && ts.Microseconds >= 0 {
			ev.Timestamp = time.Unix(ts.Seconds, ts.Microseconds*int64(time.Microsecond))
		}
		w.hub.publish(ev)
		return
	}
	w.log.message(dirRecv, raw)
	id := idString(m.ID)
	if id == "" {
		// Replies without our id (e.g. a parse error report) have no
		// waiter; they are only logged.
		return
	}
	w.mu.Lock()
	ch, ok := w.pending[id]
	delete(w.pending, id)
	if w.held[id] {
		delete(w.held, id)
		<-w.inBand // QEMU answered: its queue has room again
	}
	w.mu.Unlock()
	if !ok {
		return // the caller gave up (context cancelled): discard
	}
	if m.Error != nil {
		ch <- reply{qerr: m.Error}
		return
	}
	if m.Return == nil {
		ch <- reply{fail: withCause(ErrProtocol, fmt.Errorf("reply has neither return nor error: %.200s", raw))}
		return
	}
	ch <- reply{ret: append(json.RawMessage(nil), m.Return...)}
}

// shutdown ends the session once: it records err, fails every waiter,
// closes the socket and the event channels.
func (w *wire) shutdown(err error) {
	w.mu.Lock()
	if w.closeErr != nil {
		w.mu.Unlock()
		return
	}
	w.closeErr = err
	pending := w.pending
	w.pending = nil
	close(w.done)
	w.mu.Unlock()

	_ = w.conn.Close()
	for _, ch := range pending {
		ch <- reply{fail: err}
	}
	w.hub.close(err)
	w.log.note(map[string]string{"closed": err.Error()})
}

// err returns why the session ended, or nil while it is alive.
func (w *wire) err() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.closeErr
}

// close ends the session on our side and waits for the reader to exit.
func (w *wire) close() {
	w.shutdown(ErrClosed)
	<-w.readerDone
}

// call sends one command and waits for its reply: out of band when oob
// is asked and the session negotiated it, else in band.
func (w *wire) call(ctx context.Context, command string, args any, oob bool) (json.RawMessage, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	req := request{Execute: command, ID: w.newID()}
	if oob && w.oob {
		req.Execute, req.ExecOOB = "", command
	}
	if args != nil {
		b, err := json.Marshal(args)
		if err != nil {
			return nil, fmt.Errorf("encoding arguments: %w", err)
		}
		if string(b) != "null" {
			req.Arguments = b
		}
	}
	b, err := json.Marshal(req)
	if err != nil {
		return nil, err
	}

	hold := w.oob && req.Execute != ""
	if hold {
		select {
		case w.inBand <- struct{}{}:
		case <-ctx.Done():
			return nil, fmt.Errorf("%w (QEMU has not answered %d earlier in-band commands: its main loop is busy or blocked)", ctx.Err(), MaxInBand)
		case <-w.done:
			return nil, w.err()
		}
	}
	ch := make(chan reply, 1)
	w.mu.Lock()
	if w.closeErr != nil {
		err := w.closeErr
		w.mu.Unlock()
		if hold {
			<-w.inBand
		}
		return nil, err
	}
	w.pending[req.ID] = ch
	if hold {
		w.held[req.ID] = true
	}
	w.mu.Unlock()

	if err := w.send(ctx, b); err != nil {
		w.forget(req.ID, hold)
		return nil, err
	}

	select {
	case r := <-ch:
		switch {
		case r.fail != nil:
			return nil, r.fail
		case r.qerr != nil:
			return nil, &CommandError{Command: command, Class: r.qerr.Class, Desc: r.qerr.Desc}
		}
		return r.ret, nil
	case <-ctx.Done():
		// QEMU will still execute the command; its reply is dropped by
		// dispatch because the id is no longer pending, and frees the
		// in-band slot then.
		w.mu.Lock()
		delete(w.pending, req.ID)
		w.mu.Unlock()
		return nil, ctx.Err()
	}
}

// forget drops a command that never reached QEMU, and its in-band slot
// (held) with it.
func (w *wire) forget(id string, held bool) {
	w.mu.Lock()
	delete(w.pending, id)
	if held && w.held[id] {
		delete(w.held, id)
		<-w.inBand
	}
	w.mu.Unlock()
}

// send writes one message. Writes are serialised; a context cancelled
// while waiting or writing interrupts the write. A partially written
// message would corrupt the stream, so it ends the session.
func (w *wire) send(ctx context.Context, b []byte) error {
	select {
	case w.sendLock <- struct{}{}:
	case <-ctx.Done():
		return ctx.Err()
	case <-w.done:
		return w.err()
	}
	defer func() { <-w.sendLock }()
	if err := w.err(); err != nil {
		return err
	}

	fired := make(chan struct{})
	stop := context.AfterFunc(ctx, func() {
		_ = w.conn.SetWriteDeadline(longAgo)
		close(fired)
	})
	w.log.message(dirSend, b)
	n, err := w.conn.Write(append(b, '\n'))
	if !stop() {
		<-fired
		_ = w.conn.SetWriteDeadline(time.Time{})
	}
	if err == nil {
		return nil
	}
	if n == 0 && ctx.Err() != nil && isTimeout(err) {
		return ctx.Err() // nothing reached the socket: the stream is intact
	}
	failure := withCause(ErrDisconnected, err)
	w.shutdown(failure)
	if ctx.Err() != nil {
		return ctx.Err()
	}
	return w.err()
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}
