package etcdembed

import "testing"

func TestStablePortsAvoidTheEphemeralRange(t *testing.T) {
	for _, c := range []struct{ lo, hi, first, last int }{
		{32768, 60999, 10000, 32767}, // Linux's default
		{1024, 60999, 61000, 65535},  // no room below: above
		{1024, 65000, 1, 0},          // no room either side: none
	} {
		first, last := stablePorts(c.lo, c.hi)
		if first != c.first || last != c.last {
			t.Errorf("stablePorts(%d, %d) = %d..%d, want %d..%d", c.lo, c.hi, first, last, c.first, c.last)
		}
	}
	lo, hi := ephemeralRange()
	for range 20 {
		p, err := freePort()
		if err != nil {
			t.Fatal(err)
		}
		if first, last := stablePorts(lo, hi); last >= first && (p < first || p > last) {
			t.Fatalf("freePort = %d, outside %d..%d (ephemeral range %d-%d)", p, first, last, lo, hi)
		}
	}
}
