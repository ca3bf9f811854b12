package stream

import (
	"bufio"
	"net"
	"strconv"
	"testing"
	"time"
)

func readLines(t *testing.T, c net.Conn, n int) []uint64 {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	sc := bufio.NewScanner(c)
	var out []uint64
	for len(out) < n && sc.Scan() {
		v, err := strconv.ParseUint(sc.Text(), 10, 64)
		if err != nil {
			t.Fatalf("bad line %q", sc.Text())
		}
		out = append(out, v)
	}
	if len(out) < n {
		t.Fatalf("read %d lines, want %d: %v", len(out), n, sc.Err())
	}
	return out
}

func TestStream(t *testing.T) {
	s := New(2 * time.Millisecond)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go s.Serve(l)

	c1, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t0 := time.Now()
	got := readLines(t, c1, 100)
	el := time.Since(t0)
	for i, v := range got {
		if v != uint64(i) {
			t.Fatalf("line %d = %d", i, v)
		}
	}
	// 100 lines, first immediate: >= 99 intervals
	if el < 190*time.Millisecond {
		t.Fatalf("100 lines in %v: not paced", el)
	}
	c2, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	if got := readLines(t, c2, 3); got[0] != 0 || got[2] != 2 {
		t.Fatalf("second client got %v", got)
	}
	if n := s.Clients(); n != 2 {
		t.Fatalf("clients = %d", n)
	}
	c1.Close()
	c2.Close()
	deadline := time.Now().Add(2 * time.Second)
	for s.Clients() != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("clients = %d after close", s.Clients())
		}
		time.Sleep(time.Millisecond)
	}
	if s.Total() != 2 {
		t.Fatalf("total = %d", s.Total())
	}
}

// A client that stops reading for a while must see every number afterwards,
// with no burst of skipped values.
func TestSlowReaderNoSkip(t *testing.T) {
	s := New(time.Millisecond)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go s.Serve(l)
	c, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	time.Sleep(100 * time.Millisecond)
	for i, v := range readLines(t, c, 300) {
		if v != uint64(i) {
			t.Fatalf("line %d = %d", i, v)
		}
	}
}
