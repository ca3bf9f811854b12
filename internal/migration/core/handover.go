package core

import (
	"fmt"
	"time"
)

// Leadership changes.
//
// A record loaded by a new executor (ObsLoaded: a new leader, or the same
// server restarted) is driven on from the state it was persisted in, in
// every state: a live migration preparing, mirroring or transferring is
// adopted — the agents own both QEMUs and the transfer, the record says
// how far it got, and every step is idempotent and keyed by the attempt's
// id — rather than rolled back. That holds whether the previous leader
// resigned or was lost: its writes are fenced by its term, so every
// decision it could still take without a write is a read or an idempotent
// step (PrepareIncoming, StartOutgoing, ArmResume, the queries), and the
// owner still switches only by the CAS of the executor that leads.
//
// A resigning leader hands its migrations over (ObsHandOver): from then
// on its executor plans nothing, folds the answers still on their way into
// the record, and writes it with the handed-over fact once no owner switch
// is in flight (the switch's transaction writes the record itself). The
// next leader's load records which of the two happened and clears the
// fact.

// Handover is the fact a resigning leader's executor leaves in a record.
type Handover struct {
	Term int64     // the resigning leader's term (its election key's create revision)
	At   time.Time // when its executor stopped driving the record
}

func (h Handover) equal(o Handover) bool { return h.Term == o.Term && h.At.Equal(o.At) }

// handedOver reports whether the record carries the handed-over fact.
func (r *Record) handedOver() bool { return !r.Handover.At.IsZero() }

// adoptLoaded applies the rule for a record loaded by a new executor: it
// is driven on from its state (nothing is rolled back for the restart);
// the history says whether the previous leader handed it over or was lost.
func (r *Record) adoptLoaded(now time.Time) {
	prev := r.Handover
	r.Handover = Handover{}
	if r.State == Pending {
		return // nothing done yet: it starts
	}
	how := "the previous leader was lost (it crashed or was cut off)"
	if !prev.At.IsZero() {
		how = fmt.Sprintf("the leader of term %d handed it over %s before", prev.Term, now.Sub(prev.At).Round(time.Millisecond))
	}
	what := "driving it on from " + string(r.State)
	if r.Strategy.Live() && !r.Facts.OwnerSwitched && (r.State == Preparing || r.State == Mirroring || r.State == Transferring) {
		what = "the transfer goes on (nothing rolled back); the owner switches by CAS as before"
	}
	r.History = append(r.History, Event{At: now, State: r.State, Message: "adopted by a new leader: " + how + "; " + what})
}

// handingOver is Step for an executor whose leader resigns (ObsHandOver,
// and every observation after it): no action is planned; results still on
// their way are folded in (their facts count); the record is written with
// the handed-over fact once no owner switch is in flight.
func (r Record) handingOver(before Record, obs Observation) (Record, Ready) {
	switch obs.Kind {
	case ObsHandOver:
		if !r.vol.handing {
			r.vol.handing, r.vol.handoverTerm = true, obs.Term
		}
	case ObsResult:
		if obs.Action > ActNone && obs.Action < actCount {
			r.vol.inflight[obs.Action][obs.Side] = false
			r.result(obs)
		}
	}
	if r.vol.inflight[ActCASOwner][Dst] {
		// The owner switch's transaction writes the switched record: a
		// write now could make it fail; write once it answered.
		return r, Ready{}
	}
	if !r.handedOver() {
		r.Handover = Handover{Term: r.vol.handoverTerm, At: obs.Now}
	}
	base := &before
	if w := r.vol.wrote; w != nil {
		r.vol.wrote = nil // the switch's transaction wrote w
		base = w
	}
	return r, Ready{Persist: persistMode(base, &r)}
}
