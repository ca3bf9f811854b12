package migration

import (
	"bufio"
	"errors"
	"os"
	"strings"
	"testing"
)

// TestMachineScript runs the scenarios in testdata/machine.txt.
func TestMachineScript(t *testing.T) {
	f, err := os.Open("testdata/machine.txt")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	var name string
	var cold bool
	state := Pending
	line := 0
	scenarios := 0
	for sc.Scan() {
		line++
		text := strings.TrimSpace(sc.Text())
		switch {
		case text == "" || strings.HasPrefix(text, "#"):
			continue
		case !strings.Contains(text, "->"):
			name, cold, state = text, strings.HasPrefix(text, "cold"), Pending
			scenarios++
			continue
		}
		parts := strings.SplitN(text, "->", 2)
		ev, want := Event(strings.TrimSpace(parts[0])), strings.TrimSpace(parts[1])
		next, err := Step(state, ev, cold)
		if want == "error" {
			if !errors.Is(err, ErrOutOfOrder) || next != state {
				t.Errorf("line %d (%s): %s in %s = %s, %v; want ErrOutOfOrder and no change", line, name, ev, state, next, err)
			}
			continue
		}
		if err != nil || string(next) != want {
			t.Fatalf("line %d (%s): %s in %s = %s, %v; want %s", line, name, ev, state, next, err, want)
		}
		state = next
	}
	if scenarios < 7 {
		t.Fatalf("read %d scenarios, want at least 7", scenarios)
	}
}

func TestStatePredicates(t *testing.T) {
	for _, s := range []State{Pending, Preparing, Transferring, Switchover, Stopping, Copying} {
		if !s.Cancellable() || s.Committed() || s.Terminal() || s.Status() != "running" {
			t.Errorf("%s: cancellable %v committed %v terminal %v", s, s.Cancellable(), s.Committed(), s.Terminal())
		}
	}
	for _, s := range []State{Resuming, Starting, Cleanup} {
		if s.Cancellable() || !s.Committed() {
			t.Errorf("%s must be committed and not cancellable", s)
		}
	}
	for _, s := range []State{Completed, Failed, Cancelled} {
		if !s.Terminal() || s.Status() != string(s) {
			t.Errorf("%s must be terminal", s)
		}
	}
}

func TestSourceAndIncoming(t *testing.T) {
	s := SrcIdle
	for _, ev := range []SourceEvent{SrcEvStart, SrcEvPaused, SrcEvContinue, SrcEvCompleted, SrcEvFinish} {
		var err error
		if s, err = StepSource(s, ev); err != nil {
			t.Fatal(err)
		}
	}
	if s != SrcFinished {
		t.Fatalf("source ended in %s", s)
	}
	if _, err := StepSource(SrcCompleted, SrcEvCancel); !errors.Is(err, ErrOutOfOrder) {
		t.Fatal("a completed source must not be cancellable (it must never run again)")
	}
	if _, err := StepSource(SrcIdle, SrcEvContinue); !errors.Is(err, ErrOutOfOrder) {
		t.Fatal("continue before start accepted")
	}
	in := InNone
	for _, ev := range []IncomingEvent{InEvListen, InEvArm, InEvResumed, InEvAdopt} {
		var err error
		if in, err = StepIncoming(in, ev); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := StepIncoming(InRunning, InEvAbort); !errors.Is(err, ErrOutOfOrder) {
		t.Fatal("a running destination must not be abortable")
	}
	if _, err := StepIncoming(InListening, InEvResumed); !errors.Is(err, ErrOutOfOrder) {
		t.Fatal("resume without arm accepted: the destination could run before the owner CAS")
	}
}
