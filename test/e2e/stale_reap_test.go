package e2e

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"

	"github.com/ferryvm/ferry/internal/devcluster"
	"github.com/ferryvm/ferry/internal/netnsutil"
)

// TestStaleClusterIsReaped: a cluster whose owning test process died
// without cleaning up (its owner file names a process that is gone) is torn
// down by the next run's reaper — its daemons stopped, its namespaces gone,
// its directory removed — while a cluster whose owner lives is left alone.
func TestStaleClusterIsReaped(t *testing.T) {
	live := upCluster(t, 1) // owned by this process: must survive the reap

	b := make([]byte, 3)
	_, _ = rand.Read(b)
	prefix := "fe" + hex.EncodeToString(b)
	dir, err := os.MkdirTemp("", "ferry-e2e-"+prefix+"-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { // in case the reaper under test fails
		_ = exec.Command(ferryBin, "dev", "cluster", "down", "--dir", dir, "--prefix", prefix).Run()
		os.RemoveAll(dir)
	})
	if out, err := exec.Command(ferryBin, "dev", "cluster", "up", "--hosts", "1", "--dir", dir, "--prefix", prefix,
		"--accel", "tcg", "--allow-path", guestDir).CombinedOutput(); err != nil {
		t.Fatalf("dev cluster up: %v\n%s", err, out)
	}
	c, err := devcluster.Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	procs, err := c.Processes()
	if err != nil || len(procs) == 0 {
		t.Fatalf("stale cluster's processes: %v (%d)", err, len(procs))
	}

	// The owner: a process that ran and is gone.
	gone := exec.Command("sleep", "30")
	if err := gone.Start(); err != nil {
		t.Fatal(err)
	}
	start, err := procStart(gone.Process.Pid)
	if err != nil {
		t.Fatal(err)
	}
	_ = gone.Process.Kill()
	_ = gone.Wait()
	ob, _ := json.Marshal(owner{PID: gone.Process.Pid, Start: start})
	if err := os.WriteFile(filepath.Join(dir, ownerFile), ob, 0o600); err != nil {
		t.Fatal(err)
	}

	reaped, err := reapStaleClusters(ferryBin)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(reaped, dir) {
		t.Fatalf("reaped %v, want %s among them", reaped, dir)
	}
	if slices.Contains(reaped, live.dir) {
		t.Fatalf("the reaper tore down %s, whose owner (this test) runs", live.dir)
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Errorf("stale cluster directory still there: %v", err)
	}
	for _, p := range procs {
		if st, err := procStart(p.PID); err == nil && st == p.StartTime {
			t.Errorf("stale cluster's process %d (%s) still runs", p.PID, strings.Join(p.Argv, " "))
			_ = syscall.Kill(p.PID, syscall.SIGKILL)
		}
	}
	nss, _ := netnsutil.List()
	for _, ns := range nss {
		if strings.HasPrefix(ns, prefix+"-") {
			t.Errorf("stale namespace %s still there", ns)
		}
	}
	if _, err := os.Stat(live.dir); err != nil {
		t.Errorf("live cluster's directory: %v", err)
	}
	if nss, _ := netnsutil.List(); !slices.ContainsFunc(nss, func(n string) bool { return strings.HasPrefix(n, live.prefix+"-") }) {
		t.Errorf("live cluster's namespaces were removed")
	}
}
