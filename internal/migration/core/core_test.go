package core

import (
	"errors"
	"reflect"
	"strings"
	"testing"
	"time"
)

var t0 = time.Date(2026, 12, 1, 8, 0, 0, 0, time.UTC)

var opts = Options{StallTimeout: 5 * time.Second, Timeout: time.Minute, RecoveryWindow: time.Minute}

func TestNewValidates(t *testing.T) {
	for _, tc := range []struct {
		name string
		mk   func() (Record, error)
		want string
	}{
		{"missing id", func() (Record, error) { return New("", "vm", "a", "b", Precopy, VMRunning, 1, opts, t0) }, "id, vm, from and to"},
		{"same host", func() (Record, error) { return New("m", "vm", "a", "a", Precopy, VMRunning, 1, opts, t0) }, "from and to are both a"},
		{"strategy", func() (Record, error) { return New("m", "vm", "a", "b", "warp", VMRunning, 1, opts, t0) }, "strategy: must be"},
		{"live needs running", func() (Record, error) { return New("m", "vm", "a", "b", Hybrid, VMStopped, 1, opts, t0) }, "prev_vm_state"},
		{"cold of a paused VM", func() (Record, error) { return New("m", "vm", "a", "b", Cold, VMPaused, 1, opts, t0) }, "prev_vm_state"},
		{"bounds", func() (Record, error) { return New("m", "vm", "a", "b", Cold, VMStopped, 1, Options{}, t0) }, "options"},
	} {
		_, err := tc.mk()
		if !errors.Is(err, ErrBadRecord) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: err %v, want ErrBadRecord naming %q", tc.name, err, tc.want)
		}
	}
	r := Record{Version: Version + 1, ID: "m", VM: "v", From: "a", To: "b", Strategy: Cold, PrevVMState: VMStopped, Options: opts}
	if err := r.Validate(); err == nil || !strings.Contains(err.Error(), "newer") {
		t.Errorf("a newer record version must be refused, got %v", err)
	}
}

func TestProtoRoundTrip(t *testing.T) {
	r, err := New("mig-1", "vm1", "h1", "h2", Postcopy, VMRunning, 7, opts, t0)
	if err != nil {
		t.Fatal(err)
	}
	r.State, r.Generation, r.DestURI, r.RecoverURI = PostcopyPaused, 8, "tcp:h2:1", "tcp:h2:2"
	r.Facts = Facts{DestPrepared: true, OutgoingStarted: true, PostcopyAsked: true, OwnerSwitched: true, DestArmed: true,
		ContinueSent: true, PostcopyStarted: true, DestRan: true, GaveUp: true}
	r.SwitchedAt, r.GiveUpAt, r.PausedAt, r.LastProgressAt = t0.Add(time.Second), t0.Add(time.Minute), t0.Add(2*time.Second), t0.Add(3*time.Second)
	r.Attempts, r.Transferred, r.Rounds, r.CancelRequested, r.PostcopyWanted = 3, 1<<20, 4, true, true
	r.Error, r.Note, r.FinalVMState = "cause", "note", VMPaused
	r.History = append(r.History, Event{At: t0.Add(time.Second), State: Resuming, Message: "owner is now h2"})
	back, err := FromProto(ToProto(r))
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(back, r) {
		t.Fatalf("round trip changed the record:\n got %+v\nwant %+v", back, r)
	}
	if _, err := FromProto(nil); !errors.Is(err, ErrBadRecord) {
		t.Fatalf("nil record: %v", err)
	}
}

// TestStepIsPure: Step never changes the record it was given, and a
// terminal record is inert.
func TestStepIsPure(t *testing.T) {
	r, err := New("mig-1", "vm1", "h1", "h2", Precopy, VMRunning, 7, opts, t0)
	if err != nil {
		t.Fatal(err)
	}
	r.History = append(make([]Event, 0, 16), r.History...) // room to append in place
	before := ToProto(r).String()
	next, ready := Step(r, Observation{Kind: ObsLoaded, Now: t0})
	if ToProto(r).String() != before {
		t.Fatal("Step changed its input record")
	}
	if next.State != Preparing || ready.Persist != PersistBefore || len(ready.Actions) == 0 || ready.Actions[0].Kind != ActPrepareIncoming {
		t.Fatalf("first step: state %s persist %v actions %v", next.State, ready.Persist, ready.Actions)
	}
	again, ready2 := Step(r, Observation{Kind: ObsLoaded, Now: t0})
	if !reflect.DeepEqual(again, next) || !reflect.DeepEqual(ready2, ready) {
		t.Fatal("Step is not deterministic")
	}
	next.State = Completed
	if _, rd := Step(next, Observation{Kind: ObsTick, Now: t0.Add(time.Hour)}); rd.Persist != PersistNone || len(rd.Actions) != 0 {
		t.Fatalf("a terminal record acted: %+v", rd)
	}
}

