package qemu

import (
	"bufio"
	"bytes"
	"compress/flate"
	"encoding/binary"
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
// send at least once. Pages /proc/PID/pagemap reports neither present nor
// swapped were never touched and are zero: they are skipped without being
// read, so the cost follows the guest's resident memory (a few hundred
// milliseconds per resident GiB), not its size. Swapped pages are counted
// as non-zero without reading them (a read would swap them in). Without a
// readable pagemap every page is read.
func NonZeroRAM(pid int, memBytes int64) (int64, error) {
	st, err := ScanRAM(pid, memBytes)
	return st.NonZeroBytes, err
}

// RAMStats is what one scan of the guest's RAM found.
type RAMStats struct {
	// NonZeroBytes is the non-zero RAM, in whole pages.
	NonZeroBytes int64
	// CompressRatio is the compressed size over the size of a sample of
	// the non-zero pages (one in compressEvery, DEFLATE at its fastest
	// level, a conservative stand-in for QEMU's zstd level 1); 0 when no
	// page was sampled.
	CompressRatio float64
}

// compressEvery is the sampling period of the compressibility estimate:
// 1 in 32 non-zero pages costs about a tenth of a second of CPU per GiB.
const compressEvery = 32

// ScanRAM is NonZeroRAM that also estimates how well the non-zero pages
// compress (RAMStats.CompressRatio).
func ScanRAM(pid int, memBytes int64) (RAMStats, error) {
	start, end, err := ramMapping(pid, memBytes)
	if err != nil {
		return RAMStats{}, err
	}
	var cs compressSample
	nz, err := nonZeroPages(pid, start, end, &cs)
	return RAMStats{NonZeroBytes: nz, CompressRatio: cs.ratio()}, err
}

// compressSample compresses every compressEvery-th non-zero page into one
// stream and counts the bytes in and out.
type compressSample struct {
	n       int64 // non-zero pages seen
	in, out countingWriter
	w       *flate.Writer
}

type countingWriter struct{ n int64 }

func (c *countingWriter) Write(p []byte) (int, error) { c.n += int64(len(p)); return len(p), nil }

func (s *compressSample) page(p []byte) {
	if s == nil {
		return
	}
	s.n++
	if s.n%compressEvery != 1 {
		return
	}
	if s.w == nil {
		s.w, _ = flate.NewWriter(&s.out, flate.BestSpeed) // BestSpeed is a valid level: no error
	}
	_, _ = s.w.Write(p) // into a counter: cannot fail
	s.in.n += int64(len(p))
}

func (s *compressSample) ratio() float64 {
	if s.w == nil || s.in.n == 0 {
		return 0
	}
	_ = s.w.Close() // flushes into the counter: cannot fail
	return min(float64(s.out.n)/float64(s.in.n), 1)
}

// nonZeroPages counts the non-zero bytes, in whole pages, of [start, end)
// in the address space of process pid, showing each non-zero page to cs
// (nil: none).
func nonZeroPages(pid int, start, end uint64, cs *compressSample) (int64, error) {
	mem, err := os.Open(fmt.Sprintf("/proc/%d/mem", pid))
	if err != nil {
		return 0, fmt.Errorf("count non-zero guest RAM: %w", err)
	}
	defer mem.Close()
	pagemap, err := os.Open(fmt.Sprintf("/proc/%d/pagemap", pid))
	if err != nil {
		pagemap = nil // read every page
	} else {
		defer pagemap.Close()
	}
	const chunk = 4 << 20
	zero := make([]byte, pageSize)
	buf := make([]byte, chunk)
	entries := make([]byte, 8*chunk/pageSize)
	state := make([]pageState, chunk/pageSize)
	var pages int64
	for off := start; off < end; off += chunk {
		n := int(min(chunk, end-off)) / pageSize
		pageStates(pagemap, off, entries[:8*n], state[:n])
		for i := 0; i < n; {
			switch state[i] {
			case pageSwapped:
				pages++
				i++
				continue
			case pageAbsent:
				i++
				continue
			}
			j := i
			for j < n && state[j] == pagePresent {
				j++
			}
			k, err := mem.ReadAt(buf[:(j-i)*pageSize], int64(off)+int64(i*pageSize))
			if err != nil && err != io.EOF {
				return 0, fmt.Errorf("count non-zero guest RAM: read QEMU %d at %#x: %w", pid, off+uint64(i*pageSize), err)
			}
			for p := 0; p+pageSize <= k; p += pageSize {
				if !bytes.Equal(buf[p:p+pageSize], zero) {
					pages++
					cs.page(buf[p : p+pageSize])
				}
			}
			i = j
		}
	}
	return pages * pageSize, nil
}

// pageState is what /proc/PID/pagemap says of one page.
type pageState uint8

const (
	pagePresent pageState = iota // in RAM: read it
	pageAbsent                   // never touched: zero
	pageSwapped                  // in swap: counted as non-zero
)

// pageStates fills state for the len(state) pages from virtual address off
// from pagemap (nil, or a short read: every page present).
func pageStates(pagemap *os.File, off uint64, entries []byte, state []pageState) {
	for i := range state {
		state[i] = pagePresent
	}
	if pagemap == nil {
		return
	}
	if k, err := pagemap.ReadAt(entries, int64(off/pageSize*8)); err != nil || k < len(entries) {
		return
	}
	for i := range state {
		e := binary.LittleEndian.Uint64(entries[8*i:])
		switch {
		case e&(1<<63) != 0:
			state[i] = pagePresent
		case e&(1<<62) != 0:
			state[i] = pageSwapped
		default:
			state[i] = pageAbsent
		}
	}
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
