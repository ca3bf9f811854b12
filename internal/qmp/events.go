package qmp

import (
	"context"
	"encoding/json"
	"fmt"
	"sync"
	"sync/atomic"
	"time"
)

// Names of the events this package has typed decoders for.
const (
	EventMigration     = "MIGRATION"
	EventMigrationPass = "MIGRATION_PASS"
	EventStop          = "STOP"
	EventResume        = "RESUME"
	EventShutdown      = "SHUTDOWN"
)

// DefaultEventBuffer is the per-subscriber event buffer size used unless
// WithEventBuffer says otherwise.
const DefaultEventBuffer = 256

// Event is an asynchronous QMP event.
type Event struct {
	// Name is the event name, e.g. "MIGRATION".
	Name string
	// Data is the raw "data" member; nil when QEMU sent none (STOP, RESUME).
	Data json.RawMessage
	// Timestamp is QEMU's host wall-clock time of the event; zero if QEMU
	// could not read the clock.
	Timestamp time.Time
}

// Decode unmarshals e.Data into v.
func (e Event) Decode(v any) error {
	if len(e.Data) == 0 {
		return fmt.Errorf("qmp: %s: event has no data", e.Name)
	}
	if err := json.Unmarshal(e.Data, v); err != nil {
		return &OpError{Op: e.Name, Err: withCause(ErrProtocol, err)}
	}
	return nil
}

func (e Event) decodeAs(name string, v any) error {
	if e.Name != name {
		return &OpError{Op: name, Err: fmt.Errorf("%w: got %q", ErrEventMismatch, e.Name)}
	}
	if v == nil {
		return nil
	}
	return e.Decode(v)
}

// MigrationEvent is the data of a MIGRATION event, emitted on every
// migration state change when the "events" capability is on.
type MigrationEvent struct {
	// Status is the new migration state.
	Status MigrationStatus `json:"status"`
}

// MigrationPassEvent is the data of a MIGRATION_PASS event, emitted at the
// start of every RAM pass when the "events" capability is on.
type MigrationPassEvent struct {
	// Pass is the dirty-sync iteration number, starting at 1.
	Pass int64 `json:"pass"`
}

// ShutdownEvent is the data of a SHUTDOWN event.
type ShutdownEvent struct {
	// Guest is true when the shutdown was requested by the guest.
	Guest bool `json:"guest"`
	// Reason is QEMU's ShutdownCause, e.g. "host-qmp-quit",
	// "guest-shutdown", "host-signal".
	Reason string `json:"reason"`
}

// StopEvent is a STOP event (the VM stopped executing); it has no data.
type StopEvent struct {
	// Timestamp is when QEMU emitted the event.
	Timestamp time.Time
}

// ResumeEvent is a RESUME event (the VM resumed executing); it has no data.
type ResumeEvent struct {
	// Timestamp is when QEMU emitted the event.
	Timestamp time.Time
}

// AsMigration decodes a MIGRATION event.
func (e Event) AsMigration() (MigrationEvent, error) {
	var v MigrationEvent
	err := e.decodeAs(EventMigration, &v)
	return v, err
}

// AsMigrationPass decodes a MIGRATION_PASS event.
func (e Event) AsMigrationPass() (MigrationPassEvent, error) {
	var v MigrationPassEvent
	err := e.decodeAs(EventMigrationPass, &v)
	return v, err
}

// AsShutdown decodes a SHUTDOWN event.
func (e Event) AsShutdown() (ShutdownEvent, error) {
	var v ShutdownEvent
	err := e.decodeAs(EventShutdown, &v)
	return v, err
}

// AsStop checks that e is a STOP event.
func (e Event) AsStop() (StopEvent, error) {
	return StopEvent{Timestamp: e.Timestamp}, e.decodeAs(EventStop, nil)
}

// AsResume checks that e is a RESUME event.
func (e Event) AsResume() (ResumeEvent, error) {
	return ResumeEvent{Timestamp: e.Timestamp}, e.decodeAs(EventResume, nil)
}

// Subscription is an independent stream of events. Its buffer never blocks
// the monitor: when it is full the oldest queued event is dropped.
type Subscription struct {
	hub     *eventHub
	ch      chan Event
	names   map[string]struct{} // nil = all events
	dropped atomic.Uint64
}

// C returns the event channel. It is closed by Close or when the monitor's
// connection ends.
func (s *Subscription) C() <-chan Event { return s.ch }

// Dropped returns how many events were discarded because the buffer was
// full.
func (s *Subscription) Dropped() uint64 { return s.dropped.Load() }

// Close unsubscribes and closes the channel. It is safe to call more than
// once.
func (s *Subscription) Close() { s.hub.unsubscribe(s) }

// Next returns the next event, or an error matching ErrClosed once the
// subscription is closed, or the context's error.
func (s *Subscription) Next(ctx context.Context) (Event, error) {
	select {
	case ev, ok := <-s.ch:
		if !ok {
			return Event{}, &OpError{Op: "event", Err: s.hub.err()}
		}
		return ev, nil
	case <-ctx.Done():
		return Event{}, &OpError{Op: "event", Err: ctx.Err()}
	}
}

// Wait returns the next event called name (any event if name is "") for
// which match returns true (match may be nil).
func (s *Subscription) Wait(ctx context.Context, name string, match func(Event) bool) (Event, error) {
	for {
		ev, err := s.Next(ctx)
		if err != nil {
			if name != "" {
				err.(*OpError).Op = name
			}
			return Event{}, err
		}
		if (name == "" || ev.Name == name) && (match == nil || match(ev)) {
			return ev, nil
		}
	}
}

// eventHub fans events out to subscriptions.
type eventHub struct {
	mu       sync.Mutex
	subs     map[*Subscription]struct{}
	closed   bool
	closeErr error
	size     int
}

func newEventHub(size int) *eventHub {
	if size <= 0 {
		size = DefaultEventBuffer
	}
	return &eventHub{subs: make(map[*Subscription]struct{}), size: size}
}

func (h *eventHub) subscribe(names ...string) *Subscription {
	s := &Subscription{hub: h, ch: make(chan Event, h.size)}
	if len(names) > 0 {
		s.names = make(map[string]struct{}, len(names))
		for _, n := range names {
			s.names[n] = struct{}{}
		}
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closed {
		close(s.ch)
		return s
	}
	h.subs[s] = struct{}{}
	return s
}

func (h *eventHub) unsubscribe(s *Subscription) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if _, ok := h.subs[s]; ok {
		delete(h.subs, s)
		close(s.ch)
	}
}

// publish delivers ev to every interested subscriber without blocking.
// Only the wire reader publishes, so after evicting one element the next
// send is guaranteed to find room.
func (h *eventHub) publish(ev Event) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for s := range h.subs {
		if s.names != nil {
			if _, ok := s.names[ev.Name]; !ok {
				continue
			}
		}
		for {
			select {
			case s.ch <- ev:
			default:
				select {
				case <-s.ch:
					s.dropped.Add(1)
				default:
				}
				continue
			}
			break
		}
	}
}

// close closes every subscription; later subscriptions start closed.
func (h *eventHub) close(err error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closed {
		return
	}
	h.closed = true
	h.closeErr = err
	for s := range h.subs {
		close(s.ch)
	}
	clear(h.subs)
}

func (h *eventHub) err() error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closeErr != nil {
		return h.closeErr
	}
	return ErrClosed // closed by Subscription.Close
}
