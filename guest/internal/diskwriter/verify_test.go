//go:build linux

package diskwriter

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/ferryvm/ferry/guest/guestapi"
)

// writeFor runs a writer on a file-backed device of n records for d.
func writeFor(t *testing.T, n int, d time.Duration) (*Writer, string) {
	t.Helper()
	dev := filepath.Join(t.TempDir(), "disk.img")
	if err := os.WriteFile(dev, make([]byte, n*guestapi.RecordSize), 0o644); err != nil {
		t.Fatal(err)
	}
	w := New(dev, 512, [16]byte{7, 7})
	stop := make(chan struct{})
	done := make(chan error)
	go func() { done <- w.Run(stop) }()
	time.Sleep(d)
	close(stop)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	return w, dev
}

func patch(t *testing.T, dev string, seq, records uint64, block []byte) {
	t.Helper()
	f, err := os.OpenFile(dev, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteAt(block, guestapi.RecordOffset(seq, records)); err != nil {
		t.Fatal(err)
	}
}

func TestVerifyFindsTheFirstBadRecord(t *testing.T) {
	w, dev := writeFor(t, 4096, 300*time.Millisecond)
	v := w.Verify()
	if !v.OK || v.LastSeq == 0 || v.Checked != v.LastSeq || v.FirstSeq != 1 {
		t.Fatalf("intact device: %+v", v)
	}
	last := v.LastSeq
	if last < 6 {
		t.Fatalf("only %d records written", last)
	}
	records := w.Stats(time.Now()).Records
	torn := make([]byte, guestapi.RecordSize)
	guestapi.EncodeRecord(torn, guestapi.Record{Seq: 5, BootID: w.BootID})
	torn[100] ^= 0xff
	older := make([]byte, guestapi.RecordSize)
	guestapi.EncodeRecord(older, guestapi.Record{Seq: 2, BootID: w.BootID})
	other := make([]byte, guestapi.RecordSize)
	guestapi.EncodeRecord(other, guestapi.Record{Seq: 3, BootID: [16]byte{9}})
	for _, c := range []struct {
		seq     uint64
		block   []byte
		problem string
	}{
		{last, make([]byte, guestapi.RecordSize), guestapi.ProblemMissing},
		{5, torn, guestapi.ProblemTorn},
		{4, older, guestapi.ProblemOutOfOrder},
		{3, other, guestapi.ProblemOtherBoot},
	} {
		patch(t, dev, c.seq, records, c.block)
		v := w.Verify()
		if v.OK || v.BadSeq != c.seq || v.Problem != c.problem || v.Checked != c.seq-1 {
			t.Errorf("after breaking seq %d (%s): %+v", c.seq, c.problem, v)
		}
	}
}

// On a wrapped device only the newest device's worth of records is checked.
func TestVerifyAfterWrap(t *testing.T) {
	w, _ := writeFor(t, 16, 300*time.Millisecond)
	v := w.Verify()
	if !v.OK || v.LastSeq <= 16 || v.FirstSeq != v.LastSeq-15 || v.Checked != 16 {
		t.Fatalf("wrapped device: %+v", v)
	}
}
