package agent

// Background telemetry: one sampler goroutine per running VM measures its
// dirty rate (calc-dirty-rate page sampling) and counts its non-zero RAM on
// the schedule of telemetry.Schedule, so a plan reads recent figures in
// milliseconds instead of measuring for ~1.5 s first. The policy (what is
// due, when a figure is stale, what to plan with) is the pure
// internal/telemetry; this file is the thin executor: goroutines, QMP,
// /proc and the clock.

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"sync"
	"syscall"
	"time"

	"github.com/ferryvm/ferry/internal/migration"
	"github.com/ferryvm/ferry/internal/qemu"
	"github.com/ferryvm/ferry/internal/qmp"
	"github.com/ferryvm/ferry/internal/telemetry"
)

// telemetryTick is how often the hub looks for VMs to sample and each
// sampler checks its schedule.
const telemetryTick = time.Second

// errMigrating: a sample overlapped the start of a migration; its figure
// is discarded.
var errMigrating = errors.New("the VM started migrating during the sample")

// sampledQEMU is what the sampler needs of a VM's QEMU process (the real
// one is *qemu.Process).
type sampledQEMU interface {
	PID() int
	Alive() bool
	RSSBytes() int64
}

// telemetryHub owns the per-VM samplers of one agent.
type telemetryHub struct {
	a   *Agent
	sch telemetry.Schedule
	// ramScans allows one RAM scan at a time on this host: the scans are
	// the sampler's only real CPU cost, and this bounds it to one core's
	// share however many VMs run here.
	ramScans chan struct{}

	mu  sync.Mutex
	vms map[string]*vmTelemetry
}

// vmTelemetry is the telemetry of one QEMU process of a VM (a new QEMU,
// e.g. after a restart or an arrival, starts a new record).
type vmTelemetry struct {
	name string
	proc sampledQEMU

	cancel  context.CancelFunc // stops the sampler goroutine (nil: none started)
	done    chan struct{}      // closed when it returned
	dirtyMu sync.Mutex         // one calc-dirty-rate at a time: QEMU refuses a second
	ramMu   sync.Mutex         // one scan of this VM's RAM at a time

	mu      sync.Mutex // guards the fields below
	dirty   *telemetry.Series
	nonZero *telemetry.Series
	// compressRatio is the latest RAM count's compressibility sample.
	compressRatio float64
	rssAtCount    int64     // QEMU's RSS when the latest RAM count ended
	lastDirty     time.Time // last attempts (telemetry.VMView)
	lastRAM       time.Time
	quietSince    time.Time
	migrating     bool
	cpu           time.Duration // agent thread CPU spent sampling
	since         time.Time     // when the record was created
}

func newTelemetryHub(a *Agent, sch telemetry.Schedule) *telemetryHub {
	return &telemetryHub{a: a, sch: sch, ramScans: make(chan struct{}, 1), vms: map[string]*vmTelemetry{}}
}

// vmSampleView is what the sampler needs from a VM, read under its lock.
type vmSampleView struct {
	proc      sampledQEMU // nil: no QEMU
	mon       *qmp.Monitor
	memBytes  int64
	running   bool // this host's VM, its QEMU up, not stopping, not arriving
	migrating bool // an outgoing migration exists that was not cancelled
}

func (v *vm) sampleView() vmSampleView {
	v.mu.Lock()
	defer v.mu.Unlock()
	sv := vmSampleView{mon: v.mon, memBytes: v.spec.GetMemoryMib() << 20}
	if v.proc != nil {
		sv.proc = v.proc
	}
	sv.running = v.proc != nil && v.mon != nil && v.in == nil && !v.stopping && v.state == "running"
	if out := v.out; out != nil {
		out.mu.Lock()
		sv.migrating = out.state != migration.SrcCancelled
		out.mu.Unlock()
	}
	return sv
}

