package agent

import (
	"bufio"
	"os"
	"runtime"
	"strconv"
	"strings"
	"syscall"

	ferryv1 "github.com/ferryvm/ferry/gen/ferry/v1"
)

// hostCapacity reads the host's CPUs and memory.
func hostCapacity() *ferryv1.HostCapacity {
	c := &ferryv1.HostCapacity{Cpus: int32(runtime.NumCPU())}
	f, err := os.Open("/proc/meminfo")
	if err != nil {
		return c
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 2 {
			continue
		}
		kb, err := strconv.ParseInt(fields[1], 10, 64)
		if err != nil {
			continue
		}
		switch fields[0] {
		case "MemTotal:":
			c.MemoryMib = kb / 1024
		case "MemAvailable:":
			c.FreeMemoryMib = kb / 1024
		}
	}
	return c
}

// diskFree is the space available to unprivileged writers in dir's file
// system (the data directory, where local disks are created); 0 when it
// cannot be read (placement then does not check disk).
func diskFree(dir string) int64 {
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err != nil {
		return 0
	}
	return int64(st.Bavail) * int64(st.Bsize)
}
