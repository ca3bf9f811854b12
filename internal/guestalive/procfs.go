package guestalive

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// VCPUTicks sums utime+stime (clock ticks) of the vCPU threads of QEMU
// process pid, found under procRoot (/proc): QEMU started with
// -name debug-threads=on names them "CPU <n>/TCG" or "CPU <n>/KVM".
func VCPUTicks(procRoot string, pid int) (uint64, int, error) {
	tasks, err := os.ReadDir(filepath.Join(procRoot, strconv.Itoa(pid), "task"))
	if err != nil {
		return 0, 0, fmt.Errorf("vCPU threads of QEMU %d: %w", pid, err)
	}
	var sum uint64
	n := 0
	for _, t := range tasks {
		dir := filepath.Join(procRoot, strconv.Itoa(pid), "task", t.Name())
		comm, err := os.ReadFile(filepath.Join(dir, "comm"))
		if err != nil || !strings.HasPrefix(string(comm), "CPU ") {
			continue // a thread that ended, or not a vCPU
		}
		stat, err := os.ReadFile(filepath.Join(dir, "stat"))
		if err != nil {
			continue
		}
		ticks, err := statTicks(stat)
		if err != nil {
			return 0, 0, fmt.Errorf("%s: %w", filepath.Join(dir, "stat"), err)
		}
		sum += ticks
		n++
	}
	if n == 0 {
		return 0, 0, fmt.Errorf("QEMU %d has no vCPU threads named \"CPU n/...\" (started without -name debug-threads=on?)", pid)
	}
	return sum, n, nil
}

// statTicks is utime+stime of a /proc/.../stat line (fields 14 and 15;
// the command, field 2, may hold spaces and parentheses).
func statTicks(stat []byte) (uint64, error) {
	i := bytes.LastIndexByte(stat, ')')
	if i < 0 {
		return 0, fmt.Errorf("no ')' in stat line")
	}
	f := strings.Fields(string(stat[i+1:]))
	// f[0] is field 3 (state): utime is field 14 = f[11], stime f[12].
	if len(f) < 13 {
		return 0, fmt.Errorf("stat line has %d fields after the command, want at least 13", len(f))
	}
	u, err := strconv.ParseUint(f[11], 10, 64)
	if err != nil {
		return 0, fmt.Errorf("utime: %w", err)
	}
	s, err := strconv.ParseUint(f[12], 10, 64)
	if err != nil {
		return 0, fmt.Errorf("stime: %w", err)
	}
	return u + s, nil
}
