//go:build linux

// Package diskwriter implements the guest's disk writer: sequential
// guestapi.RecordSize records (magic, sequence number, boot id, timestamps,
// CRC) written at a fixed rate paced against elapsed wall-clock time, each
// one durable before the next (O_DIRECT|O_DSYNC, falling back to O_DSYNC
// where O_DIRECT is unsupported), wrapping around at the end of the device.
package diskwriter

import (
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ferryvm/ferry/guest/guestapi"
	"github.com/ferryvm/ferry/guest/internal/pace"
	"golang.org/x/sys/unix"
)

// States reported by Stats.State.
const (
	StateOff     = "off"     // rate 0
	StateWaiting = "waiting" // waiting for the device node to appear
	StateRunning = "running"
	StateError   = "error" // gave up (device absent, open failed, ...)
)

// Writer writes records to Device at RateKiBps.
type Writer struct {
	Device    string
	RateKiBps uint64
	BootID    [16]byte
	// WaitFor is how long to wait for Device to appear (default 5s).
	WaitFor time.Duration
	// Uptime returns CLOCK_BOOTTIME (stamped into records); defaults to
	// reading the clock.
	Uptime func() time.Duration

	state    atomic.Value // string
	lastSeq  atomic.Uint64
	skipped  atomic.Uint64
	errors   atomic.Uint64
	records  atomic.Uint64
	directIO atomic.Bool

	mu      sync.Mutex
	errText string
	start   time.Time
}

// New returns a writer; Run starts it.
func New(device string, rateKiBps uint64, bootID [16]byte) *Writer {
	w := &Writer{Device: device, RateKiBps: rateKiBps, BootID: bootID, WaitFor: 5 * time.Second}
	st := StateOff
	if rateKiBps > 0 {
		st = StateWaiting
	}
	w.state.Store(st)
	return w
}

// Stats is a snapshot of the writer.
type Stats struct {
	State         string
	Device        string
	RateKiBps     uint64
	Records       uint64 // device capacity in records
	LastSeq       uint64 // last durably written sequence number (0 = none)
	Skipped       uint64
	WriteErrors   uint64
	Error         string
	DirectIO      bool
	AchievedKiBps float64
}

// Stats returns a snapshot at now.
func (w *Writer) Stats(now time.Time) Stats {
	w.mu.Lock()
	errText, start := w.errText, w.start
	w.mu.Unlock()
	s := Stats{
		State: w.state.Load().(string), Device: w.Device, RateKiBps: w.RateKiBps,
		Records: w.records.Load(), LastSeq: w.lastSeq.Load(), Skipped: w.skipped.Load(),
		WriteErrors: w.errors.Load(), Error: errText, DirectIO: w.directIO.Load(),
	}
	if !start.IsZero() {
		if sec := now.Sub(start).Seconds(); sec > 0 {
			s.AchievedKiBps = float64(s.LastSeq) * guestapi.RecordSize / 1024 / sec
		}
	}
	return s
}

func (w *Writer) setErr(err error) {
	w.mu.Lock()
	if err == nil {
		w.errText = ""
	} else {
		w.errText = err.Error()
	}
	w.mu.Unlock()
}

func (w *Writer) giveUp(err error) error {
	w.setErr(err)
	w.state.Store(StateError)
	return err
}

// Run waits for the device, then writes forever (or until stop is closed).
// It returns an error, also reported by Stats, if the device never appears
// or cannot be opened. It returns nil at once when the rate is 0.
func (w *Writer) Run(stop <-chan struct{}) error {
	if w.RateKiBps == 0 {
		return nil
	}
	deadline := time.Now().Add(w.WaitFor)
	for {
		if _, err := os.Stat(w.Device); err == nil {
			break
		} else if !errors.Is(err, os.ErrNotExist) {
			return w.giveUp(fmt.Errorf("stat %s: %w", w.Device, err))
		}
		if time.Now().After(deadline) {
			return w.giveUp(fmt.Errorf("%s not present (waited %v): no disk attached?", w.Device, w.WaitFor))
		}
		time.Sleep(20 * time.Millisecond)
	}

	fd, err := unix.Open(w.Device, unix.O_WRONLY|unix.O_DIRECT|unix.O_DSYNC|unix.O_CLOEXEC, 0)
	if err == unix.EINVAL { // e.g. tmpfs: no O_DIRECT
		fd, err = unix.Open(w.Device, unix.O_WRONLY|unix.O_DSYNC|unix.O_CLOEXEC, 0)
	} else if err == nil {
		w.directIO.Store(true)
	}
	if err != nil {
		return w.giveUp(fmt.Errorf("open %s: %w", w.Device, err))
	}
	defer unix.Close(fd)
	size, err := unix.Seek(fd, 0, io.SeekEnd)
	if err != nil {
		return w.giveUp(fmt.Errorf("size of %s: %w", w.Device, err))
	}
	records := uint64(size) / guestapi.RecordSize
	if records == 0 {
		return w.giveUp(fmt.Errorf("%s too small (%d bytes) for one %d-byte record", w.Device, size, guestapi.RecordSize))
	}
	w.records.Store(records)

	// page-aligned buffer for O_DIRECT
	buf, err := unix.Mmap(-1, 0, guestapi.RecordSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		return w.giveUp(fmt.Errorf("mmap record buffer: %w", err))
	}
	defer unix.Munmap(buf)

	uptime := w.Uptime
	if uptime == nil {
		uptime = bootTime
	}
	start := time.Now()
	w.mu.Lock()
	w.start = start
	w.mu.Unlock()
	w.state.Store(StateRunning)

	bytesPerSec := w.RateKiBps << 10
	backlog := bytesPerSec / guestapi.RecordSize // one second of records
	if backlog < 4 {
		backlog = 4
	}
	p := pace.New(start, bytesPerSec, guestapi.RecordSize, backlog)
	seq := uint64(1)
	for {
		failing := false
		n := p.Due(time.Now())
		for ; n > 0; n-- {
			guestapi.EncodeRecord(buf, guestapi.Record{
				Seq: seq, BootID: w.BootID,
				WallNs: time.Now().UnixNano(), UptimeNs: uint64(uptime()),
			})
			off := guestapi.RecordOffset(seq, records)
			nw, err := unix.Pwrite(fd, buf, off)
			if err == nil && nw != len(buf) {
				err = fmt.Errorf("short write %d/%d", nw, len(buf))
			}
			if err != nil {
				w.errors.Add(1)
				w.setErr(fmt.Errorf("write seq %d at %d: %w", seq, off, err))
				failing = true
				break // retry the same seq next round
			}
			if w.errors.Load() > 0 {
				w.setErr(nil)
			}
			w.lastSeq.Store(seq)
			seq++
			p.Done(1)
		}
		w.skipped.Store(p.Skipped())
		d := p.Wait(time.Now(), time.Millisecond, 100*time.Millisecond)
		if failing && d < 100*time.Millisecond {
			d = 100 * time.Millisecond // back off while failing
		}
		select {
		case <-stop:
			return nil
		case <-time.After(d):
		}
	}
}

func bootTime() time.Duration {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_BOOTTIME, &ts); err != nil {
		return 0
	}
	return time.Duration(ts.Nano())
}
