package core

import (
	"testing"
	"time"
)

// A post-copy migration with the planner's switch point asks for
// post-copy once round 1 went through that fraction of the guest's RAM;
// without one it waits for round 2; the point survives a restart.
func TestPostcopyAtThePlannersSwitchPoint(t *testing.T) {
	transferring := func(at float64) Record {
		o := opts
		o.PostcopyAtFraction = at
		r, err := New("mig-1", "vm1", "h1", "h2", Postcopy, VMRunning, 7, o, t0)
		if err != nil {
			t.Fatal(err)
		}
		r.State, r.Facts.DestPrepared, r.Facts.OutgoingStarted, r.DestURI = Transferring, true, true, "tcp:h2:1"
		return r
	}
	const total = 1 << 30
	poll := func(r Record, remaining, rounds int64) Record {
		next, _ := Step(r, Observation{Kind: ObsResult, Now: t0.Add(time.Second), Action: ActQueryOutgoing, Side: Src,
			Out: &Outgoing{Status: "active", QEMUStatus: "running", Transferred: 1 << 20, Rounds: rounds, Remaining: remaining, Total: total}})
		return next
	}
	r := transferring(0.66)
	if poll(r, total/2, 1).PostcopyWanted {
		t.Fatal("post-copy wanted at half of round 1, before the switch point")
	}
	if !poll(r, total/4, 1).PostcopyWanted {
		t.Fatal("post-copy not wanted at 3/4 of round 1, past the switch point")
	}
	back, err := FromProto(ToProto(r))
	if err != nil || back.Options.PostcopyAtFraction != 0.66 {
		t.Fatalf("switch point after a round trip: %v, %v", back.Options.PostcopyAtFraction, err)
	}
	plain := transferring(0)
	if poll(plain, 0, 1).PostcopyWanted || !poll(plain, total, 2).PostcopyWanted {
		t.Fatal("without a switch point post-copy must start at round 2, not before")
	}
	if poll(r, total, 0).PostcopyWanted {
		t.Fatal("nothing scanned yet, post-copy wanted")
	}
	// The byte switch point goes by RAM bytes sent, not RAM scanned: a
	// scan past zero pages does not reach it, the data sent does.
	byBytes := transferring(0.66)
	byBytes.Options.PostcopyAtBytes = 200 << 20
	sent := func(r Record, remaining, ram int64) Record {
		next, _ := Step(r, Observation{Kind: ObsResult, Now: t0.Add(time.Second), Action: ActQueryOutgoing, Side: Src,
			Out: &Outgoing{Status: "active", QEMUStatus: "running", Transferred: ram + 50<<20, RAMTransferred: ram, Rounds: 1, Remaining: remaining, Total: total}})
		return next
	}
	if sent(byBytes, total/10, 150<<20).PostcopyWanted {
		t.Fatal("post-copy wanted at 90% of RAM scanned with 150 MiB sent, before the 200 MiB byte switch point")
	}
	if !sent(byBytes, total/2, 200<<20).PostcopyWanted {
		t.Fatal("post-copy not wanted with 200 MiB of RAM sent")
	}
	back, err = FromProto(ToProto(byBytes))
	if err != nil || back.Options.PostcopyAtBytes != 200<<20 {
		t.Fatalf("byte switch point after a round trip: %v, %v", back.Options.PostcopyAtBytes, err)
	}
	hy := transferring(0.1)
	hy.Strategy = Hybrid
	if poll(hy, 0, 1).PostcopyWanted {
		t.Fatal("a hybrid migration switched by the post-copy switch point (the controller decides there)")
	}
}