// run starts and stops samplers as VMs come and go, until ctx ends.
func (h *telemetryHub) run(ctx context.Context) {
	if h.sch.DirtyEvery <= 0 && h.sch.RAMEvery <= 0 {
		h.a.log.Info("background telemetry off")
		return
	}
	t := time.NewTicker(telemetryTick)
	defer t.Stop()
	for {
		h.reconcile(ctx)
		select {
		case <-ctx.Done():
			h.mu.Lock()
			names := make([]string, 0, len(h.vms))
			for n := range h.vms {
				names = append(names, n)
			}
			h.mu.Unlock()
			for _, n := range names {
				h.forget(n)
			}
			return
		case <-t.C:
		}
	}
}

// reconcile gives every running VM a sampler and drops the records of VMs
// that are gone or run another QEMU now.
func (h *telemetryHub) reconcile(ctx context.Context) {
	h.a.mu.Lock()
	vms := make(map[string]*vm, len(h.a.vms))
	for n, v := range h.a.vms {
		vms[n] = v
	}
	h.a.mu.Unlock()
	h.mu.Lock()
	var gone []string
	for n, t := range h.vms {
		if v, ok := vms[n]; !ok || v.sampleView().proc != t.proc {
			gone = append(gone, n)
		}
	}
	h.mu.Unlock()
	for _, n := range gone {
		h.forget(n)
	}
	for _, v := range vms {
		sv := v.sampleView()
		if !sv.running {
			continue
		}
		t := h.record(v.name, sv.proc)
		h.mu.Lock()
		if t.cancel == nil {
			sctx, cancel := context.WithCancel(ctx)
			t.cancel, t.done = cancel, make(chan struct{})
			go h.sample(sctx, v, t)
		}
		h.mu.Unlock()
	}
}

