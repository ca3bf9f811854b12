package core

import (
	"reflect"
	"strings"
	"testing"
	"time"
)

// A re-planned record is written as version 3 and reads back whole; one
// never re-planned stays version 2 (older engines read it).
func TestReplanRecordRoundTrip(t *testing.T) {
	o := opts
	o.MaxAttempts, o.Auto = 3, true
	r, err := New("mig-1", "vm1", "h1", "h2", Precopy, VMRunning, 7, o, t0)
	if err != nil {
		t.Fatal(err)
	}
	if v := ToProto(r).GetVersion(); v != BaseVersion {
		t.Fatalf("a record never re-planned is written as version %d, want %d", v, BaseVersion)
	}
	r.State, r.Attempt, r.Strategy = Preparing, 2, Hybrid
	r.Retries = []Retry{{Attempt: 1, At: t0.Add(time.Second), Reason: "precopy did not converge", Backoff: ReplanBackoff, Strategy: Hybrid}}
	pr := ToProto(r)
	if pr.GetVersion() != 3 || Version != 3 {
		t.Fatalf("a re-planned record is written as version %d (engine %d), want 3", pr.GetVersion(), Version)
	}
	back, err := FromProto(pr)
	if err != nil {
		t.Fatal(err)
	}
	back.Version = r.Version
	if !reflect.DeepEqual(back, r) {
		t.Fatalf("round trip changed the record:\n got %+v\nwant %+v", back, r)
	}
	if r.AttemptLimit() != 4 {
		t.Fatalf("attempt limit %d, want the 3 of the policy plus the re-planned one", r.AttemptLimit())
	}
}

// SteerReplan ends a transferring auto pre-copy's attempt to retry it as
// hybrid; for a strategy the operator named, a second re-plan or another
// strategy it is refused with a note and the pre-copy goes on.
func TestSteerReplanOnlyForAnAutoPrecopyOnce(t *testing.T) {
	steer := func(r Record, as Strategy) Record {
		next, _ := Step(r, Observation{Kind: ObsSteer, Now: t0.Add(time.Second), Steer: SteerReplan, Strategy: as, SteerWhy: "stuck"})
		return next
	}
	o := opts
	o.Auto = true
	r, err := New("mig-1", "vm1", "h1", "h2", Precopy, VMRunning, 7, o, t0)
	if err != nil {
		t.Fatal(err)
	}
	r.State = Transferring
	got := steer(r, Hybrid)
	if got.State != RollingBack || !got.Retrying || len(got.Retries) != 1 || got.Retries[0].Strategy != Hybrid || got.Strategy != Precopy {
		t.Fatalf("auto pre-copy: state %s retrying %v retries %+v strategy %s; want the attempt cleaned up to retry as hybrid",
			got.State, got.Retrying, got.Retries, got.Strategy)
	}
	explicit := r
	explicit.Options.Auto = false
	again := r
	again.Retries = []Retry{{Attempt: 1, Strategy: Converge}}
	hybrid := r
	hybrid.Strategy = Hybrid
	for name, tc := range map[string]struct {
		r    Record
		as   Strategy
		want string
	}{
		"explicit precopy": {explicit, Hybrid, "the operator asked for precopy explicitly"},
		"second re-plan":   {again, Hybrid, "re-planned once already"},
		"postcopy":         {r, Postcopy, "only as hybrid or converge"},
		"not a pre-copy":   {hybrid, Converge, "only a plain pre-copy"},
	} {
		got := steer(tc.r, tc.as)
		if got.State != Transferring || got.Retrying || len(got.Retries) != len(tc.r.Retries) || !strings.Contains(got.Note, tc.want) {
			t.Errorf("%s: state %s retrying %v note %q; want the transfer going on, noting %q", name, got.State, got.Retrying, got.Note, tc.want)
		}
	}
}
