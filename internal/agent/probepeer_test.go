package agent

import "testing"

func TestProbePeer(t *testing.T) {
	for _, tc := range []struct {
		addr, own string
		ok        bool
	}{
		{"198.18.0.2:4000", "198.18.0.1", true},
		{"127.0.0.1:4000", "127.0.0.1", true},
		{"127.0.0.1:4000", "198.18.0.1", false},
		{"[::1]:22", "198.18.0.1", false},
		{"0.0.0.0:80", "198.18.0.1", false},
		{"224.0.0.1:80", "198.18.0.1", false},
		{"255.255.255.255:80", "198.18.0.1", false},
		{"example.com:80", "198.18.0.1", false},
		{"198.18.0.2:0", "198.18.0.1", false},
		{"198.18.0.2", "198.18.0.1", false},
	} {
		if err := probePeer(tc.addr, tc.own); (err == nil) != tc.ok {
			t.Errorf("probePeer(%q, own %q) = %v, want ok=%v", tc.addr, tc.own, err, tc.ok)
		}
	}
}
