package qemu

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
)

// pageSize is the guest page size the scan counts in.
const pageSize = 4096

// NonZeroRAM counts the guest's non-zero 4 KiB pages by reading the guest
// RAM mapping of QEMU process pid (the largest private, writable,
// anonymous mapping of at least memBytes) through /proc/PID/mem. Zero pages
// cost a migration almost nothing, so this is the RAM any migration must
// send at least once. Reading 1 GiB takes a few hundred milliseconds.
func NonZeroRAM(pid int, memBytes int64) (int64, error) {
	start, end, err := ramMapping(pid, memBytes)
	if err != nil {
		return 0, err
	}
	mem, err := os.Open(fmt.Sprintf("/proc/%d/mem", pid))
	if err != nil {
		return 0, fmt.Errorf("count non-zero guest RAM: %w", err)
	}
	defer mem.Close()
	zero := make([]byte, pageSize)
	buf := make([]byte, 4<<20)
	var pages int64
	for off := start; off < end; off += uint64(len(buf)) {
		n := min(uint64(len(buf)), end-off)
		k, err := mem.ReadAt(buf[:n], int64(off))
		if err != nil && err != io.EOF {
			return 0, fmt.Errorf("count non-zero guest RAM: read QEMU %d at %#x: %w", pid, off, err)
		}
		for i := 0; i+pageSize <= k; i += pageSize {
			if !bytes.Equal(buf[i:i+pageSize], zero) {
				pages++
			}
		}
	}
	return pages * pageSize, nil
}

// ramMapping finds the guest RAM in /proc/PID/maps.
func ramMapping(pid int, memBytes int64) (uint64, uint64, error) {
	maps, err := os.Open(fmt.Sprintf("/proc/%d/maps", pid))
	if err != nil {
		return 0, 0, fmt.Errorf("count non-zero guest RAM: %w", err)
	}
	defer maps.Close()
	var start, end uint64
	sc := bufio.NewScanner(maps)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) != 5 || f[1] != "rw-p" { // anonymous mappings have no path
			continue
		}
		lo, hi, ok := strings.Cut(f[0], "-")
		if !ok {
			continue
		}
		a, err1 := strconv.ParseUint(lo, 16, 64)
		b, err2 := strconv.ParseUint(hi, 16, 64)
		if err1 != nil || err2 != nil {
			continue
		}
		if b-a >= uint64(memBytes) && b-a > end-start {
			start, end = a, b
		}
	}
	if err := sc.Err(); err != nil {
		return 0, 0, fmt.Errorf("count non-zero guest RAM: read maps of %d: %w", pid, err)
	}
	if end == 0 {
		return 0, 0, fmt.Errorf("count non-zero guest RAM: no anonymous mapping of %d MiB in QEMU %d", memBytes>>20, pid)
	}
	return start, end, nil
}
