package version

import (
	"errors"
	"strings"
	"testing"
)

func TestCompatible(t *testing.T) {
	for _, c := range []struct {
		server, agent string
		ok            bool
	}{
		{"1.4.0", "1.4.2", true},
		{"1.4.0", "1.3.9", true},
		{"v1.4.0", "1.5.0", true},
		{"1.4.0", "1.2.0", false},
		{"1.4.0", "1.6.1", false},
		{"2.0.0", "1.9.0", false},
		{"1.4.0", "devel", true},
		{"devel", "1.4.0", true},
		{"1.4.0", "", true},
		{"v0.0.0-20261201121500-abcdef", "0.1.0", true},
		{"1.4.0~rc1", "1.2.0", false},
	} {
		err := Compatible(c.server, c.agent)
		if (err == nil) != c.ok {
			t.Errorf("Compatible(%q, %q) = %v, want ok %v", c.server, c.agent, err, c.ok)
		}
		if err != nil && (!errors.Is(err, ErrIncompatible) || !strings.Contains(err.Error(), c.server) || !strings.Contains(err.Error(), c.agent)) {
			t.Errorf("Compatible(%q, %q): message %q must wrap ErrIncompatible and name both versions", c.server, c.agent, err)
		}
	}
}

func TestOverrideWins(t *testing.T) {
	old := override
	t.Cleanup(func() { override = old })
	override = "1.7.3"
	if got := String(); got != "1.7.3" {
		t.Fatalf("String() with link-time override 1.7.3 = %q", got)
	}
	override = ""
	if got := Get(); got.Version == "" || got.Go == "" {
		t.Fatalf("Get() without override = %+v: want a version and the Go version", got)
	}
}
