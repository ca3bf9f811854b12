package relay

import "testing"

// TestLowatFollowsRecords: the framing tracker knows how much of the
// record being received is missing however the bytes are cut — headers
// split across reads, several records in one read, empty bodies.
func TestLowatFollowsRecords(t *testing.T) {
	rec := func(n int) []byte {
		b := make([]byte, recordHeaderLen+n)
		b[0], b[1], b[2], b[3], b[4] = 23, 3, 3, byte(n>>8), byte(n)
		return b
	}
	var stream []byte
	for _, n := range []int{16406, 40, 0, 1, 300} {
		stream = append(stream, rec(n)...)
	}
	type step struct {
		cut  int // bytes passed in this read
		need int // what the record being received lacks after it
	}
	c := &lowatConn{}
	if c.need() != recordHeaderLen {
		t.Fatalf("fresh: need %d, want a header", c.need())
	}
	off := 0
	for i, s := range []step{
		{3, 2},                // half a header
		{2, 16406},            // header done: the whole body
		{1448, 16406 - 1448},  // one segment of it
		{16406 - 1448 + 2, 3}, // the body's rest and 2 bytes of the next header
		{3 + 40, 5},           // that record whole: a header next
		{5, 5},                // an empty record: another header
		{5 + 1, 5},            // a 1-byte record
		{5 + 299, 1},          // all but the last byte
		{1, 5},                // done
	} {
		c.track(stream[off : off+s.cut])
		off += s.cut
		if got := c.need(); got != s.need {
			t.Fatalf("step %d (after %d bytes): need %d, want %d", i, off, got, s.need)
		}
	}
	if off != len(stream) {
		t.Fatalf("steps covered %d of %d bytes", off, len(stream))
	}
}
