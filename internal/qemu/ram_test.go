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
	got, err := nonZeroPages(os.Getpid(), start, start+size, nil)
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

// TestCompressRatioSeparatesTextFromNoise: the compressibility sample of
// pages of repeated text is far below 1, of pseudo-random pages about 1.
func TestCompressRatioSeparatesTextFromNoise(t *testing.T) {
	const pages = 256
	mem, err := syscall.Mmap(-1, 0, pages*pageSize, syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_PRIVATE|syscall.MAP_ANON)
	if err != nil {
		t.Fatalf("mmap: %v", err)
	}
	defer syscall.Munmap(mem)
	start := uint64(uintptr(unsafe.Pointer(&mem[0])))
	ratio := func() float64 {
		var cs compressSample
		if _, err := nonZeroPages(os.Getpid(), start, start+pages*pageSize, &cs); err != nil {
			t.Fatal(err)
		}
		return cs.ratio()
	}
	text := []byte("the guest writes log lines and source code, which compress well; ")
	for i := range mem {
		mem[i] = text[i%len(text)]
	}
	if r := ratio(); r <= 0 || r > 0.2 {
		t.Errorf("repeated text: ratio %.3f, want (0, 0.2]", r)
	}
	x := uint64(0x9e3779b97f4a7c15)
	for i := range mem {
		x ^= x << 13
		x ^= x >> 7
		x ^= x << 17
		mem[i] = byte(x)
	}
	if r := ratio(); r < 0.95 {
		t.Errorf("pseudo-random data: ratio %.3f, want about 1", r)
	}
	var none compressSample
	if none.ratio() != 0 {
		t.Error("no sample must give ratio 0 (unknown)")
	}
}
