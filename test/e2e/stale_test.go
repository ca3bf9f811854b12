package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
)

// A test binary killed before its cleanups ran (a CI timeout, ^C twice)
// leaves its dev clusters behind: servers, agents, QEMUs and namespaces.
// Each cluster directory therefore names its owner (the test process, by
// PID and start time), and the next run's TestMain tears down every cluster
// whose owner is gone — by the state the cluster recorded and its exact
// prefix, never by process name.

// ownerFile, in a cluster directory, names the test process that made it.
const ownerFile = "owner.json"

// clusterDirRE matches the directories upClusterBin and upInstalled make
// and captures the cluster's prefix.
var clusterDirRE = regexp.MustCompile(`^ferry-e2e-(f[ep][0-9a-f]{6})-[0-9]+$`)

// owner identifies a process across PID reuse.
type owner struct {
	PID   int    `json:"pid"`
	Start uint64 `json:"start"` // field 22 of /proc/PID/stat
}

// procStart reads a process's start time in clock ticks after boot; a
// zombie (exited, not yet waited for) counts as gone.
func procStart(pid int) (uint64, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, err
	}
	// The command name (field 2) may hold spaces and parentheses: the
	// fields after it start after the last ')'.
	i := strings.LastIndexByte(string(b), ')')
	if i < 0 {
		return 0, fmt.Errorf("/proc/%d/stat: no command field", pid)
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 20 {
		return 0, fmt.Errorf("/proc/%d/stat: %d fields after the command", pid, len(f))
	}
	if f[0] == "Z" {
		return 0, fmt.Errorf("process %d exited (zombie)", pid)
	}
	return strconv.ParseUint(f[19], 10, 64) // field 22 overall
}

// markOwner records this test process as the owner of a cluster directory.
func markOwner(dir string) error {
	pid := os.Getpid()
	start, err := procStart(pid)
	if err != nil {
		return fmt.Errorf("mark cluster owner: %w", err)
	}
	b, err := json.Marshal(owner{PID: pid, Start: start})
	if err != nil {
		return fmt.Errorf("mark cluster owner: %w", err)
	}
	return os.WriteFile(filepath.Join(dir, ownerFile), b, 0o600)
}

// ownerAlive reports whether the process named in dir's owner file still
// runs. A directory without a readable owner file is treated as alive
// (made by an older harness, or still being set up): it is left alone.
func ownerAlive(dir string) bool {
	b, err := os.ReadFile(filepath.Join(dir, ownerFile))
	if err != nil {
		return true
	}
	var o owner
	if err := json.Unmarshal(b, &o); err != nil || o.PID <= 0 {
		return true
	}
	start, err := procStart(o.PID)
	return err == nil && start == o.Start
}

// reapStaleClusters tears down the clusters of test processes that died
// before their cleanups ran and returns what it removed. bin is the ferry
// binary whose `dev cluster down` does the work.
func reapStaleClusters(bin string) ([]string, error) {
	entries, err := os.ReadDir(os.TempDir())
	if err != nil {
		return nil, fmt.Errorf("reap stale clusters: %w", err)
	}
	var reaped []string
	var errs []string
	for _, e := range entries {
		m := clusterDirRE.FindStringSubmatch(e.Name())
		if m == nil || !e.IsDir() {
			continue
		}
		dir := filepath.Join(os.TempDir(), e.Name())
		if ownerAlive(dir) {
			continue
		}
		out, err := exec.Command(bin, "dev", "cluster", "down", "--dir", dir, "--prefix", m[1]).CombinedOutput()
		if err != nil {
			errs = append(errs, fmt.Sprintf("%s: %v: %s", dir, err, strings.TrimSpace(string(out))))
			continue
		}
		if err := os.RemoveAll(dir); err != nil {
			errs = append(errs, err.Error())
			continue
		}
		reaped = append(reaped, dir)
	}
	if len(errs) > 0 {
		return reaped, fmt.Errorf("reap stale clusters: %s", strings.Join(errs, "; "))
	}
	return reaped, nil
}
