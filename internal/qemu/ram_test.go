package qemu

import (
	"os"
	"syscall"
	"testing"
)

// TestNonZeroRAMCountsOnlyNonZeroPages maps a region bigger than anything
// the Go runtime maps in a test, writes some pages, touches others with
// zeros, and counts this very process's "guest RAM".
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
	got, err := NonZeroRAM(os.Getpid(), size)
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
