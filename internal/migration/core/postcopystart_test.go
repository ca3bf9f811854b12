package core

import (
	"testing"
	"time"
)

// A post-copy migration with the planner's switch point asks for
// post-copy once the source sent that many bytes, still in round 1;
// without one it waits for round 2; the point survives a restart.
func TestPostcopyAtThePlannersSwitchPoint(t *testing.T) {
	transferring := func(after int64) Record {
		o := opts
		o.PostcopyAfterBytes = after
		r, err := New("mig-1", "vm1", "h1", "h2", Postcopy, VMRunning, 7, o, t0)
		if err != nil {
			t.Fatal(err)
		}
		r.State, r.Facts.DestPrepared, r.Facts.OutgoingStarted, r.DestURI = Transferring, true, true, "tcp:h2:1"
		return r
	}
	poll := func(r Record, transferred, rounds int64) Record {
		next, _ := Step(r, Observation{Kind: ObsResult, Now: t0.Add(time.Second), Action: ActQueryOutgoing, Side: Src,
			Out: &Outgoing{Status: "active", QEMUStatus: "running", Transferred: transferred, Rounds: rounds}})
		return next
	}
	r := transferring(176 << 20)
	if poll(r, 100<<20, 1).PostcopyWanted {
		t.Fatal("post-copy wanted before the switch point")
	}
	if !poll(r, 176<<20, 1).PostcopyWanted {
		t.Fatal("post-copy not wanted at the switch point in round 1")
	}
	back, err := FromProto(ToProto(r))
	if err != nil || back.Options.PostcopyAfterBytes != 176<<20 {
		t.Fatalf("switch point after a round trip: %d, %v", back.Options.PostcopyAfterBytes, err)
	}
	plain := transferring(0)
	if poll(plain, 1<<40, 1).PostcopyWanted || !poll(plain, 1<<20, 2).PostcopyWanted {
		t.Fatal("without a switch point post-copy must start at round 2, not before")
	}
	pre := transferring(1 << 20)
	pre.Strategy = Hybrid
	if poll(pre, 1<<30, 1).PostcopyWanted {
		t.Fatal("a hybrid migration switched by the post-copy switch point (the controller decides there)")
	}
}
