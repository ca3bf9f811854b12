//go:build linux

package diskwriter

import (
	"errors"
	"fmt"
	"time"

	"github.com/ferryvm/ferry/guest/guestapi"
	"golang.org/x/sys/unix"
)

// verifyChunk is how many bytes Verify reads per call.
const verifyChunk = 1 << 20

// Verify reads back every record the writer made durable (up to its
// last_seq when called, at most one device's worth since it wraps) and
// reports the first one missing, torn, out of order or of another boot.
// It reads with O_DIRECT where the device allows it, so the check sees
// what the disk holds, not the guest's page cache.
func (w *Writer) Verify() guestapi.Verify {
	start := time.Now()
	last, records := w.lastSeq.Load(), w.records.Load()
	v := guestapi.Verify{OK: true, LastSeq: last}
	v.BootID = fmt.Sprintf("%x", w.BootID[:])
	defer func() { v.Seconds = time.Since(start).Seconds() }()
	if last == 0 || records == 0 {
		v.FirstSeq = 1
		return v
	}
	first := uint64(1)
	if last > records {
		first = last - records + 1
	}
	v.FirstSeq = first
	fd, err := unix.Open(w.Device, unix.O_RDONLY|unix.O_DIRECT|unix.O_CLOEXEC, 0)
	if err == unix.EINVAL {
		fd, err = unix.Open(w.Device, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	} else if err == nil {
		v.DirectIO = true
	}
	if err != nil {
		return bad(v, first, guestapi.ProblemReadError, fmt.Sprintf("open %s: %v", w.Device, err))
	}
	defer unix.Close(fd)
	buf, err := unix.Mmap(-1, 0, verifyChunk, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		return bad(v, first, guestapi.ProblemReadError, fmt.Sprintf("mmap: %v", err))
	}
	defer unix.Munmap(buf)
	per := uint64(verifyChunk / guestapi.RecordSize)
	for seq := first; seq <= last; {
		// Records from seq on lie contiguously up to the device's end.
		slot := (seq - 1) % records
		n := min(per, last-seq+1, records-slot)
		want := int(n * guestapi.RecordSize)
		got, err := unix.Pread(fd, buf[:want], guestapi.RecordOffset(seq, records))
		if err == nil && got != want {
			err = fmt.Errorf("short read %d/%d", got, want)
		}
		if err != nil {
			return bad(v, seq, guestapi.ProblemReadError, fmt.Sprintf("read records %d..%d: %v", seq, seq+n-1, err))
		}
		for i := uint64(0); i < n; i++ {
			b := buf[i*guestapi.RecordSize : (i+1)*guestapi.RecordSize]
			if p, d := checkRecord(b, seq+i, w.BootID); p != "" {
				return bad(v, seq+i, p, d)
			}
			v.Checked++
		}
		seq += n
	}
	return v
}

// checkRecord classifies the block that must hold record seq.
func checkRecord(b []byte, seq uint64, boot [16]byte) (problem, detail string) {
	r, err := guestapi.DecodeRecord(b)
	switch {
	case errors.Is(err, guestapi.ErrNoRecord):
		return guestapi.ProblemMissing, fmt.Sprintf("no record where seq %d belongs", seq)
	case err != nil:
		return guestapi.ProblemTorn, err.Error()
	case r.BootID != boot:
		return guestapi.ProblemOtherBoot, fmt.Sprintf("seq %d written by boot %s", r.Seq, r.BootIDHex())
	case r.Seq != seq:
		return guestapi.ProblemOutOfOrder, fmt.Sprintf("found seq %d where seq %d belongs", r.Seq, seq)
	}
	return "", ""
}

func bad(v guestapi.Verify, seq uint64, problem, detail string) guestapi.Verify {
	v.OK, v.BadSeq, v.Problem, v.Detail = false, seq, problem, detail
	return v
}
