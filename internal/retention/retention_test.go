package retention

import (
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"
)

func TestSelect(t *testing.T) {
	now := time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)
	ago := func(h int) time.Time { return now.Add(-time.Duration(h) * time.Hour) }
	items := []Item{{"a", ago(1)}, {"b", ago(50)}, {"c", ago(3)}, {"d", ago(2)}, {"e", ago(2)}}
	for _, tc := range []struct {
		name string
		p    Policy
		want []string
	}{
		{"no limits keep all", Policy{}, nil},
		{"count keeps the newest", Policy{Count: 3}, []string{"c", "b"}},
		{"age drops the old", Policy{Age: 24 * time.Hour}, []string{"b"}},
		{"both", Policy{Count: 2, Age: 150 * time.Minute}, []string{"e", "c", "b"}},
		{"ties broken by id", Policy{Count: 2}, []string{"e", "c", "b"}},
	} {
		got := Select(items, tc.p, now)
		if !slices.Equal(got, tc.want) {
			t.Errorf("%s: Select = %v, want %v", tc.name, got, tc.want)
		}
	}
	// The input order does not matter.
	rev := slices.Clone(items)
	slices.Reverse(rev)
	if a, b := Select(items, Policy{Count: 2}, now), Select(rev, Policy{Count: 2}, now); !slices.Equal(a, b) {
		t.Errorf("order-dependent: %v vs %v", a, b)
	}
}

func TestValidate(t *testing.T) {
	if err := (Policy{Count: -1}).Validate(); err == nil {
		t.Error("negative count accepted")
	}
	if err := (Policy{Age: -time.Second}).Validate(); err == nil {
		t.Error("negative age accepted")
	}
	if err := (Policy{Count: 3, Age: time.Hour}).Validate(); err != nil {
		t.Error(err)
	}
}

func TestSweepLogDirs(t *testing.T) {
	root := t.TempDir()
	now := time.Now()
	mk := func(vm, name string, age time.Duration) string {
		p := filepath.Join(root, vm, name)
		if err := os.MkdirAll(p, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(p, "qmp.log"), []byte("x"), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Chtimes(p, now.Add(-age), now.Add(-age)); err != nil {
			t.Fatal(err)
		}
		return p
	}
	keep1 := mk("vm1", "3", time.Minute)
	keep2 := mk("vm1", "2", 2*time.Minute)
	old := mk("vm1", "1", 3*time.Minute)
	stale := mk("vm2", "1", 48*time.Hour)
	removed, err := SweepLogDirs(root, Policy{Count: 2, Age: 24 * time.Hour}, now)
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(removed)
	if want := []string{old, stale}; !slices.Equal(removed, want) {
		t.Fatalf("removed %v, want %v", removed, want)
	}
	for _, p := range []string{keep1, keep2} {
		if _, err := os.Stat(p); err != nil {
			t.Errorf("kept archive %s: %v", p, err)
		}
	}
	if _, err := os.Stat(filepath.Join(root, "vm2")); !os.IsNotExist(err) {
		t.Errorf("vm2's emptied log dir still exists (%v)", err)
	}
	if r, err := SweepLogDirs(filepath.Join(root, "missing"), Policy{Count: 1}, now); err != nil || r != nil {
		t.Errorf("missing root: %v %v", r, err)
	}
}
