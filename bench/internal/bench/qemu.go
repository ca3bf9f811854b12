package bench

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"time"

	ferryv1 "github.com/ferryvm/ferry/gen/ferry/v1"
	"github.com/ferryvm/ferry/internal/devcluster"
	"github.com/ferryvm/ferry/internal/netdev"
	"github.com/ferryvm/ferry/internal/netnsutil"
	"github.com/ferryvm/ferry/internal/qemu"
	"github.com/ferryvm/ferry/internal/qmp"
)

// qemuPort is the destination's -incoming port.
const qemuPort = 49300

// QEMUSystem is plain QEMU with its migration defaults: the harness starts
// the same argv Ferry's agent renders (internal/qemu.Args) on both hosts,
// the destination with -incoming tcp:DST:PORT, and issues QMP migrate with
// no parameter or capability set (128 MiB/s cap, 300 ms downtime limit).
type QEMUSystem struct {
	env *Env
	// per guest: the two QEMUs and their directories
	src, dst       *proc
	srcDir, dstDir string
}

// NewQEMUSystem returns the plain-QEMU system.
func NewQEMUSystem(env *Env) *QEMUSystem { return &QEMUSystem{env: env} }

// Name implements System.
func (s *QEMUSystem) Name() string { return "qemu" }

// argv renders the QEMU argv for g in dir (without the binary).
func (s *QEMUSystem) argv(g Guest, dir string) ([]string, error) {
	vs := &ferryv1.VMSpec{
		Name: g.Name, Vcpus: g.Vcpus, MemoryMib: g.MemoryMiB, Accel: "tcg",
		Boot: &ferryv1.BootSpec{Kernel: g.Kernel, Initrd: g.Initrd, Cmdline: g.Cmdline},
		Nics: []*ferryv1.NICSpec{{Mac: g.MAC}},
	}
	return qemu.Args(qemu.Config{
		Spec:  vs,
		Accel: "tcg",
		Paths: qemu.PathsFor(dir),
		NICs:  []qemu.NIC{{Tap: netdev.TapName(g.Name, 0), MAC: g.MAC}},
	})
}

// start creates the tap on host h's bridge and starts QEMU there.
func (s *QEMUSystem) start(h devcluster.Host, g Guest, dir string, extra ...string) (*proc, error) {
	if err := os.RemoveAll(dir); err != nil {
		return nil, fmt.Errorf("clean %s: %w", dir, err)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("create %s: %w", dir, err)
	}
	argv, err := s.argv(g, dir)
	if err != nil {
		return nil, fmt.Errorf("render QEMU argv: %w", err)
	}
	tap := netdev.TapName(g.Name, 0)
	if err := netnsutil.Do(h.Netns, func() error { return netdev.CreateTap(tap, h.Bridge, 0) }); err != nil {
		return nil, fmt.Errorf("create tap %s in %s: %w", tap, h.Netns, err)
	}
	p, err := startProc(h.Netns, filepath.Join(dir, "qemu.log"), "qemu-system-x86_64", append(argv, extra...)...)
	if err != nil {
		_ = netnsutil.Do(h.Netns, func() error { return netdev.DeleteTap(tap) })
		return nil, err
	}
	return p, nil
}

