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
