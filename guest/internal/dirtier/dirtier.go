//go:build linux

// Package dirtier implements the guest's memory dirtier: it allocates a
// working set outside the Go heap, touches every page once with
// pseudo-random (incompressible, non-zero) data so the set is resident, then
// writes to its pages at a fixed rate paced against elapsed wall-clock time.
//
// Access pattern: sequential cycling. Pass k writes one 8-byte word into
// every 4 KiB page of the working set in address order; the word's offset
// within the page moves by 8 bytes each pass (offset = (k mod 512) * 8), and
// the value written is the running dirty counter (never zero). Every page is
// therefore dirtied exactly once per pass, and a pass over WSS_MiB takes
// WSS_MiB / RATE_MiBps seconds.
package dirtier

import (
	"fmt"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/ferryvm/ferry/guest/internal/pace"
	"golang.org/x/sys/unix"
)

// PageSize is the dirtying granularity.
const PageSize = 4096

const wordsPerPage = PageSize / 8

// States reported by Stats.State.
const (
	StateOff     = "off"     // no working set configured
	StateFilling = "filling" // initial touch in progress
	StateIdle    = "idle"    // working set resident, rate 0
	StateRunning = "running" // dirtying
	StateError   = "error"   // allocation failed
)

// Dirtier dirties WSSMiB of memory at RateMiBps. Create with New, start with
// Run (blocking), read with Stats from any goroutine.
type Dirtier struct {
	wssMiB, rateMiBps uint64

	// MinSleep/MaxSleep bound the pacing sleeps (defaults 2ms / 100ms).
	MinSleep, MaxSleep time.Duration

	state   atomic.Value // string
	dirtied atomic.Uint64
	skipped atomic.Uint64
	passes  atomic.Uint64

	mu      sync.Mutex
	start   time.Time // dirtying start (after fill)
	fill    time.Duration
	errText string

	mem []byte
}

// New returns a dirtier for the given working set and rate.
func New(wssMiB, rateMiBps uint64) *Dirtier {
	d := &Dirtier{wssMiB: wssMiB, rateMiBps: rateMiBps, MinSleep: 2 * time.Millisecond, MaxSleep: 100 * time.Millisecond}
	st := StateOff
	if wssMiB > 0 {
		st = StateFilling
	}
	d.state.Store(st)
	return d
}

// Stats is a snapshot of the dirtier.
type Stats struct {
	WSSMiB, RateMiBps uint64
	State             string
	Error             string
	PagesDirtied      uint64
	PagesSkipped      uint64
	Passes            uint64
	Elapsed           time.Duration // since dirtying started (0 before)
	AchievedMiBps     float64
	Fill              time.Duration
}

// Stats returns a snapshot at now.
func (d *Dirtier) Stats(now time.Time) Stats {
	d.mu.Lock()
	start, fill, errText := d.start, d.fill, d.errText
	d.mu.Unlock()
	s := Stats{
		WSSMiB: d.wssMiB, RateMiBps: d.rateMiBps,
		State: d.state.Load().(string), Error: errText,
		PagesDirtied: d.dirtied.Load(), PagesSkipped: d.skipped.Load(), Passes: d.passes.Load(),
		Fill: fill,
	}
	if !start.IsZero() {
		s.Elapsed = now.Sub(start)
		if sec := s.Elapsed.Seconds(); sec > 0 {
			s.AchievedMiBps = float64(s.PagesDirtied) * PageSize / (1 << 20) / sec
		}
	}
	return s
}

// Run allocates and fills the working set, then dirties it forever (or
// until stop is closed). It returns early with an error if allocation
// fails, and returns nil immediately if no working set is configured.
func (d *Dirtier) Run(stop <-chan struct{}) error {
	if d.wssMiB == 0 {
		return nil
	}
	size := d.wssMiB << 20
	mem, err := unix.Mmap(-1, 0, int(size), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		d.fail(fmt.Errorf("mmap %d MiB: %w", d.wssMiB, err))
		return err
	}
	d.mem = mem
	defer unix.Munmap(mem)
	words := unsafe.Slice((*uint64)(unsafe.Pointer(&mem[0])), len(mem)/8)

	t0 := time.Now()
	fillWords(words, 0x9e3779b97f4a7c15^uint64(t0.UnixNano()))
	d.mu.Lock()
	d.fill = time.Since(t0)
	d.mu.Unlock()

	if d.rateMiBps == 0 {
		d.state.Store(StateIdle)
		if stop == nil {
			for { // keep the working set mapped forever
				time.Sleep(time.Hour)
			}
		}
		<-stop
		return nil
	}

	pages := uint64(len(words) / wordsPerPage)
	start := time.Now()
	d.mu.Lock()
	d.start = start
	d.mu.Unlock()
	d.state.Store(StateRunning)

	ratePages := d.rateMiBps << 20 / PageSize
	backlog := ratePages // never owe more than one second of work
	if backlog < 64 {
		backlog = 64
	}
	p := pace.New(start, d.rateMiBps<<20, PageSize, backlog)
	var cursor, pass, counter uint64
	for {
		n := p.Due(time.Now())
		for n > 0 {
			batch := n
			if batch > 4096 {
				batch = 4096
			}
			off := pass % wordsPerPage
			for i := uint64(0); i < batch; i++ {
				counter++
				words[cursor*wordsPerPage+off] = counter
				cursor++
				if cursor == pages {
					cursor = 0
					pass++
					off = pass % wordsPerPage
					d.passes.Store(pass)
				}
			}
			p.Done(batch)
			d.dirtied.Store(p.Issued())
			n -= batch
		}
		d.skipped.Store(p.Skipped())
		w := p.Wait(time.Now(), d.MinSleep, d.MaxSleep)
		if stop != nil {
			select {
			case <-stop:
				return nil
			case <-time.After(w):
			}
		} else {
			time.Sleep(w)
		}
	}
}

func (d *Dirtier) fail(err error) {
	d.mu.Lock()
	d.errText = err.Error()
	d.mu.Unlock()
	d.state.Store(StateError)
}

// fillWords writes xorshift64 output to every word: resident, non-zero,
// incompressible.
func fillWords(w []uint64, x uint64) {
	if x == 0 {
		x = 1
	}
	for i := range w {
		x ^= x << 13
		x ^= x >> 7
		x ^= x << 17
		w[i] = x
	}
}
