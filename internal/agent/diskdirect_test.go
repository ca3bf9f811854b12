package agent

import (
	"os"
	"path/filepath"
	"testing"
)

// The probe writes with O_DIRECT and leaves nothing behind; a dir it cannot
// write is an error (the agent then keeps the page cache).
func TestProbeDirectIO(t *testing.T) {
	dir := t.TempDir()
	err := probeDirectIO(dir)
	t.Logf("O_DIRECT in %s: %v", dir, err)
	if left, _ := os.ReadDir(dir); len(left) != 0 {
		t.Errorf("probe left %v", left)
	}
	file := filepath.Join(dir, "file")
	if err := os.WriteFile(file, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := probeDirectIO(filepath.Join(file, "sub")); err == nil {
		t.Error("probe under a regular file succeeded")
	}
}

// TestMkDisksDirIsPrivate: a new disks directory is 0700, and an existing
// 0755 one (an older agent's) is narrowed to 0700.
func TestMkDisksDirIsPrivate(t *testing.T) {
	base := t.TempDir()
	fresh := filepath.Join(base, "vm1", "disks")
	old := filepath.Join(base, "vm2", "disks")
	if err := os.MkdirAll(old, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, d := range []string{fresh, old} {
		if err := mkDisksDir(d); err != nil {
			t.Fatal(err)
		}
		st, err := os.Stat(d)
		if err != nil {
			t.Fatal(err)
		}
		if m := st.Mode().Perm(); m != 0o700 {
			t.Errorf("%s: mode %o, want 700", d, m)
		}
	}
}