// connect waits for QEMU's QMP socket in dir and connects to it.
func connectQMP(ctx context.Context, p *proc, dir string) (*qmp.Monitor, error) {
	sock := qemu.PathsFor(dir).QMPSocket
	deadline := time.Now().Add(30 * time.Second)
	for {
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		m, err := qmp.Connect(cctx, sock, qmp.WithLogFile(filepath.Join(dir, "bench-qmp.log")))
		cancel()
		if err == nil {
			return m, nil
		}
		if p.Exited() {
			return nil, fmt.Errorf("QEMU exited: %s", tail(p.log, 600))
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return nil, fmt.Errorf("connect to QMP %s: %w", sock, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// Boot implements System.
func (s *QEMUSystem) Boot(ctx context.Context, g Guest) (int, error) {
	s.srcDir = filepath.Join(s.env.Dir, "q-src")
	p, err := s.start(s.env.Src, g, s.srcDir)
	if err != nil {
		return 0, fmt.Errorf("plain QEMU: boot on %s: %w", s.env.Src.Name, err)
	}
	s.src = p
	m, err := connectQMP(ctx, p, s.srcDir)
	if err != nil {
		return 0, fmt.Errorf("plain QEMU: boot on %s: %w", s.env.Src.Name, err)
	}
	m.Close()
	return p.PID(), nil
}

// Migrate implements System.
func (s *QEMUSystem) Migrate(ctx context.Context, g Guest, limit time.Duration) (Report, error) {
	var rep Report
	s.dstDir = filepath.Join(s.env.Dir, "q-dst")
	listen := net.JoinHostPort(s.env.Dst.IP, strconv.Itoa(qemuPort))
	dst, err := s.start(s.env.Dst, g, s.dstDir, "-incoming", "tcp:"+listen)
	if err != nil {
		return rep, fmt.Errorf("plain QEMU: start destination: %w", err)
	}
	s.dst = dst
	dm, err := connectQMP(ctx, dst, s.dstDir)
	if err != nil {
		return rep, fmt.Errorf("plain QEMU: destination: %w", err)
	}
	defer dm.Close()
	sm, err := connectQMP(ctx, s.src, s.srcDir)
	if err != nil {
		return rep, fmt.Errorf("plain QEMU: source: %w", err)
	}
	defer sm.Close()
	// The guest's pause, as Ferry's report measures it: the source's STOP
	// to the destination's RESUME, by the events' timestamps.
	stops, resumes := sm.Subscribe("STOP"), dm.Subscribe("RESUME")
	defer stops.Close()
	defer resumes.Close()

	t0 := time.Now()
	if err := sm.Migrate(ctx, "tcp:"+listen, qmp.MigrateOptions{}); err != nil {
		return rep, fmt.Errorf("plain QEMU: migrate: %w", err)
	}
	aborted := false
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	var info qmp.MigrationInfo
	// A cancelled migration's query-migrate carries no RAM statistics:
	// keep the last ones seen.
	var lastRAM *qmp.MigrationStats
	for {
		qctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		info, err = sm.QueryMigrate(qctx)
		cancel()
		if err != nil {
			return rep, fmt.Errorf("plain QEMU: query-migrate: %w", err)
		}
		if info.RAM != nil {
			lastRAM = info.RAM
			rep.Samples = append(rep.Samples, Sample{TMs: time.Since(t0).Milliseconds(), RemainingBytes: info.RAM.Remaining, TransferredBytes: info.RAM.Transferred})
		}
		if info.CurrentStatus().Finished() {
			break
		}
		if !aborted && time.Since(t0) > limit {
			aborted = true
			if err := sm.MigrateCancel(ctx); err != nil {
				return rep, fmt.Errorf("plain QEMU: migrate_cancel at the %s cap: %w", limit, err)
			}
		}
		select {
		case <-ctx.Done():
			_ = sm.MigrateCancel(context.Background())
			return rep, ctx.Err()
		case <-tick.C:
		}
	}
	rep.WallMs = time.Since(t0).Milliseconds()
	rep.Status = string(info.CurrentStatus())
	if aborted && info.CurrentStatus() != qmp.MigrationStatusCompleted {
		rep.Status = "aborted"
	}
	rep.Error = info.ErrorDesc
	if info.TotalTime != nil {
		rep.TotalMs = *info.TotalTime
	}
	if info.Downtime != nil {
		rep.DowntimeMs = *info.Downtime
	}
	if info.RAM == nil {
		info.RAM = lastRAM
	}
	if info.RAM != nil {
		rep.TransferredBytes = info.RAM.Transferred
		rep.Rounds = info.RAM.DirtySyncCount
		rep.BandwidthMiBps = info.RAM.Mbps * 1e6 / 8 / (1 << 20)
	}
	rep.Raw, _ = json.Marshal(info)
	if rep.Completed() {
		rep.PauseMs = pauseMs(ctx, stops, resumes)
	}
	if rep.Completed() {
		// The source stays paused (postmigrate); the destination runs.
		_ = sm.Quit(ctx)
	}
	return rep, nil
}

// pauseMs is the time from the first STOP on stops to the first RESUME on
// resumes, by the events' timestamps; 0 when either did not come within
// 2 s of the migration's end or the clocks disagree (RESUME before STOP).
func pauseMs(ctx context.Context, stops, resumes *qmp.Subscription) int64 {
	wctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	stop, err := stops.Next(wctx)
	if err != nil {
		return 0
	}
	resume, err := resumes.Next(wctx)
	if err != nil || stop.Timestamp.IsZero() || resume.Timestamp.IsZero() {
		return 0
	}
	if d := resume.Timestamp.Sub(stop.Timestamp); d >= 0 {
		return d.Milliseconds()
	}
	return 0
}

// Destroy implements System.
func (s *QEMUSystem) Destroy(ctx context.Context, g Guest) error {
	tap := netdev.TapName(g.Name, 0)
	var errs []error
	for _, side := range []struct {
		p *proc
		h devcluster.Host
	}{{s.src, s.env.Src}, {s.dst, s.env.Dst}} {
		side.p.Stop(3 * time.Second)
		if err := netnsutil.Do(side.h.Netns, func() error { return netdev.DeleteTap(tap) }); err != nil {
			errs = append(errs, fmt.Errorf("plain QEMU: delete tap in %s: %w", side.h.Netns, err))
		}
	}
	s.src, s.dst = nil, nil
	return errors.Join(errs...)
}

// Close implements System.
func (s *QEMUSystem) Close() error { return nil }