// record returns the telemetry of VM name's QEMU proc, creating it (and
// dropping one of an earlier QEMU) when needed.
func (h *telemetryHub) record(name string, proc sampledQEMU) *vmTelemetry {
	h.mu.Lock()
	t, ok := h.vms[name]
	h.mu.Unlock()
	if ok && t.proc == proc {
		return t
	}
	if ok {
		h.forget(name)
	}
	now := time.Now()
	t = &vmTelemetry{
		name: name, proc: proc, since: now, quietSince: now,
		dirty:   telemetry.NewSeries(telemetry.DefaultWindow, telemetry.DefaultAlpha),
		nonZero: telemetry.NewSeries(telemetry.DefaultWindow, telemetry.DefaultAlpha),
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if cur, ok := h.vms[name]; ok && cur.proc == proc { // another caller won
		return cur
	}
	h.vms[name] = t
	return t
}

// forget stops VM name's sampler, waits (bounded) until a sample in flight
// ended and drops its record. Called before the VM's QEMU goes away.
func (h *telemetryHub) forget(name string) {
	h.mu.Lock()
	t, ok := h.vms[name]
	delete(h.vms, name)
	h.mu.Unlock()
	if !ok || t.cancel == nil {
		return
	}
	t.cancel()
	select {
	case <-t.done:
	case <-time.After(3 * time.Second):
		h.a.log.Warn("telemetry sampler did not stop within 3s", "vm", name)
	}
}

// sample is the per-VM sampler goroutine.
func (h *telemetryHub) sample(ctx context.Context, v *vm, t *vmTelemetry) {
	defer close(t.done)
	tick := time.NewTicker(telemetryTick)
	defer tick.Stop()
	for {
		sv := v.sampleView()
		if sv.proc != t.proc {
			return // the QEMU this record belongs to is gone
		}
		now := time.Now()
		t.mu.Lock()
		if t.migrating && !sv.migrating {
			t.quietSince = now // a migration ended (cancelled): the VM runs on here
		}
		t.migrating = sv.migrating
		view := telemetry.VMView{Running: sv.running, Migrating: sv.migrating, QuietSince: t.quietSince, LastDirty: t.lastDirty, LastRAM: t.lastRAM}
		t.mu.Unlock()
		var err error
		switch kind := h.sch.Next(now, view); kind {
		case telemetry.Dirty:
			t.mu.Lock()
			t.lastDirty = now
			t.mu.Unlock()
			_, err = h.measureDirty(ctx, v, t, sv, 1, 0)
		case telemetry.RAM:
			t.mu.Lock()
			t.lastRAM = now
			t.mu.Unlock()
			_, err = h.countRAM(ctx, v, t, sv, 0)
		}
		if err != nil && ctx.Err() == nil && !errors.Is(err, errMigrating) {
			h.a.log.Debug("telemetry sample failed", "vm", v.name, "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

// measureDirty takes one dirty-rate sample of seconds and adds it to the
// series. With maxAge > 0 it first waits for a sample in flight and
// returns false without measuring when the series became fresh meanwhile.
func (h *telemetryHub) measureDirty(ctx context.Context, v *vm, t *vmTelemetry, sv vmSampleView, seconds int32, maxAge time.Duration) (bool, error) {
	t.dirtyMu.Lock()
	defer t.dirtyMu.Unlock()
	if maxAge > 0 {
		t.mu.Lock()
		fresh := t.dirty.Staleness(time.Now(), maxAge) == ""
		t.mu.Unlock()
		if fresh {
			return false, nil
		}
	}
	if err := quietMigration(ctx, sv.mon); err != nil {
		return false, err
	}
	var mibps float64
	cpu, err := threadCPU(func() error {
		var err error
		mibps, err = dirtyRate(ctx, sv.mon, seconds, sv.memBytes)
		return err
	})
	if err != nil {
		return false, err
	}
	if v.sampleView().migrating {
		return false, errMigrating
	}
	now := time.Now()
	t.mu.Lock()
	defer t.mu.Unlock()
	t.cpu += cpu
	t.dirty.Add(now, mibps)
	return true, nil
}

// countRAM counts the VM's non-zero RAM and adds it to the series (same
// maxAge rule as measureDirty).
func (h *telemetryHub) countRAM(ctx context.Context, v *vm, t *vmTelemetry, sv vmSampleView, maxAge time.Duration) (bool, error) {
	t.ramMu.Lock()
	defer t.ramMu.Unlock()
	if maxAge > 0 {
		t.mu.Lock()
		fresh := t.nonZero.Staleness(time.Now(), maxAge) == ""
		t.mu.Unlock()
		if fresh {
			return false, nil
		}
	}
	if err := quietMigration(ctx, sv.mon); err != nil {
		return false, err
	}
	select {
	case h.ramScans <- struct{}{}:
	case <-ctx.Done():
		return false, ctx.Err()
	}
	var st qemu.RAMStats
	cpu, err := threadCPU(func() error {
		var err error
		st, err = qemu.ScanRAM(sv.proc.PID(), sv.memBytes)
		return err
	})
	nz := st.NonZeroBytes
	<-h.ramScans
	if err != nil {
		return false, err
	}
	if cur := v.sampleView(); cur.proc != sv.proc || !cur.proc.Alive() {
		return false, fmt.Errorf("VM %s's QEMU went away during the RAM count", v.name)
	}
	now := time.Now()
	t.mu.Lock()
	defer t.mu.Unlock()
	t.cpu += cpu
	t.nonZero.Add(now, float64(nz))
	t.rssAtCount = sv.proc.RSSBytes()
	t.compressRatio = st.CompressRatio
	return true, nil
}

// quietMigration returns errMigrating while QEMU reports a migration in
// progress, outgoing or incoming: an adopted post-copy destination still
// pulls pages, and sampling it (calc-dirty-rate hashes guest pages, the RAM
// count reads them) would fault on missing pages and, with the link down,
// wedge QEMU's main loop and its monitor until the link is back.
func quietMigration(ctx context.Context, mon *qmp.Monitor) error {
	if mon == nil {
		return errMigrating
	}
	qctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	info, err := mon.QueryMigrate(qctx)
	if err != nil {
		return fmt.Errorf("query-migrate before sampling: %w", err)
	}
	switch info.CurrentStatus() {
	case qmp.MigrationStatusNone, qmp.MigrationStatusCompleted, qmp.MigrationStatusFailed, qmp.MigrationStatusCancelled:
		return nil
	}
	return errMigrating
}

// dirtyRate runs calc-dirty-rate (page sampling, samplePagesPerGiB of a
// guest of memBytes) for seconds and returns the rate in MiB/s.
func dirtyRate(ctx context.Context, mon *qmp.Monitor, seconds int32, memBytes int64) (float64, error) {
	if err := mon.CalcDirtyRate(ctx, int64(seconds), qmp.DirtyRateOptions{SamplePages: samplePagesPerGiB(memBytes)}); err != nil {
		return 0, fmt.Errorf("calc-dirty-rate: %w", err)
	}
	deadline := time.Now().Add(time.Duration(seconds)*time.Second + 5*time.Second)
	wait := time.Duration(seconds) * time.Second
	for {
		select {
		case <-ctx.Done():
			return 0, ctx.Err()
		case <-time.After(wait):
		}
		wait = 100 * time.Millisecond
		info, err := mon.QueryDirtyRate(ctx)
		if err != nil {
			return 0, fmt.Errorf("query-dirty-rate: %w", err)
		}
		if info.Status == qmp.DirtyRateStatusMeasured && info.DirtyRate != nil {
			return float64(*info.DirtyRate) * 1e6 / (1 << 20), nil // QEMU reports MB/s
		}
		if time.Now().After(deadline) {
			return 0, fmt.Errorf("dirty rate not measured after %ds (status %s)", seconds+5, info.Status)
		}
	}
}

// dirtySamplePages is how many guest pages one dirty-rate sample hashes
// (twice: at its start and end), whatever the guest's size: 64 MiB of
// hashing. QEMU's default, 512 per GiB, sees a few dirty pages in a
// working set of a few hundred MiB, and its count is off by a third: the
// bench's half guest rewrites 24 MiB/s of a 256 MiB working set, 128 of
// its 512 sampled pages, and five samples said 14.3-34.3 MiB/s.
const dirtySamplePages = 16384

// samplePagesPerGiB is calc-dirty-rate's sample-pages for a guest of
// memBytes: dirtySamplePages spread over its RAM, within what QEMU
// accepts (128-16384 per GiB; 0, QEMU's default, when the size is
// unknown).
func samplePagesPerGiB(memBytes int64) int64 {
	if memBytes <= 0 {
		return 0
	}
	return min(max(dirtySamplePages*(1<<30)/memBytes, 128), 16384)
}

// threadCPU runs f on one locked OS thread and returns the CPU time that
// thread spent (user + system): the sampler's own cost.
func threadCPU(f func() error) (time.Duration, error) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	before, _ := threadRusage()
	err := f()
	after, _ := threadRusage()
	return max(after-before, 0), err
}

func threadRusage() (time.Duration, error) {
	const rusageThread = 1 // RUSAGE_THREAD (Linux)
	var ru syscall.Rusage
	if err := syscall.Getrusage(rusageThread, &ru); err != nil {
		return 0, err
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano()), nil
}

// telemetry returns the agent's telemetry hub, made on first use from
// Config.Telemetry.
func (a *Agent) telemetry() *telemetryHub {
	a.teleOnce.Do(func() { a.tele = newTelemetryHub(a, telemetrySchedule(a.cfg.Telemetry)) })
	return a.tele
}

// telemetrySchedule fills the defaults into a configured schedule.
func telemetrySchedule(s telemetry.Schedule) telemetry.Schedule {
	if s.DirtyEvery == 0 {
		s.DirtyEvery = telemetry.DefaultDirtyEvery
	}
	if s.RAMEvery == 0 {
		s.RAMEvery = telemetry.DefaultRAMEvery
	}
	if s.Settle == 0 {
		s.Settle = telemetry.DefaultSettle
	}
	if s.YoungFor == 0 && s.YoungDirtyEvery == 0 {
		s.YoungFor, s.YoungDirtyEvery = telemetry.DefaultYoungFor, telemetry.DefaultYoungDirtyEvery
	}
	return s
}
