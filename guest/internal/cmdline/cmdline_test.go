package cmdline

import (
	"net/netip"
	"reflect"
	"strings"
	"testing"
)

func TestSplit(t *testing.T) {
	got := Split(`console=ttyS0  foo="a b" "x y=z"` + "\n")
	want := []string{"console=ttyS0", "foo=a b", "x y=z"}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("Split = %q, want %q", got, want)
	}
	if got := Split("   "); len(got) != 0 {
		t.Fatalf("Split(blank) = %q", got)
	}
}

func TestParseFull(t *testing.T) {
	c := Parse("BOOT_IMAGE=/vmlinuz console=ttyS0 ferry.ip=10.0.2.15/24 ferry.gw=10.0.2.2 ferry.dirty=64:16 ferry.disk=256 ferry.marker=0badc0de quiet\n")
	if len(c.Errors) != 0 {
		t.Fatalf("errors: %v", c.Errors)
	}
	if c.IP != netip.MustParsePrefix("10.0.2.15/24") {
		t.Errorf("IP = %v", c.IP)
	}
	if c.IP.Addr() != netip.MustParseAddr("10.0.2.15") {
		t.Errorf("host bits lost: %v", c.IP.Addr())
	}
	if c.Gateway != netip.MustParseAddr("10.0.2.2") {
		t.Errorf("GW = %v", c.Gateway)
	}
	if c.WSSMiB != 64 || c.RateMiBps != 16 {
		t.Errorf("dirty = %d:%d", c.WSSMiB, c.RateMiBps)
	}
	if c.DiskKiBps != 256 {
		t.Errorf("disk = %d", c.DiskKiBps)
	}
	if c.MarkerSeed != "0badc0de" {
		t.Errorf("marker seed = %q", c.MarkerSeed)
	}
}

func TestParseEmpty(t *testing.T) {
	c := Parse("console=ttyS0")
	if c.IP.IsValid() || c.Gateway.IsValid() || c.WSSMiB != 0 || c.RateMiBps != 0 || c.DiskKiBps != 0 || len(c.Errors) != 0 {
		t.Fatalf("unexpected config %+v", c)
	}
}

func TestParseLastWins(t *testing.T) {
	c := Parse("ferry.disk=1 ferry.disk=2")
	if c.DiskKiBps != 2 {
		t.Fatalf("disk = %d", c.DiskKiBps)
	}
}

func TestParseErrors(t *testing.T) {
	for _, tc := range []struct{ line, wantErr string }{
		{"ferry.ip=10.0.2.15", "ferry.ip"},
		{"ferry.ip=10.0.2.300/24", "ferry.ip"},
		{"ferry.ip=fe80::1/64", "ferry.ip"},
		{"ferry.ip=10.0.0.1/0", "ferry.ip"},
		{"ferry.ip=10.0.0.1/33", "ferry.ip"},
		{"ferry.gw=::1", "ferry.gw"},
		{"ferry.gw=nope", "ferry.gw"},
		{"ferry.dirty=64", "ferry.dirty"},
		{"ferry.dirty=64:-1", "ferry.dirty"},
		{"ferry.dirty=x:1", "ferry.dirty"},
		{"ferry.dirty=0:5", "ferry.dirty"},
		{"ferry.dirty=99999999:1", "ferry.dirty"},
		{"ferry.disk=1.5", "ferry.disk"},
		{"ferry.disk=", "ferry.disk"},
		{"ferry.marker=", "ferry.marker"},
		{"ferry.marker=XYZ", "ferry.marker"},
		{"ferry.bogus=1", "unknown"},
	} {
		c := Parse(tc.line)
		if len(c.Errors) != 1 || !strings.Contains(c.Errors[0], tc.wantErr) {
			t.Errorf("Parse(%q).Errors = %q, want one mentioning %q", tc.line, c.Errors, tc.wantErr)
		}
	}
}

func TestParseDirtyRateZero(t *testing.T) {
	w, r, err := ParseDirty("128:0")
	if err != nil || w != 128 || r != 0 {
		t.Fatalf("ParseDirty = %d %d %v", w, r, err)
	}
	w, r, err = ParseDirty("0:0")
	if err != nil || w != 0 || r != 0 {
		t.Fatalf("ParseDirty(0:0) = %d %d %v", w, r, err)
	}
}
