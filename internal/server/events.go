package server

import (
	"context"
	"errors"
	"fmt"
	"time"

	statev1 "github.com/ferryvm/ferry/gen/ferry/state/v1"
	ferryv1 "github.com/ferryvm/ferry/gen/ferry/v1"
	"github.com/ferryvm/ferry/internal/dashboard"
	"github.com/ferryvm/ferry/internal/drain"
	"github.com/ferryvm/ferry/internal/retention"
	"github.com/ferryvm/ferry/internal/store"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// Default retention of the event history.
const (
	DefaultKeepEvents    = 10000
	DefaultKeepEventsFor = 7 * 24 * time.Hour
	eventSweepInterval   = time.Minute
)

// eventOf turns a change of a watched key into the event it means, or ok
// false when the state did not change (a heartbeat, a progress update). A
// pure function of the change and the clock.
func eventOf(c store.StateChange, now time.Time) (e *ferryv1.Event, ok bool, err error) {
	e = &ferryv1.Event{Id: eventID(c), Time: timestamppb.New(now), Kind: c.Kind, Name: c.Name, Revision: c.Rev}
	switch c.Kind {
	case store.KindPolicy:
		return transportPolicyEvent(e, c) // transport.go
	case store.KindHost:
		// The liveness key exists while the agent is heard from.
		switch {
		case c.Prev == nil && c.Cur != nil:
			e.FromState, e.ToState = "unreachable", "ready"
		case c.Prev != nil && c.Cur == nil:
			e.FromState, e.ToState = "ready", "unreachable"
			e.Message = "agent heartbeat lease expired"
		default:
			return nil, false, nil
		}
		return e, true, nil
	case store.KindVM:
		var prev, cur ferryv1.VM
		if err := decodeEither(c, &prev, &cur); err != nil {
			return nil, false, err
		}
		e.Vm = c.Name
		e.FromState, e.ToState = stateOf(c.Prev, prev.GetState()), stateOf(c.Cur, cur.GetState())
		if c.Cur == nil {
			e.ToState = "deleted"
		}
		if e.FromState == e.ToState && prev.GetHost() == cur.GetHost() {
			return nil, false, nil
		}
		if h := cur.GetHost(); h != "" {
			e.Message = "on " + h
		}
		if prev.GetHost() != "" && cur.GetHost() != "" && prev.GetHost() != cur.GetHost() {
			e.Message = fmt.Sprintf("moved from %s to %s", prev.GetHost(), cur.GetHost())
		}
		return e, true, nil
	case store.KindMigration:
		var prev, cur statev1.MigrationRecord
		if err := decodeEither(c, &prev, &cur); err != nil {
			return nil, false, err
		}
		e.Vm = cur.GetVm()
		if e.Vm == "" {
			e.Vm = prev.GetVm()
		}
		e.FromState, e.ToState = stateOf(c.Prev, prev.GetState()), stateOf(c.Cur, cur.GetState())
		if c.Cur == nil {
			e.ToState = "deleted" // retention removed the record
		}
		if e.FromState == e.ToState {
			return nil, false, nil
		}
		e.Message = fmt.Sprintf("%s %s -> %s", cur.GetStrategy(), cur.GetFrom(), cur.GetTo())
		if cur.GetError() != "" {
			e.Message += ": " + cur.GetError()
		}
		return e, true, nil
	case store.KindHostRecord:
		var prev, cur ferryv1.Host
		if err := decodeEither(c, &prev, &cur); err != nil {
			return nil, false, err
		}
		if c.Prev == nil || c.Cur == nil { // registered or removed: the liveness key tells
			return nil, false, nil
		}
		from, to := healthOf(&prev), healthOf(&cur)
		if from == to {
			return nil, false, nil
		}
		e.Kind, e.FromState, e.ToState = store.KindHost, from, to
		e.Message = "health: " + cur.GetHealthDetail()
		if cur.GetHealthDetail() == "" {
			e.Message = "health: every check passes"
		}
		return e, true, nil
	case store.KindEvacuation:
		var prev, cur ferryv1.Evacuation
		if err := decodeEither(c, &prev, &cur); err != nil {
			return nil, false, err
		}
		e.FromState, e.ToState = stateOf(c.Prev, prev.GetState()), stateOf(c.Cur, cur.GetState())
		if c.Cur == nil {
			e.ToState = "deleted"
			e.Message = "maintenance exited: the host is schedulable again"
			return e, true, nil
		}
		if e.FromState == e.ToState {
			return nil, false, nil
		}
		planned, done, failed, inFlight := dashboard.EvacuationCounts(&cur)
		e.Message = fmt.Sprintf("%s: %d of %d VMs moved, %d failed, %d in flight", cur.GetReason(), done, planned, failed, inFlight)
		if m := cur.GetMessage(); m != "" && drain.Terminal(cur.GetState()) {
			e.Message += "; " + m
		}
		return e, true, nil
	}
	return nil, false, nil
}

// healthOf is a host record's health verdict (an agent without checks
// reports none: healthy).
func healthOf(h *ferryv1.Host) string {
	if h.GetHealth() == "" {
		return "healthy"
	}
	return h.GetHealth()
}

// stateOf is the state of a stored value, "" for an absent one.
func stateOf(raw []byte, state string) string {
	if raw == nil {
		return ""
	}
	return state
}

// decodeEither decodes the previous and new values of c that are present.
func decodeEither(c store.StateChange, prev, cur proto.Message) error {
	opt := protojson.UnmarshalOptions{DiscardUnknown: true}
	if c.Prev != nil {
		if err := opt.Unmarshal(c.Prev, prev); err != nil {
			return fmt.Errorf("event of %s %s: decode the previous value: %w", c.Kind, c.Name, err)
		}
	}
	if c.Cur != nil {
		if err := opt.Unmarshal(c.Cur, cur); err != nil {
			return fmt.Errorf("event of %s %s: decode the new value: %w", c.Kind, c.Name, err)
		}
	}
	return nil
}

// eventID names the event of a change so that ids sort by revision and a
// change recorded twice (a new leader resuming) writes the same key.
func eventID(c store.StateChange) string {
	return fmt.Sprintf("%020d-%s-%s", c.Rev, c.Kind, c.Name)
}

// eventMatches reports whether e concerns vm (every event when vm is "").
func eventMatches(e *ferryv1.Event, vm string) bool { return vm == "" || e.GetVm() == vm }

// runEvents records the state changes of hosts, VMs and migrations as
// events until ctx ends (the leader runs it, with the engine; its writes are
// fenced). It resumes at the revision of the newest recorded event, so a
// new leader records what changed while no one led; when etcd compacted
// that revision it starts from now and logs the gap.
func (s *Server) runEvents(ctx context.Context) {
	for ctx.Err() == nil {
		from, err := s.eventsResumeRevision(ctx)
		if err == nil {
			err = s.store.WatchStateChanges(ctx, from, func(c store.StateChange) error {
				e, ok, err := eventOf(c, time.Now())
				if err != nil {
					s.log.Warn("event not recorded", "err", err)
					return nil
				}
				if !ok {
					return nil
				}
				return s.store.PutEvent(ctx, e)
			})
		}
		switch {
		case ctx.Err() != nil:
			return
		case errors.Is(err, store.ErrNotLeader):
			return // the engine's context ends too
		case errors.Is(err, store.ErrEventHistoryCompacted):
			s.log.Warn("event history: changes lost to etcd compaction; recording from now", "err", err)
			if rev, rerr := s.store.Revision(ctx); rerr == nil {
				s.eventsFrom.Store(rev + 1)
			}
		case err != nil:
			s.log.Warn("event recorder: retrying", "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(time.Second):
		}
	}
}

// eventsResumeRevision is where the recorder starts: the newest event's
// revision (inclusive: the changes of that revision are written again, to
// the same keys), else after the compaction gap, else now.
func (s *Server) eventsResumeRevision(ctx context.Context) (int64, error) {
	c, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	last, err := s.store.LastEvent(c)
	if err != nil {
		return 0, err
	}
	from := s.eventsFrom.Load()
	if last != nil && last.GetRevision() > from {
		from = last.GetRevision()
	}
	if from > 0 {
		return from, nil
	}
	rev, err := s.store.Revision(c)
	if err != nil {
		return 0, err
	}
	return rev + 1, nil
}

// sweepEvents removes the events the retention policy no longer keeps and
// returns how many.
func (s *Server) sweepEvents(ctx context.Context, now time.Time) (int, error) {
	evs, err := s.store.ListEvents(ctx)
	if err != nil {
		return 0, fmt.Errorf("event retention: %w", err)
	}
	items := make([]retention.Item, 0, len(evs))
	for _, e := range evs {
		items = append(items, retention.Item{ID: e.GetId(), Finished: e.GetTime().AsTime()})
	}
	drop := retention.Select(items, s.eventRetention, now)
	if err := s.store.DeleteEvents(ctx, drop); err != nil {
		return 0, fmt.Errorf("event retention: %w", err)
	}
	return len(drop), nil
}

// runEventRetention sweeps the event history every minute until ctx ends.
func (s *Server) runEventRetention(ctx context.Context) {
	t := time.NewTicker(eventSweepInterval)
	defer t.Stop()
	for {
		sctx, cancel := context.WithTimeout(ctx, time.Minute)
		n, err := s.sweepEvents(sctx, time.Now())
		cancel()
		if err != nil && ctx.Err() == nil {
			s.log.Warn("event retention", "err", err)
		} else if n > 0 {
			s.log.Info("event retention removed old events", "count", n)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}
