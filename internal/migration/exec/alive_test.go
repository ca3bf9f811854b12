package exec

import (
	"context"
	"strings"
	"sync"
	"testing"

	agentv1 "github.com/ferryvm/ferry/gen/ferry/agent/v1"
	"github.com/ferryvm/ferry/internal/migration/core"
)

// scriptedAlive is a FAKE AliveChecker answering from a list, one answer
// per call (the last one repeats).
type scriptedAlive struct {
	mu      sync.Mutex
	answers []*agentv1.CheckGuestAliveResponse
	calls   int
}

func (s *scriptedAlive) CheckGuestAlive(_ context.Context, _ *agentv1.CheckGuestAliveRequest) (*agentv1.CheckGuestAliveResponse, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	r := s.answers[min(s.calls, len(s.answers)-1)]
	s.calls++
	return r, nil
}

// A post-copy's guest without a sign of life within the first check (its
// pages still coming, the link broken) is checked again once the
// post-copy completed: alive then, the warning goes and the figure is the
// second answer's; still silent, the warning stays with both details. A
// pre-copy, or a post-copy that did not complete, is not checked again.
func TestPostcopyGuestCheckedAgainAfterItCompleted(t *testing.T) {
	silent := &agentv1.CheckGuestAliveResponse{AliveAfterMs: -1, Method: "guest-ping", Detail: "no sign of life within 5s of the request"}
	alive := &agentv1.CheckGuestAliveResponse{Alive: true, AliveAfterMs: 9120, Method: "guest-ping"}
	for _, tc := range []struct {
		name      string
		state     core.State
		postcopy  bool
		second    *agentv1.CheckGuestAliveResponse
		calls     int
		warned    bool
		aliveMs   int64
		detailHas string
	}{
		{name: "post-copy, alive at the end", state: core.Completed, postcopy: true, second: alive, calls: 2, aliveMs: 9120},
		{name: "post-copy, still silent", state: core.Completed, postcopy: true, second: silent, calls: 2, warned: true, aliveMs: -1, detailHas: "checked again once the post-copy completed"},
		{name: "pre-copy", state: core.Completed, second: alive, calls: 1, warned: true, aliveMs: -1},
		{name: "post-copy that failed", state: core.Failed, postcopy: true, second: alive, calls: 1, warned: true, aliveMs: -1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, report := newFakeRecord(t)
			rep := newReporter(report, nil)
			ac := &scriptedAlive{answers: []*agentv1.CheckGuestAliveResponse{silent, tc.second}}
			p := &performer{id: "mig-1", vm: "web", to: "h2", clock: RealClock{}}
			done := make(chan struct{})
			p.aliveDone = done
			p.checkAlive(context.Background(), core.Action{}, ac, rep)
			close(done)
			rec := core.Record{State: tc.state}
			rec.Facts.PostcopyStarted = tc.postcopy
			p.waitAlive(context.Background(), rec)
			p.waitAlive(context.Background(), rec) // a second final write checks no more
			if ac.calls != tc.calls {
				t.Errorf("%d checks, want %d", ac.calls, tc.calls)
			}
			warned := len(rep.m.Warnings) == 1 && strings.HasPrefix(rep.m.Warnings[0], WarnGuestUnresponsive+": ")
			if warned != tc.warned || len(rep.m.Warnings) > 1 || rep.m.GuestAliveAfterMs != tc.aliveMs {
				t.Errorf("warnings %q, guestAliveAfterMs %d; want warned %v, %d", rep.m.Warnings, rep.m.GuestAliveAfterMs, tc.warned, tc.aliveMs)
			}
			if tc.detailHas != "" && (len(rep.m.Warnings) == 0 || !strings.Contains(rep.m.Warnings[0], tc.detailHas)) {
				t.Errorf("warnings %q, want one saying %q", rep.m.Warnings, tc.detailHas)
			}
		})
	}
}
