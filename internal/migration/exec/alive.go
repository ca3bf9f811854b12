package exec

import (
	"context"
	"fmt"
	"slices"
	"sort"
	"strings"
	"time"

	"connectrpc.com/connect"
	agentv1 "github.com/ferryvm/ferry/gen/ferry/agent/v1"
	ferryv1 "github.com/ferryvm/ferry/gen/ferry/v1"
	"github.com/ferryvm/ferry/internal/migration/core"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// DefaultGuestAliveTimeout bounds the guest-alive check when Knobs sets none.
const DefaultGuestAliveTimeout = 5 * time.Second

// WarnGuestUnresponsive starts the report's warning for a guest that showed
// no sign of life after the switchover.
const WarnGuestUnresponsive = "guest unresponsive"

// warningState is the state of the report events that carry a warning (they
// are not states of the core: the report adds them next to the history).
const warningState = "warning"

// AliveChecker is the agent call the guest-alive check needs (the
// destination's agent; see LivenessAgentService).
type AliveChecker interface {
	CheckGuestAlive(ctx context.Context, req *agentv1.CheckGuestAliveRequest) (*agentv1.CheckGuestAliveResponse, error)
}

// aliveWatcher is a Watcher that records the guest-alive check.
type aliveWatcher interface {
	Alive(r *agentv1.CheckGuestAliveResponse, err error, at time.Time)
}

// CheckGuestAlive implements AliveChecker; its deadline leaves room for
// the check's own timeout.
func (a *connectAgent) CheckGuestAlive(ctx context.Context, req *agentv1.CheckGuestAliveRequest) (*agentv1.CheckGuestAliveResponse, error) {
	return call(ctx, a.t.Step+time.Duration(req.TimeoutMs)*time.Millisecond, "check guest alive", func(c context.Context) (*agentv1.CheckGuestAliveResponse, error) {
		r, err := a.live.CheckGuestAlive(c, connect.NewRequest(req))
		if err != nil {
			return nil, err
		}
		return r.Msg, nil
	})
}

// startAlive starts the guest-alive check once per performer, right after
// FinishIncoming saw the destination run: it asks the destination's agent
// whether the guest shows a sign of life and hands the answer to the
// report. It runs beside the cleanup (the source's quit, the VM record,
// the reservation): the migration's final record waits for it
// (waitAlive), nothing else does. It never fails a step: the guest
// already ran on the destination, so whatever the answer the migration
// goes forward (an unresponsive guest is a warning).
func (p *performer) startAlive(ctx context.Context, a core.Action) {
	ac, ok := p.dst.(AliveChecker)
	w, wok := p.watch.(aliveWatcher)
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.aliveChecked || !ok || !wok {
		return
	}
	p.aliveChecked = true
	done := make(chan struct{})
	p.aliveDone = done
	go func() {
		defer close(done)
		p.checkAlive(ctx, a, ac, w)
	}()
}

// waitAlive waits for a guest-alive check started (none: returns at once)
// or ctx's end, before the final record rec is written. A post-copy
// (rec.Facts.PostcopyStarted) that completed after a check that saw no
// sign of life is checked once more: its guest ran on pages still coming
// (and, over a broken link, not coming) during the first check, and the
// destination's probe, which watches from the resume on, answers again
// now that every page is there. A guest that still shows none keeps the
// warning; one that did gets its figure, the time after the resume.
func (p *performer) waitAlive(ctx context.Context, rec core.Record) {
	p.mu.Lock()
	done := p.aliveDone
	p.mu.Unlock()
	if done == nil {
		return
	}
	select {
	case <-done:
	case <-ctx.Done():
		return
	}
	p.mu.Lock()
	again := p.aliveAgain
	p.aliveAgain = nil
	p.mu.Unlock()
	if again != nil && rec.State == core.Completed && rec.Facts.PostcopyStarted {
		again(ctx)
	}
}

// checkAlive is the check startAlive runs.
func (p *performer) checkAlive(ctx context.Context, a core.Action, ac AliveChecker, w aliveWatcher) {
	timeout := p.k().GuestAliveTimeout
	if timeout <= 0 {
		timeout = DefaultGuestAliveTimeout
	}
	id := p.id
	if a.MigrationID != "" {
		id = a.MigrationID // a retried pre-copy's attempt: the destination knows it by that id
	}
	req := &agentv1.CheckGuestAliveRequest{Name: p.vm, MigrationId: id, TimeoutMs: timeout.Milliseconds()}
	r, err := ac.CheckGuestAlive(ctx, req)
	if ctx.Err() != nil {
		// Stopping (another leader takes over): the next one checks again.
		p.mu.Lock()
		p.aliveChecked = false
		p.mu.Unlock()
		return
	}
	if err == nil && !r.Alive {
		p.mu.Lock()
		p.aliveAgain = func(ctx context.Context) { p.recheckAlive(ctx, ac, w, req, r) }
		p.mu.Unlock()
	}
	if p.log != nil {
		switch {
		case err != nil:
			p.log.Warn("guest liveness not checked", "vm", p.vm, "host", p.to, "err", err)
		case !r.Alive:
			p.log.Warn("guest unresponsive after the switchover", "vm", p.vm, "host", p.to, "method", r.Method, "detail", r.Detail)
		default:
			p.log.Info("guest alive after the switchover", "vm", p.vm, "host", p.to, "after_ms", r.AliveAfterMs, "method", r.Method)
		}
	}
	w.Alive(r, err, p.clock.Now())
}

// recheckAlive is waitAlive's second check of a post-copy's guest (first
// is the first check's answer, kept when the second cannot run).
func (p *performer) recheckAlive(ctx context.Context, ac AliveChecker, w aliveWatcher, req *agentv1.CheckGuestAliveRequest, first *agentv1.CheckGuestAliveResponse) {
	r, err := ac.CheckGuestAlive(ctx, req)
	if err != nil || ctx.Err() != nil {
		if p.log != nil {
			p.log.Warn("guest liveness not checked again after the post-copy", "vm", p.vm, "host", p.to, "err", err)
		}
		return // the first answer stands
	}
	if !r.Alive {
		if p.log != nil {
			p.log.Warn("guest still unresponsive after the post-copy completed", "vm", p.vm, "host", p.to, "method", r.Method, "detail", r.Detail)
		}
		r.Detail = fmt.Sprintf("%s; checked again once the post-copy completed: %s", first.Detail, r.Detail)
	} else if p.log != nil {
		p.log.Info("guest alive after the post-copy completed", "vm", p.vm, "host", p.to, "after_ms", r.AliveAfterMs, "method", r.Method, "first", first.Detail)
	}
	w.Alive(r, nil, p.clock.Now())
}

// Alive implements aliveWatcher: the figure, and a warning with an event
// when the guest showed no sign of life or could not be checked.
func (r *reporter) Alive(res *agentv1.CheckGuestAliveResponse, err error, at time.Time) {
	r.mu.Lock()
	defer r.mu.Unlock()
	// A check run again (a new leader performed FinishIncoming again)
	// replaces the previous one's outcome.
	r.m.Warnings = slices.DeleteFunc(r.m.Warnings, aliveWarning)
	r.extra = slices.DeleteFunc(r.extra, func(e *ferryv1.MigrationEvent) bool { return aliveWarning(e.Message) })
	r.m.GuestAliveAfterMs, r.m.GuestAliveMethod = 0, ""
	var warn string
	switch {
	case err != nil:
		warn = fmt.Sprintf("%s: %v", warnNotChecked, err)
	case !res.Alive:
		r.m.GuestAliveAfterMs, r.m.GuestAliveMethod = -1, res.Method
		warn = fmt.Sprintf("%s: no sign of life on %s after the switchover (%s)", WarnGuestUnresponsive, r.m.To, res.Detail)
	default:
		r.m.GuestAliveAfterMs, r.m.GuestAliveMethod = res.AliveAfterMs, res.Method
		return
	}
	r.m.Warnings = append(r.m.Warnings, warn)
	r.extra = append(r.extra, &ferryv1.MigrationEvent{At: timestamppb.New(at), State: warningState, Message: warn})
}

// warnNotChecked starts the warning of a check that could not run.
const warnNotChecked = "guest liveness not checked"

// aliveWarning reports whether w is a warning of the guest-alive check.
func aliveWarning(w string) bool {
	return strings.HasPrefix(w, WarnGuestUnresponsive+":") || strings.HasPrefix(w, warnNotChecked+":")
}

// warningEvents are the warning events of a report loaded from the store
// (render rebuilds the rest of the events from the core's history).
func warningEvents(m *ferryv1.Migration) []*ferryv1.MigrationEvent {
	var out []*ferryv1.MigrationEvent
	for _, e := range m.GetEvents() {
		if e.State == warningState {
			out = append(out, e)
		}
	}
	return out
}

// mergeEvents adds the warning events to the history's, in time order
// (a warning sorts after a state change of the same instant), but never
// after the migration's end: the final record waits for the guest-alive
// check, so a warning whose answer came in after the core had decided the
// end still belongs before it (its own time is kept).
func mergeEvents(events, extra []*ferryv1.MigrationEvent) []*ferryv1.MigrationEvent {
	if len(extra) == 0 {
		return events
	}
	var end time.Time
	for _, e := range events {
		if core.State(e.State).Terminal() {
			end = e.At.AsTime()
			break
		}
	}
	key := func(e *ferryv1.MigrationEvent) (time.Time, bool) {
		t := e.At.AsTime()
		if e.State == warningState && !end.IsZero() && t.After(end) {
			return end, true // just before the end
		}
		return t, false
	}
	events = append(events, extra...)
	sort.SliceStable(events, func(i, j int) bool {
		ti, bi := key(events[i])
		tj, bj := key(events[j])
		if ti.Equal(tj) {
			return bi && !bj
		}
		return ti.Before(tj)
	})
	return events
}
