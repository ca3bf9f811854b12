package guestalive

import (
	"bufio"
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

// TapRxPackets sums the receive packet counters of the named interfaces in
// a /proc/net/dev table (the caller's network namespace): what a tap
// receives on the host is what the guest's NIC sent.
func TapRxPackets(netDev string, taps []string) (uint64, error) {
	f, err := os.Open(netDev)
	if err != nil {
		return 0, fmt.Errorf("NIC counters: %w", err)
	}
	defer f.Close()
	want := map[string]bool{}
	for _, t := range taps {
		want[t] = true
	}
	var sum uint64
	found := 0
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		name, rest, ok := strings.Cut(sc.Text(), ":")
		if !ok || !want[strings.TrimSpace(name)] {
			continue
		}
		fields := strings.Fields(rest)
		if len(fields) < 2 {
			return 0, fmt.Errorf("%s: short line for %s", netDev, strings.TrimSpace(name))
		}
		n, err := strconv.ParseUint(fields[1], 10, 64)
		if err != nil {
			return 0, fmt.Errorf("%s: rx packets of %s: %w", netDev, strings.TrimSpace(name), err)
		}
		sum += n
		found++
	}
	if err := sc.Err(); err != nil {
		return 0, fmt.Errorf("%s: %w", netDev, err)
	}
	if found != len(want) {
		return 0, fmt.Errorf("%s: found %d of the taps %v", netDev, found, taps)
	}
	return sum, nil
}
