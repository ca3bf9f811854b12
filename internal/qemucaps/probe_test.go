package qemucaps

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestProbeRealQEMU probes the installed QEMU (it starts one: not in -short
// runs), then again from the cache, and once more after the cache is made
// stale by a different modification time.
func TestProbeRealQEMU(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: skipping a test that starts QEMU")
	}
	bin, err := exec.LookPath("qemu-system-x86_64")
	if err != nil {
		t.Fatalf("qemu-system-x86_64 not found (%v): install it with hack/deps.sh", err)
	}
	cache := filepath.Join(t.TempDir(), "caps.json")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	r, err := Probe(ctx, bin, cache)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("probed QEMU %s (%s) in %v: %d machine types, %d CPU models, %d migration capabilities, %d parameters, devices %v",
		r.Caps.Version, r.Caps.Version.Package, r.Took, len(r.Caps.Machines), len(r.Caps.CPUModels), len(r.Caps.MigrationCapabilities), len(r.Caps.MigrationParameters), r.Caps.Devices)
	if r.Cached {
		t.Fatal("first probe came from an empty cache")
	}
	if r.Caps.Version.Major < 7 || len(r.Caps.Machines) == 0 || len(r.Caps.CPUModels) == 0 || !r.Caps.HasCapability("postcopy-ram") || !r.Caps.HasParameter("max-bandwidth") {
		t.Fatalf("implausible caps: %+v", r.Caps)
	}
	if q35, err := r.Caps.ResolveMachine("q35"); err != nil || !strings.HasPrefix(q35, "pc-q35-") {
		t.Fatalf("q35 -> %q, %v", q35, err)
	}
	again, err := Probe(ctx, bin, cache)
	if err != nil || !again.Cached || again.Caps.Version != r.Caps.Version || len(again.Caps.CPUModels) != len(r.Caps.CPUModels) {
		t.Fatalf("second probe: cached=%v %v", again.Cached, err)
	}
	t.Logf("cached probe took %v", again.Took)

	// A copy of the binary elsewhere is another binary: probed afresh.
	cp := filepath.Join(t.TempDir(), "qemu-copy")
	b, err := os.ReadFile(bin)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(cp, b, 0o755); err != nil {
		t.Fatal(err)
	}
	third, err := Probe(ctx, cp, cache)
	if err != nil || third.Cached || third.Caps.Binary != cp {
		t.Fatalf("probe of a copy: cached=%v binary=%s %v", third.Cached, third.Caps.Binary, err)
	}
}
