package qemu

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"
)

// procStat is the part of /proc/PID/stat that Process needs.
type procStat struct {
	state      byte   // R, S, D, Z, X, ...
	startTicks uint64 // start time in clock ticks after boot
}

// readProcStat parses /proc/PID/stat.
func readProcStat(pid int) (procStat, error) {
	data, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return procStat{}, err
	}
	// The command name (field 2) is in parentheses and may contain spaces
	// and parentheses itself: parse from the last ')'.
	i := bytes.LastIndexByte(data, ')')
	if i < 0 || i+2 >= len(data) {
		return procStat{}, fmt.Errorf("parse /proc/%d/stat: no command name", pid)
	}
	fields := strings.Fields(string(data[i+2:]))
	// fields[0] is field 3 (state); starttime is field 22.
	if len(fields) < 20 {
		return procStat{}, fmt.Errorf("parse /proc/%d/stat: %d fields", pid, len(fields)+2)
	}
	ticks, err := strconv.ParseUint(fields[19], 10, 64)
	if err != nil {
		return procStat{}, fmt.Errorf("parse /proc/%d/stat starttime: %w", pid, err)
	}
	return procStat{state: fields[0][0], startTicks: ticks}, nil
}

// live reports whether st describes a running (not zombie or dead) process.
func (st procStat) live() bool { return st.state != 'Z' && st.state != 'X' && st.state != 'x' }

// procAlive reports whether pid is a live process that started at
// startTicks (guarding against PID reuse).
func procAlive(pid int, startTicks uint64) bool {
	st, err := readProcStat(pid)
	return err == nil && st.live() && st.startTicks == startTicks
}

var (
	bootTimeOnce sync.Once
	bootTime     time.Time
	bootTimeErr  error
	clkTck       uint64
)

// loadBootTime reads btime from /proc/stat and the clock tick rate from
// the auxiliary vector (AT_CLKTCK), falling back to 100 Hz.
func loadBootTime() (time.Time, uint64, error) {
	bootTimeOnce.Do(func() {
		clkTck = 100
		if aux, err := os.ReadFile("/proc/self/auxv"); err == nil {
			const atClkTck = 17
			for i := 0; i+16 <= len(aux); i += 16 {
				k, v := binary.NativeEndian.Uint64(aux[i:]), binary.NativeEndian.Uint64(aux[i+8:])
				if k == atClkTck && v > 0 {
					clkTck = v
				}
			}
		}
		data, err := os.ReadFile("/proc/stat")
		if err != nil {
			bootTimeErr = err
			return
		}
		for _, line := range strings.Split(string(data), "\n") {
			if v, ok := strings.CutPrefix(line, "btime "); ok {
				sec, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
				if err != nil {
					bootTimeErr = fmt.Errorf("parse /proc/stat btime: %w", err)
					return
				}
				bootTime = time.Unix(sec, 0)
				return
			}
		}
		bootTimeErr = fmt.Errorf("no btime in /proc/stat")
	})
	return bootTime, clkTck, bootTimeErr
}

// startTime converts a /proc start tick count into wall-clock time
// (second precision: btime is whole seconds).
func startTime(ticks uint64) time.Time {
	bt, hz, err := loadBootTime()
	if err != nil {
		return time.Time{}
	}
	return bt.Add(time.Duration(ticks) * time.Second / time.Duration(hz))
}

// readRSS returns the resident set size of pid from /proc/PID/statm.
func readRSS(pid int) int64 {
	data, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/statm")
	if err != nil {
		return 0
	}
	f := strings.Fields(string(data))
	if len(f) < 2 {
		return 0
	}
	pages, err := strconv.ParseInt(f[1], 10, 64)
	if err != nil {
		return 0
	}
	return pages * int64(os.Getpagesize())
}

// cmdlineHasSocket reports whether pid's command line has a chardev with
// path=sock (as written by Args, commas doubled).
func cmdlineHasSocket(pid int, sock string) (bool, error) {
	data, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cmdline")
	if err != nil {
		return false, err
	}
	want := "path=" + escapeOpt(sock)
	for _, arg := range strings.Split(string(data), "\x00") {
		if strings.HasSuffix(arg, want) || strings.Contains(arg, want+",") {
			return true, nil
		}
	}
	return false, nil
}

// tailFile returns up to the last maxLines lines (at most 4 KiB) of path
// after byte offset from, trimmed.
func tailFile(path string, from int64, maxLines int) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	const maxBytes = 4096
	st, err := f.Stat()
	if err != nil {
		return ""
	}
	if st.Size()-from > maxBytes {
		from = st.Size() - maxBytes
	}
	if _, err := f.Seek(from, io.SeekStart); err != nil {
		return ""
	}
	data, err := io.ReadAll(io.LimitReader(f, maxBytes))
	if err != nil {
		return ""
	}
	lines := strings.Split(strings.TrimSpace(string(data)), "\n")
	if len(lines) > maxLines {
		lines = lines[len(lines)-maxLines:]
	}
	return strings.TrimSpace(strings.Join(lines, "\n"))
}
