// Package stream implements the guest's counter stream: every TCP client
// gets its own counter and receives "0\n1\n2\n..." one line per Interval,
// paced by a ticker. No number is ever skipped: when the sender falls behind
// (guest paused, migration downtime) the next line is simply sent late and
// pacing resumes from there; the backlog is not burst out.
package stream

import (
	"errors"
	"io"
	"net"
	"strconv"
	"sync/atomic"
	"time"
)

// Server serves counter streams.
type Server struct {
	Interval time.Duration
	// Logf, if set, reports accept errors.
	Logf func(format string, args ...any)

	clients atomic.Int64
	total   atomic.Uint64
}

// New returns a server pacing lines at interval.
func New(interval time.Duration) *Server { return &Server{Interval: interval} }

// Clients returns the number of connected clients.
func (s *Server) Clients() int64 { return s.clients.Load() }

// Total returns the number of connections accepted so far.
func (s *Server) Total() uint64 { return s.total.Load() }

// Serve accepts connections on l until it is closed.
func (s *Server) Serve(l net.Listener) error {
	var backoff time.Duration
	for {
		c, err := l.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return err
			}
			// e.g. EMFILE: back off and keep serving
			if s.Logf != nil {
				s.Logf("stream: accept: %v", err)
			}
			if backoff < 5*time.Millisecond {
				backoff = 5 * time.Millisecond
			} else if backoff < time.Second {
				backoff *= 2
			}
			time.Sleep(backoff)
			continue
		}
		backoff = 0
		s.total.Add(1)
		s.clients.Add(1)
		go s.handle(c)
	}
}

func (s *Server) handle(c net.Conn) {
	defer s.clients.Add(-1)
	defer c.Close()
	if tc, ok := c.(*net.TCPConn); ok {
		tc.SetNoDelay(true)
	}
	// Notice the client closing even while we are between ticks.
	closed := make(chan struct{})
	go func() {
		io.Copy(io.Discard, c)
		close(closed)
		c.Close()
	}()
	t := time.NewTicker(s.Interval)
	defer t.Stop()
	buf := make([]byte, 0, 24)
	for n := uint64(0); ; n++ {
		buf = strconv.AppendUint(buf[:0], n, 10)
		buf = append(buf, '\n')
		if _, err := c.Write(buf); err != nil {
			return
		}
		select {
		case <-t.C:
		case <-closed:
			return
		}
	}
}
