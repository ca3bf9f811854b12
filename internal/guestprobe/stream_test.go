package guestprobe

import (
	"context"
	"fmt"
	"net"
	"testing"
	"time"
)

// serve writes lines to one client, pausing before line pauseAt.
func serve(t *testing.T, lines []string, pauseAt int, pause time.Duration) net.Conn {
	t.Helper()
	a, b := net.Pipe()
	go func() {
		defer a.Close()
		for i, l := range lines {
			if i == pauseAt {
				time.Sleep(pause)
			}
			if _, err := fmt.Fprintln(a, l); err != nil {
				return
			}
			time.Sleep(time.Millisecond)
		}
	}()
	return b
}

func TestStreamCountsAndGaps(t *testing.T) {
	s := NewStream(serve(t, []string{"0", "1", "2", "3", "4", "5"}, 3, 120*time.Millisecond))
	if err := s.WaitLines(context.Background(), 6); err != nil {
		t.Fatal(err)
	}
	<-s.done
	st := s.Stats()
	if st.Lines != 6 || st.Last != 5 || st.Missing+st.Repeated+st.Garbled != 0 {
		t.Fatalf("stats = %+v", st)
	}
	if st.MaxGap < 100*time.Millisecond || st.MaxGap > time.Second {
		t.Fatalf("MaxGap = %s, want about 120ms", st.MaxGap)
	}
	if st.Err == nil || !st.Broken() {
		t.Fatal("a stream the guest closed must count as broken")
	}
}

func TestStreamDetectsLossAndRepeat(t *testing.T) {
	s := NewStream(serve(t, []string{"0", "1", "3", "3", "x", "4"}, -1, 0))
	<-s.done
	st := s.Stats()
	if st.Missing != 1 || st.Repeated != 1 || st.Garbled != 1 {
		t.Fatalf("missing %d repeated %d garbled %d, want 1 1 1", st.Missing, st.Repeated, st.Garbled)
	}
}

func TestWindowGapResets(t *testing.T) {
	s := NewStream(serve(t, []string{"0", "1", "2", "3"}, 2, 80*time.Millisecond))
	<-s.done
	if g := s.WindowGap(); g < 60*time.Millisecond {
		t.Fatalf("first window gap %s, want >= 60ms", g)
	}
	if g := s.WindowGap(); g != 0 {
		t.Fatalf("second window gap %s, want 0", g)
	}
}

func TestGapsKeepsLongSilencesWithTheirTime(t *testing.T) {
	start := time.Now()
	s := NewStream(serve(t, []string{"0", "1", "2", "3"}, 2, 150*time.Millisecond))
	<-s.done
	gs := s.Gaps(start)
	if len(gs) != 1 {
		t.Fatalf("Gaps = %v, want the one silence of 150 ms", gs)
	}
	if gs[0].Length < 140*time.Millisecond || gs[0].End.Before(start.Add(140*time.Millisecond)) {
		t.Fatalf("gap %s ending %s after start, want ≥ 140 ms ending ≥ 140 ms after start", gs[0].Length, gs[0].End.Sub(start))
	}
	if later := s.Gaps(time.Now()); len(later) != 0 {
		t.Fatalf("Gaps(now) = %v, want none", later)
	}
}
