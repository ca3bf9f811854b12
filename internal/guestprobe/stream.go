// Package guestprobe measures a running test guest from the outside the way
// its users would see it: a TCP client on the guest's counter stream (port
// 7000) that checks every line and times the gaps between them, and the
// guest's GET /status. The demo, the end-to-end tests and the benchmark all
// use it.
package guestprobe

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/ferryvm/ferry/guest/guestapi"
)

// StreamStats is what a Stream has seen so far.
type StreamStats struct {
	// Lines is the number of counter lines received.
	Lines int64
	// Last is the last counter value (-1 before the first line).
	Last int64
	// Missing and Repeated count counters that skipped ahead or went back;
	// Garbled counts lines that were not a number.
	Missing, Repeated, Garbled int64
	// MaxGap is the longest time between two consecutive lines.
	MaxGap time.Duration
	// Err is the read error that ended the stream (nil while it runs or
	// after a clean Close).
	Err error
	// Ended is true once the stream stopped.
	Ended bool
}

// Broken reports whether the stream lost, repeated or garbled a counter, or
// ended with an error.
func (s StreamStats) Broken() bool {
	return s.Missing > 0 || s.Repeated > 0 || s.Garbled > 0 || s.Err != nil
}

// Gap is one silence on the stream of at least GapRecordMin.
type Gap struct {
	// End is when the line that ended the silence arrived.
	End time.Time
	// Length is the silence.
	Length time.Duration
}

// GapRecordMin is the shortest silence Gaps keeps; MaxGaps bounds how many
// it keeps (the newest ones).
const (
	GapRecordMin = 100 * time.Millisecond
	MaxGaps      = 256
)

// Stream reads the guest's counter stream over one TCP connection.
type Stream struct {
	conn net.Conn

	mu        sync.Mutex
	st        StreamStats
	lastAt    time.Time
	windowGap time.Duration
	gaps      []Gap
	closed    bool
	done      chan struct{}
}

// NewStream starts reading conn (already connected to the guest's port 7000).
func NewStream(conn net.Conn) *Stream {
	s := &Stream{conn: conn, done: make(chan struct{})}
	s.st.Last = -1
	go s.read()
	return s
}

// Dial connects with dial (e.g. a namespace-aware dialer) and starts reading.
func Dial(ctx context.Context, dial func(ctx context.Context, network, addr string) (net.Conn, error), ip string) (*Stream, error) {
	conn, err := dial(ctx, "tcp", net.JoinHostPort(ip, "7000"))
	if err != nil {
		return nil, fmt.Errorf("connect to the guest's stream %s:7000: %w", ip, err)
	}
	return NewStream(conn), nil
}

func (s *Stream) read() {
	defer close(s.done)
	sc := bufio.NewScanner(s.conn)
	for sc.Scan() {
		now := time.Now()
		n, err := strconv.ParseInt(sc.Text(), 10, 64)
		s.mu.Lock()
		if !s.lastAt.IsZero() {
			gap := now.Sub(s.lastAt)
			s.st.MaxGap = max(s.st.MaxGap, gap)
			s.windowGap = max(s.windowGap, gap)
			if gap >= GapRecordMin {
				if len(s.gaps) == MaxGaps {
					s.gaps = append(s.gaps[:0], s.gaps[1:]...) // keep the newest
				}
				s.gaps = append(s.gaps, Gap{End: now, Length: gap})
			}
		}
		s.lastAt = now
		s.st.Lines++
		switch {
		case err != nil:
			s.st.Garbled++
		case n == s.st.Last+1:
		case n > s.st.Last+1:
			s.st.Missing += n - s.st.Last - 1
		default:
			s.st.Repeated++
		}
		if err == nil {
			s.st.Last = n
		}
		s.mu.Unlock()
	}
	s.mu.Lock()
	s.st.Ended = true
	if !s.closed {
		s.st.Err = sc.Err()
		if s.st.Err == nil {
			s.st.Err = fmt.Errorf("the guest closed the stream after counter %d", s.st.Last)
		}
	}
	s.mu.Unlock()
}

// Stats returns a snapshot. MaxGap includes the time since the last line,
// so a stream that stalled right now shows it.
func (s *Stream) Stats() StreamStats {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := s.st
	if !s.lastAt.IsZero() && !st.Ended {
		st.MaxGap = max(st.MaxGap, time.Since(s.lastAt))
	}
	return st
}

// WindowGap returns the longest gap since the previous WindowGap call (or
// the start) and starts a new window: call it before and after an event to
// get the gap the event caused.
func (s *Stream) WindowGap() time.Duration {
	s.mu.Lock()
	defer s.mu.Unlock()
	g := s.windowGap
	if !s.lastAt.IsZero() && !s.st.Ended {
		g = max(g, time.Since(s.lastAt))
	}
	s.windowGap = 0
	return g
}

// Gaps returns the silences of at least GapRecordMin that ended at or
// after since, oldest first: where in a migration the client waited.
func (s *Stream) Gaps(since time.Time) []Gap {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []Gap
	for _, g := range s.gaps {
		if !g.End.Before(since) {
			out = append(out, g)
		}
	}
	return out
}

// WaitLines waits until at least n lines arrived.
func (s *Stream) WaitLines(ctx context.Context, n int64) error {
	for {
		st := s.Stats()
		if st.Lines >= n {
			return nil
		}
		if st.Ended {
			return fmt.Errorf("stream ended after %d lines: %v", st.Lines, st.Err)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for %d stream lines (have %d): %w", n, st.Lines, ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// Close ends the stream from the client side and returns the final stats.
func (s *Stream) Close() StreamStats {
	s.mu.Lock()
	s.closed = true
	s.mu.Unlock()
	_ = s.conn.Close()
	<-s.done
	return s.Stats()
}

// Status is the guest's GET /status (its contract lives in guestapi).
type Status = guestapi.Status

// GetStatus fetches http://ip:8080/status with client.
func GetStatus(ctx context.Context, client *http.Client, ip string) (Status, error) {
	var st Status
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+net.JoinHostPort(ip, strconv.Itoa(guestapi.HTTPPort))+"/status", nil)
	if err != nil {
		return st, err
	}
	resp, err := client.Do(req)
	if err != nil {
		return st, fmt.Errorf("GET /status from %s: %w", ip, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return st, fmt.Errorf("GET /status from %s: %s", ip, resp.Status)
	}
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		return st, fmt.Errorf("decode /status from %s: %w", ip, err)
	}
	return st, nil
}

// WaitStatus polls GetStatus until it answers or timeout passes.
func WaitStatus(ctx context.Context, client *http.Client, ip string, timeout time.Duration) (Status, error) {
	deadline := time.Now().Add(timeout)
	for {
		cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		st, err := GetStatus(cctx, client, ip)
		cancel()
		if err == nil {
			return st, nil
		}
		if time.Now().After(deadline) {
			return st, fmt.Errorf("guest %s did not answer within %s: %w", ip, timeout, err)
		}
		select {
		case <-ctx.Done():
			return st, ctx.Err()
		case <-time.After(300 * time.Millisecond):
		}
	}
}
