package qemu

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	ferryv1 "github.com/ferryvm/ferry/gen/ferry/v1"
)

// testCgroupParent makes a cgroup v2 directory for one test and removes it
// (and any ferry-vm-* child left) at cleanup.
func testCgroupParent(t *testing.T) string {
	t.Helper()
	mount, err := Cgroup2Mount()
	if err != nil {
		t.Fatalf("cgroup v2: %v", err)
	}
	parent := filepath.Join(mount, fmt.Sprintf("ferry-qemu-test-%d", os.Getpid()))
	t.Cleanup(func() {
		kids, _ := filepath.Glob(filepath.Join(parent, cgroupPrefix+"*"))
		for _, k := range kids {
			t.Errorf("cgroup %s left behind", k)
			_ = os.WriteFile(filepath.Join(k, "cgroup.kill"), []byte("1"), 0)
			_ = removeCgroup(k)
		}
		if err := os.Remove(parent); err != nil && !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("remove test cgroup: %v", err)
		}
	})
	return parent
}

func TestCgroup2Mount(t *testing.T) {
	m, err := Cgroup2Mount()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(m, "cgroup.procs")); err != nil {
		t.Fatalf("cgroup v2 mount %s has no cgroup.procs: %v", m, err)
	}
}

// A QEMU started with ScopeCgroup runs in its own cgroup under the
// parent, not in ours; Attach finds that cgroup again, and the cgroup is
// removed once QEMU is killed.
func TestStartInOwnCgroup(t *testing.T) {
	kernel := needKernel(t)
	parent := testCgroupParent(t)
	dir := vmDir(t)
	cfg := Config{
		Spec:  &ferryv1.VMSpec{Name: "cg-vm", Vcpus: 1, MemoryMib: 128, Boot: &ferryv1.BootSpec{Kernel: kernel}},
		Accel: "tcg", Paths: PathsFor(dir), Scope: ScopeCgroup, CgroupParent: parent,
	}
	p := startVM(t, cfg)
	cg := procVMCgroup(p.PID())
	if filepath.Dir(cg) != parent || !strings.HasPrefix(filepath.Base(cg), "ferry-vm-cg-vm-") {
		t.Fatalf("QEMU pid %d runs in cgroup %q, want %s/ferry-vm-cg-vm-N", p.PID(), cg, parent)
	}
	if self := procVMCgroup(os.Getpid()); self != "" {
		t.Fatalf("the test process itself is in %s", self)
	}
	procs, err := os.ReadFile(filepath.Join(cg, "cgroup.procs"))
	if err != nil || strings.TrimSpace(string(procs)) != fmt.Sprint(p.PID()) {
		t.Fatalf("%s/cgroup.procs = %q, %v; want only QEMU's pid %d", cg, procs, err, p.PID())
	}
	a, err := Attach(cfg.Paths)
	if err != nil {
		t.Fatal(err)
	}
	if a.cgroup != cg {
		t.Fatalf("Attach found cgroup %q, want %q", a.cgroup, cg)
	}
	if err := p.Kill(); err != nil {
		t.Fatal(err)
	}
	<-a.Exited()
	if _, err := os.Stat(cg); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("cgroup %s still there after QEMU was killed: %v", cg, err)
	}
}

// A start that fails before QEMU runs removes the cgroup it made (undo).
func TestStartInCgroupFailureRemovesIt(t *testing.T) {
	parent := testCgroupParent(t)
	dir := vmDir(t)
	cfg := Config{Spec: kernelSpec("nobin"), Accel: "tcg", Paths: PathsFor(dir), Scope: ScopeCgroup, CgroupParent: parent}
	if _, err := Start(t.Context(), filepath.Join(dir, "no-such-qemu"), cfg); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("Start with a missing binary: %v", err)
	}
	if kids, _ := filepath.Glob(filepath.Join(parent, cgroupPrefix+"*")); len(kids) != 0 {
		t.Fatalf("failed start left cgroups %v", kids)
	}
}

// A parent that is not a cgroup directory is refused with its name.
func TestStartInCgroupBadParent(t *testing.T) {
	dir := vmDir(t)
	bad := filepath.Join(dir, "not-a-cgroup")
	cfg := Config{Spec: kernelSpec("bad"), Accel: "tcg", Paths: PathsFor(dir), Scope: ScopeCgroup, CgroupParent: bad}
	_, err := Start(t.Context(), "qemu-system-x86_64", cfg)
	if err == nil || !strings.Contains(err.Error(), bad) || !strings.Contains(err.Error(), "not a cgroup v2 directory") {
		t.Fatalf("Start under %s: %v, want a refusal naming it", bad, err)
	}
}

// TestOwnCgroupOfSelf: a process in the caller's own cgroup has no cgroup
// of its own to join.
func TestOwnCgroupOfSelf(t *testing.T) {
	if got := OwnCgroupOf(os.Getpid()); got != "" {
		t.Errorf("OwnCgroupOf(self) = %q, want \"\"", got)
	}
	if got := OwnCgroupOf(-1); got != "" {
		t.Errorf("OwnCgroupOf(-1) = %q, want \"\"", got)
	}
}
