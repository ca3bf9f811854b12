package qemu

import (
	"os"
	"syscall"
	"testing"
	"unsafe"
)

// TestNonZeroRAMCountsOnlyNonZeroPages maps a region, writes some pages,
// touches others with zeros, and counts that region of this very process.
// The region is given by address: under -race the detector's shadow memory
// is a bigger anonymous mapping than any test can make, so the largest
// mapping is not ours (TestRAMMappingFindsTheLargest covers the search).
func TestNonZeroRAMCountsOnlyNonZeroPages(t *testing.T) {
	const size = 512 << 20
	mem, err := syscall.Mmap(-1, 0, size, syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_PRIVATE|syscall.MAP_ANON)
	if err != nil {
		t.Fatalf("mmap: %v", err)
	}
	defer syscall.Munmap(mem)
	const written = 37
	for i := range written {
		mem[(i*97%(size/pageSize))*pageSize+i%pageSize] = byte(i + 1)
	}
	for i := range 50 { // present but zero: read, not counted
		p := (size/pageSize - 1 - i) * pageSize
		mem[p] = 1
		mem[p] = 0
	}
	_ = mem[size/2] // a read fault maps the zero page
	start := uint64(uintptr(unsafe.Pointer(&mem[0])))
	got, err := nonZeroPages(os.Getpid(), start, start+size)
	if err != nil {
		t.Fatal(err)
	}
	if got != written*pageSize {
		t.Errorf("NonZeroRAM = %d pages, want %d", got/pageSize, written)
	}
}

func TestPageStatesWithoutPagemapReadsEverything(t *testing.T) {
	state := make([]pageState, 4)
	pageStates(nil, 0, make([]byte, 32), state)
	for i, s := range state {
		if s != pagePresent {
			t.Errorf("page %d: %v, want present", i, s)
		}
	}
}

// TestRAMMappingFindsTheLargest: the search returns an anonymous writable
// mapping at least as big as asked that contains a fresh mapping of that
// size, or a bigger one (the race detector's shadow).
func TestRAMMappingFindsTheLargest(t *testing.T) {
	const size = 256 << 20
	mem, err := syscall.Mmap(-1, 0, size, syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_PRIVATE|syscall.MAP_ANON)
	if err != nil {
		t.Fatalf("mmap: %v", err)
	}
	defer syscall.Munmap(mem)
	start, end, err := ramMapping(os.Getpid(), size)
	if err != nil {
		t.Fatal(err)
	}
	if end-start < size {
		t.Errorf("mapping %#x-%#x is smaller than %d MiB", start, end, size>>20)
	}
	if _, _, err := ramMapping(os.Getpid(), 1<<50); err == nil {
		t.Error("a 1 PiB mapping was found")
	}
}
