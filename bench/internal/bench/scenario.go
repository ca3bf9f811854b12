package bench

import (
	"context"
	"fmt"
	"os"
	"sync"
	"time"

	"github.com/ferryvm/ferry/bench/internal/report"
)

// flap takes the emulated link down sc.Flaps times for sc.FlapDownMs
// while a migration runs (issued at t0), the first sc.FlapFirstMs after
// t0, the next sc.FlapGapMs after the link came back, and stops when ctx
// is done (the migration ended). The link is always up again when it
// returns. It returns what it did.
func flap(ctx context.Context, env *Env, sc Scenario, t0 time.Time) []report.LinkEvent {
	if sc.Flaps <= 0 {
		return nil
	}
	var ev []report.LinkEvent
	note := func(what string) { ev = append(ev, report.LinkEvent{TMs: time.Since(t0).Milliseconds(), What: what}) }
	sleep := func(d time.Duration) bool {
		select {
		case <-ctx.Done():
			return false
		case <-time.After(d):
			return true
		}
	}
	wait := time.Duration(sc.FlapFirstMs) * time.Millisecond
	for i := 0; i < sc.Flaps; i++ {
		if !sleep(wait) {
			note(fmt.Sprintf("migration ended before flap %d", i+1))
			return ev
		}
		if err := env.SetLinkDown(context.Background(), true); err != nil {
			note("link down failed: " + err.Error())
			return ev
		}
		note("down")
		sleep(time.Duration(sc.FlapDownMs) * time.Millisecond) // always bring it back up, also after the end
		uctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		err := env.SetLinkDown(uctx, false)
		cancel()
		if err != nil {
			note("link up failed: " + err.Error())
			return ev
		}
		note("up")
		wait = time.Duration(sc.FlapGapMs) * time.Millisecond
	}
	return ev
}

var (
	qemuVersionsMu sync.Mutex
	qemuVersions   = map[string]string{}
)

// qemuBinary is the executable of process pid and its version line, e.g.
// "/usr/bin/qemu-system-x86_64 (QEMU emulator version 10.0.2 …)": every
// system must run the same QEMU.
func qemuBinary(ctx context.Context, pid int) string {
	exe, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid))
	if err != nil {
		return "unknown: " + err.Error()
	}
	qemuVersionsMu.Lock()
	defer qemuVersionsMu.Unlock()
	v, ok := qemuVersions[exe]
	if !ok {
		out, err := run(ctx, "", exe, "--version")
		if err != nil {
			v = "version unknown"
		} else {
			v = firstLineOf(out)
		}
		qemuVersions[exe] = v
	}
	return exe + " (" + v + ")"
}

// usesLibvirt reports whether a libvirt system is among systems.
func usesLibvirt(systems []string) bool {
	return contains(systems, "libvirt") || contains(systems, "libvirt-tuned") || contains(systems, "libvirt-plain")
}

// Per-run costs outside the migration, measured on this machine (2 CPUs,
// TCG): boot until the dirtier runs, the settle time, the memory scan and
// teardown; the big guest boots and fills 1 GiB for longer; Ferry adds
// its dry run.
const (
	estRunOverhead = 11 * time.Second
	estBigExtra    = 14 * time.Second
	estDiskExtra   = 10 * time.Second // the disk image's copy at boot, the guest's /verify
	estDryRun      = 2 * time.Second
	estClusterUp   = 40 * time.Second // cluster, Ferry, libvirtd, probes
)

// estMigration is how long a migration is expected to take (measured in
// the smoke runs); 0 means "does not converge: runs to the cap".
func estMigration(scenario, system string) time.Duration {
	s := func(x float64) time.Duration { return time.Duration(x * float64(time.Second)) }
	switch scenario {
	case "idle":
		return s(1)
	case "half":
		return s(16)
	case "heavy":
		if system == "ferry" || system == "libvirt-tuned" {
			return s(16)
		}
		return 0
	case "wan":
		return s(18)
	case "flaky":
		return s(24)
	case "big":
		return s(13)
	case "disk":
		return s(25) // guessed, not measured in a smoke run yet
	}
	return s(20)
}

// Estimate is the expected duration of a benchmark run with o.
func Estimate(o Options, scenarios []Scenario) time.Duration {
	d := estClusterUp
	var warm warmState // as in Run
	for _, sc := range scenarios {
		d += 4 * time.Second // bandwidth probe, shaping
		warmNow := o.Warmup && warm.due(sc)
		if warmNow {
			warm.done(sc)
		}
		for _, sys := range o.Systems {
			if sc.DiskMiB > 0 && sys == "qemu" {
				continue // skipped: no storage migration driven for it
			}
			if sc.DiskMiB == 0 && sys == "libvirt-plain" {
				continue // disk scenarios only
			}
			one := estRunOverhead
			if sc.Name == "big" {
				one += estBigExtra
			}
			if sc.DiskMiB > 0 {
				one += estDiskExtra
			}
			m := estMigration(sc.Name, sys)
			if m == 0 || m > o.Cap {
				m = o.Cap + 5*time.Second // abort and its aftermath
			}
			one += m + o.Settle - defaultSettleMs*time.Millisecond
			if isFerry(sys) {
				one += estDryRun
				if warmNow {
					d += one
				}
			}
			d += time.Duration(o.Runs) * one
		}
	}
	return d
}

// EstimateFor is Estimate for the scenarios o names.
func EstimateFor(o Options) (time.Duration, error) {
	scs, err := o.scenarios()
	if err != nil {
		return 0, err
	}
	return Estimate(o, scs), nil
}