// TestCancelAfterCASRefused: after the owner CAS a cancel changes nothing
// but the note.
func TestCancelAfterCASRefused(t *testing.T) {
	r, _ := New("mig-1", "vm1", "h1", "h2", Precopy, VMRunning, 7, opts, t0)
	r.State, r.Facts.OwnerSwitched, r.SwitchedAt, r.GiveUpAt = Resuming, true, t0, t0.Add(time.Minute)
	next, _ := Step(r, Observation{Kind: ObsCancel, Now: t0})
	if next.State != Resuming || next.CancelRequested || !strings.Contains(next.Note, "cancel refused") {
		t.Fatalf("cancel after the CAS: state %s cancel %v note %q", next.State, next.CancelRequested, next.Note)
	}
}

// TestPersistFailedRetries: when the write-ahead fails the core forgets
// what was in flight and asks again after the backoff.
func TestPersistFailedRetries(t *testing.T) {
	r, _ := New("mig-1", "vm1", "h1", "h2", Precopy, VMRunning, 7, opts, t0)
	next, _ := Step(r, Observation{Kind: ObsLoaded, Now: t0})
	// the executor could not write next: it keeps r and reports it
	kept, ready := Step(r, Observation{Kind: ObsPersistFailed, Now: t0})
	_ = next
	if kept.State != Preparing {
		t.Fatalf("state %s", kept.State)
	}
	for _, a := range ready.Actions {
		if a.Kind != ActSetTimer {
			t.Fatalf("acted at once after a failed write: %v", ready.Actions)
		}
	}
	_, ready = Step(kept, Observation{Kind: ObsTick, Now: t0.Add(RetryBackoff)})
	if len(ready.Actions) == 0 || ready.Actions[0].Kind != ActPrepareIncoming {
		t.Fatalf("no retry after the backoff: %v", ready.Actions)
	}
}

// TestPausedQEMURecordedPaused: the VM record is written from what the
// owner's QEMU does; a paused QEMU is recorded paused, with a reason.
func TestPausedQEMURecordedPaused(t *testing.T) {
	r, _ := New("mig-1", "vm1", "h1", "h2", Precopy, VMRunning, 7, opts, t0)
	r.State, r.Facts.OwnerSwitched, r.Facts.DestRan, r.Facts.SourceQuit = Cleanup, true, true, true
	r.SwitchedAt, r.GiveUpAt = t0, t0.Add(time.Minute)
	r, ready := Step(r, Observation{Kind: ObsLoaded, Now: t0})
	if len(ready.Actions) == 0 || ready.Actions[0].Kind != ActGetVM || ready.Actions[0].Side != Dst {
		t.Fatalf("want GetVM(dst) first, got %v", ready.Actions)
	}
	r, ready = Step(r, Observation{Kind: ObsResult, Now: t0, Action: ActGetVM, Side: Dst, VM: &VMInfo{State: "paused", PID: 9}})
	var u *VMUpdate
	for _, a := range ready.Actions {
		if a.Kind == ActUpdateVM {
			u = &a.Update
		}
	}
	if u == nil || u.State != VMPaused || u.Host != "h2" || !u.Unlock || u.Reason == "" {
		t.Fatalf("want UpdateVM(paused@h2, unlock, with a reason), got %v", ready.Actions)
	}
	r, _ = Step(r, Observation{Kind: ObsResult, Now: t0, Action: ActUpdateVM, Side: Dst, StoreVM: &StoreVM{Host: "h2"}})
	r, _ = Step(r, Observation{Kind: ObsResult, Now: t0, Action: ActReleaseReservation, Side: Dst})
	if r.State != Completed || r.FinalVMState != VMPaused {
		t.Fatalf("state %s final %s", r.State, r.FinalVMState)
	}
}
