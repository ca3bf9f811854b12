//go:build linux

package diskwriter

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ferryvm/ferry/guest/guestapi"
)

func TestAbsentDevice(t *testing.T) {
	w := New(filepath.Join(t.TempDir(), "vda"), 256, [16]byte{1})
	w.WaitFor = 50 * time.Millisecond
	if err := w.Run(nil); err == nil {
		t.Fatal("Run succeeded without a device")
	}
	s := w.Stats(time.Now())
	if s.State != StateError || !strings.Contains(s.Error, "not present") || s.LastSeq != 0 {
		t.Fatalf("stats %+v", s)
	}
}

func TestOff(t *testing.T) {
	w := New("/nonexistent", 0, [16]byte{})
	if err := w.Run(nil); err != nil {
		t.Fatal(err)
	}
	if s := w.Stats(time.Now()); s.State != StateOff {
		t.Fatalf("state %q", s.State)
	}
}

// A small file-backed "device" of 8 records at 256 KiB/s (64 records/s)
// must wrap around and hold the 8 newest records.
func TestWritesAndWraps(t *testing.T) {
	dev := filepath.Join(t.TempDir(), "disk.img")
	if err := os.WriteFile(dev, make([]byte, 8*guestapi.RecordSize+100), 0o644); err != nil {
		t.Fatal(err)
	}
	boot := [16]byte{0xde, 0xad, 0xbe, 0xef}
	w := New(dev, 256, boot)
	stop := make(chan struct{})
	done := make(chan error)
	go func() { done <- w.Run(stop) }()
	time.Sleep(500 * time.Millisecond)
	close(stop)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	s := w.Stats(time.Now())
	t.Logf("stats %+v", s)
	if s.Records != 8 || s.Error != "" || s.State != StateRunning {
		t.Fatalf("stats %+v", s)
	}
	// 0.5 s at 64 rec/s = 32 records (+ scheduling slack)
	if s.LastSeq < 24 || s.LastSeq > 34 {
		t.Fatalf("last_seq %d, want ~32", s.LastSeq)
	}
	img, err := os.ReadFile(dev)
	if err != nil {
		t.Fatal(err)
	}
	seen := map[uint64]bool{}
	for i := 0; i < 8; i++ {
		r, err := guestapi.DecodeRecord(img[i*guestapi.RecordSize:])
		if err != nil {
			t.Fatalf("record %d: %v", i, err)
		}
		if r.BootID != boot {
			t.Fatalf("record %d boot id %x", i, r.BootID)
		}
		if guestapi.RecordOffset(r.Seq, 8) != int64(i*guestapi.RecordSize) {
			t.Fatalf("seq %d stored in slot %d", r.Seq, i)
		}
		if r.Seq > s.LastSeq || r.Seq+8 <= s.LastSeq {
			t.Fatalf("slot %d holds seq %d, last_seq %d", i, r.Seq, s.LastSeq)
		}
		seen[r.Seq] = true
	}
	if len(seen) != 8 {
		t.Fatalf("duplicate seqs: %v", seen)
	}
}
