package core

import (
	"errors"
	"reflect"
	"strings"
	"testing"
	"time"
)

func TestRetryPolicyValidated(t *testing.T) {
	for _, tc := range []struct {
		o    Options
		want string
	}{
		{Options{StallTimeout: time.Second, Timeout: time.Minute, RecoveryWindow: time.Minute, MaxAttempts: MaxMaxAttempts + 1}, "max attempts must be 0..10"},
		{Options{StallTimeout: time.Second, Timeout: time.Minute, RecoveryWindow: time.Minute, MaxAttempts: -1}, "max attempts"},
		{Options{StallTimeout: time.Second, Timeout: time.Minute, RecoveryWindow: time.Minute, RetryBackoff: time.Hour}, "retry backoff must be 0..30s"},
	} {
		_, err := New("m", "vm", "a", "b", Precopy, VMRunning, 1, tc.o, t0)
		if !errors.Is(err, ErrBadRecord) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%+v: err %v, want ErrBadRecord naming %q", tc.o, err, tc.want)
		}
	}
}

func TestRetryBackoffDoublesUpToItsCap(t *testing.T) {
	r := Record{Options: Options{RetryBackoff: 2 * time.Second}}
	var got []time.Duration
	for n := int32(1); n <= 6; n++ {
		got = append(got, r.retryBackoff(n))
	}
	want := []time.Duration{2 * time.Second, 4 * time.Second, 8 * time.Second, 16 * time.Second, 30 * time.Second, 30 * time.Second}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("backoffs %v, want %v", got, want)
	}
	if d := (&Record{}).retryBackoff(1); d != DefaultRetryBackoff {
		t.Errorf("default backoff %s, want %s", d, DefaultRetryBackoff)
	}
}

func TestAttemptIDs(t *testing.T) {
	r := Record{ID: "mig-1"}
	if r.AttemptID() != "mig-1" {
		t.Errorf("a version-1 record (attempt 0) keys its steps by %q, want mig-1", r.AttemptID())
	}
	r.Attempt = 3
	if r.AttemptID() != "mig-1-a3" {
		t.Errorf("attempt 3 keys its steps by %q, want mig-1-a3", r.AttemptID())
	}
}

func TestRetryRecordRoundTrip(t *testing.T) {
	o := opts
	o.MaxAttempts, o.RetryBackoff = 4, 3*time.Second
	r, err := New("mig-1", "vm1", "h1", "h2", Precopy, VMRunning, 7, o, t0)
	if err != nil {
		t.Fatal(err)
	}
	r.State, r.Attempt, r.Retrying, r.NextAttemptAt = RetryWait, 2, true, t0.Add(5*time.Second)
	r.Retries = []Retry{{Attempt: 1, At: t0.Add(time.Second), Reason: "no progress", Backoff: 3 * time.Second}}
	back, err := FromProto(ToProto(r))
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(back, r) {
		t.Fatalf("round trip changed the record:\n got %+v\nwant %+v", back, r)
	}
}

// A version-1 record (no max_attempts) is never retried.
func TestVersion1RecordIsNeverRetried(t *testing.T) {
	r, err := New("mig-1", "vm1", "h1", "h2", Precopy, VMRunning, 7, opts, t0)
	if err != nil {
		t.Fatal(err)
	}
	r.State = Transferring
	if r.canRetry(t0.Add(time.Second)) {
		t.Fatal("a record without max attempts would be retried")
	}
	r.Options.MaxAttempts = 2
	if !r.canRetry(t0.Add(time.Second)) {
		t.Fatal("attempt 1 of 2 is not retried")
	}
	r.CancelRequested = true
	if r.canRetry(t0.Add(time.Second)) {
		t.Fatal("a cancelled migration would be retried")
	}
}
