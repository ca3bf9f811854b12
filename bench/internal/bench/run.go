package bench

import (
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"time"

	"github.com/ferryvm/ferry/bench/internal/report"
	"github.com/ferryvm/ferry/internal/agent"
	"github.com/ferryvm/ferry/internal/guestprobe"
)

// Scenario is one set of conditions (see report.Scenario).
type Scenario = report.Scenario

// Options configures a benchmark run.
type Options struct {
	Runs      int           // runs per scenario and system
	Scenarios []string      // see AllScenarios
	Systems   []string      // see AllSystems
	Cap       time.Duration // abort a migration after this long
	// LinkMiBps is the host-to-host rate in the shaped scenarios; half
	// dirties at LinkMiBps/2, heavy at 2×LinkMiBps, wan and flaky at a
	// third of it.
	LinkMiBps float64
	MemoryMiB int64 // guest RAM (big: BigMemoryMiB)
	WSSMiB    int64 // dirtier working set in half, heavy, wan and flaky
	// Settle is how long the guest's dirtier runs before the migration.
	Settle time.Duration
	// Warmup runs one unmeasured migration per Ferry system and shaping
	// setting, and one before a scenario with local disks (warmState),
	// before the measured runs, so that Ferry's server has learned the
	// rates QEMU's stream, the link and the disk mirror reach (a fresh
	// server only has its raw TCP probe and the planner's constants).
	Warmup bool
	// FerryStrategy is passed to `ferry migrate --strategy` unless empty.
	FerryStrategy string
	// FerryInsecure passes --insecure-transport to `ferry migrate`: the
	// migration and NBD streams in plaintext, as the libvirt systems run
	// (Ferry's default is TLS).
	FerryInsecure bool
	// FerryMultifd passes --multifd to `ferry migrate` unless 0 (Ferry's
	// planner chooses the channels).
	FerryMultifd int
	// Repo is the repository root (bin/ferry, build/guest, hack/deps.sh,
	// bench/scripts); ResultsDir the parent of the timestamped result
	// directory; Prefix the dev cluster's namespace prefix.
	Repo, ResultsDir, Prefix string
	Out                      io.Writer
}

// AllScenarios and AllSystems are the defaults, in run order.
var (
	AllScenarios = []string{"idle", "half", "heavy", "wan", "flaky", "big", "disk"}
	AllSystems   = []string{"ferry", "qemu", "libvirt", "libvirt-tuned", "libvirt-plain"}
)

// Fixed parameters of the wan, flaky and big scenarios.
const (
	WANDelayMs      = 20   // one-way delay
	WANLossPct      = 0.1  // frame loss each way
	FlakyFlaps      = 2    // link-down periods per migration
	FlakyDownMs     = 2000 // each one this long
	FlakyFirstMs    = 1500 // the first this long after the migration is issued
	FlakyGapMs      = 2000 // the next this long after the link came back
	BigMemoryMiB    = 4096 // the big guest's RAM
	BigNonZeroMiB   = 1024 // of which the dirtier fills this much
	DiskMemoryMiB   = 1024 // the disk scenario's guest RAM
	DiskMiB         = 4096 // its local disk's virtual size
	DiskAllocMiB    = 1024 // of which this much holds data before the guest boots
	DiskWriterKiBps = 512  // its disk writer (ferry.disk=RATE)
	defaultSettleMs = 3000
)

// scenarios resolves the scenario names.
func (o Options) scenarios() ([]Scenario, error) {
	var out []Scenario
	third := int64(math.Round(o.LinkMiBps / 3))
	for _, name := range o.Scenarios {
		sc := Scenario{Name: name, MemoryMiB: o.MemoryMiB}
		switch name {
		case "idle":
		case "half":
			sc.WSSMiB, sc.DirtyMiBps, sc.ShapedMiBps = o.WSSMiB, int64(math.Round(o.LinkMiBps/2)), o.LinkMiBps
		case "heavy":
			sc.WSSMiB, sc.DirtyMiBps, sc.ShapedMiBps = o.WSSMiB, int64(math.Round(o.LinkMiBps*2)), o.LinkMiBps
		case "wan":
			sc.WSSMiB, sc.DirtyMiBps, sc.ShapedMiBps = o.WSSMiB, third, o.LinkMiBps
			sc.DelayMs, sc.LossPct = WANDelayMs, WANLossPct
		case "flaky":
			sc.WSSMiB, sc.DirtyMiBps, sc.ShapedMiBps = o.WSSMiB, third, o.LinkMiBps
			sc.Flaps, sc.FlapDownMs, sc.FlapFirstMs, sc.FlapGapMs = FlakyFlaps, FlakyDownMs, FlakyFirstMs, FlakyGapMs
		case "big":
			sc.MemoryMiB, sc.WSSMiB = BigMemoryMiB, BigNonZeroMiB
		case "disk":
			sc.MemoryMiB, sc.DiskMiB, sc.DiskAllocMiB, sc.DiskKiBps = DiskMemoryMiB, DiskMiB, DiskAllocMiB, DiskWriterKiBps
		default:
			return nil, fmt.Errorf("-scenarios: unknown scenario %q (%s)", name, strings.Join(AllScenarios, ", "))
		}
		out = append(out, sc)
	}
	return out, nil
}

// linkKey identifies a link setting for the warm-up (flaps aside: the
// link is the same between them).
func linkKey(sc Scenario) string {
	return fmt.Sprintf("%g/%g/%g", sc.ShapedMiBps, sc.DelayMs, sc.LossPct)
}

// warmState says which warm-ups the Ferry runs had. A scenario on another
// link setting than the last warm-up's gets one (the link's and one
// stream's rate), also when an earlier scenario had its setting (big after
// flaky: the rate learned through the flaps would plan big); a scenario
// with local disks gets one too when no warm-up with disks ran since the
// link setting last changed (the mirrors' rate, which no disk-less
// migration teaches). Every other scenario plans with what the last
// warm-ups and measured runs taught: one warm-up per distinct setting.
type warmState struct{ link, disk string }

// due reports whether sc needs a warm-up.
func (w *warmState) due(sc Scenario) bool {
	k := linkKey(sc)
	return w.link != k || (sc.DiskMiB > 0 && w.disk != k)
}

// done records a warm-up of sc.
func (w *warmState) done(sc Scenario) {
	k := linkKey(sc)
	if w.link != k {
		w.disk = ""
	}
	w.link = k
	if sc.DiskMiB > 0 {
		w.disk = k
	}
}

// isFerry reports whether system is one of Ferry's (each transport learns
// its own stream and mirror rates, so each gets its warm-up).
func isFerry(system string) bool { return system == "ferry" || system == "ferry-plain" }

// Run runs the benchmark and writes the results; it returns the result
// directory. Everything it starts is stopped on every path.
func Run(ctx context.Context, o Options) (resultDir string, err error) {
	scenarios, err := o.scenarios()
	if err != nil {
		return "", err
	}
	for _, s := range o.Systems {
		if guestIP(s) == "" {
			return "", fmt.Errorf("-systems: unknown system %q (%s)", s, strings.Join(AllSystems, ", "))
		}
	}
	if os.Geteuid() != 0 {
		return "", errors.New("the benchmark needs root (network namespaces, taps, tc)")
	}
	ferryBin := filepath.Join(o.Repo, "bin", "ferry")
	guestDir := filepath.Join(o.Repo, "build", "guest")
	for _, f := range []string{ferryBin, filepath.Join(guestDir, "vmlinuz"), filepath.Join(guestDir, "initrd.img")} {
		if _, err := os.Stat(f); err != nil {
			return "", fmt.Errorf("%s missing: run `make build guest` first: %w", f, err)
		}
	}
	if usesLibvirt(o.Systems) {
		if err := ensureLibvirt(ctx, o); err != nil {
			return "", err
		}
	}
	logf := func(format string, args ...any) { fmt.Fprintf(o.Out, "==> "+format+"\n", args...) }
	est := Estimate(o, scenarios)
	logf("%d scenario(s) × %d system(s) × %d run(s), cap %s: estimated %s (finishing around %s UTC)",
		len(scenarios), len(o.Systems), o.Runs, o.Cap, est.Round(time.Minute), time.Now().Add(est).UTC().Format("15:04"))

	started := time.Now()
	resultDir = filepath.Join(o.ResultsDir, started.Format("20060102-150405"))
	if err := os.MkdirAll(resultDir, 0o755); err != nil {
		return "", fmt.Errorf("create result directory: %w", err)
	}
	base := filepath.Join("/run/ferry-bench", o.Prefix)
	env := &Env{Dir: filepath.Join(base, "work"), FerryBin: ferryBin, GuestDir: guestDir}
	if err := os.MkdirAll(env.Dir, 0o755); err != nil {
		return "", fmt.Errorf("create work directory: %w", err)
	}

	// Snapshot the ferry binary: bin/ferry may be rebuilt while we run, and
	// the CLI must stay the version of the daemons it talks to.
	snap := filepath.Join(env.Dir, "ferry")
	if _, err := run(ctx, "", "cp", ferryBin, snap); err != nil {
		return "", fmt.Errorf("snapshot %s: %w", ferryBin, err)
	}
	ferryBin, env.FerryBin = snap, snap
	binInfo := describeBinary(ctx, o.Repo, snap)
	if hasDisks(scenarios) {
		// The disk scenario's image, which every system's guest starts from
		// (Ferry's agents copy it as a local disk's source: --image-dir).
		logf("creating the disk scenario's image: %d MiB virtual, %d MiB of data", DiskMiB, DiskAllocMiB)
		if env.DiskBase, err = makeDiskBase(ctx, env.Dir, DiskMiB, DiskAllocMiB); err != nil {
			return "", err
		}
		os.Setenv(agent.ImageDirsEnv, env.Dir)
	}
	logf("bringing up a 2-host dev cluster (prefix %s) with Ferry's server and agents", o.Prefix)
	c, err := upEnv(ctx, o.Prefix, filepath.Join(base, "cluster"), ferryBin, guestDir, env.Dir)
	if err != nil {
		return "", err
	}
	env.Cluster = c
	env.Src, _ = c.Host("h1")
	env.Dst, _ = c.Host("h2")
	var systems []System
	defer func() {
		logf("cleaning up: systems, shaping, cluster")
		for _, s := range systems {
			if cerr := s.Close(); cerr != nil {
				fmt.Fprintf(o.Out, "    cleanup %s: %v\n", s.Name(), cerr)
			}
		}
		env.Unshape()
		dctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		if derr := c.Down(dctx); derr != nil {
			err = errors.Join(err, fmt.Errorf("tear down the benchmark cluster: %w", derr))
			return
		}
		_ = os.RemoveAll(base)
	}()

	var notes []string
	var lv, lvTuned *LibvirtSystem
	libvirtInfo := ""
	for _, name := range o.Systems {
		switch name {
		case "ferry":
			fs := NewFerrySystem(env, o.FerryStrategy)
			fs.Insecure, fs.Multifd = o.FerryInsecure, o.FerryMultifd
			systems = append(systems, fs)
		case "ferry-plain":
			fs := NewFerrySystem(env, o.FerryStrategy)
			fs.Plain, fs.Insecure, fs.Multifd = true, true, o.FerryMultifd
			systems = append(systems, fs)
		case "qemu":
			systems = append(systems, NewQEMUSystem(env))
		case "libvirt", "libvirt-tuned", "libvirt-plain":
			if lv == nil {
				logf("starting two private libvirtd (one per host namespace, each in its own mount namespace)")
				var err error
				lv, err = StartLibvirt(ctx, env, filepath.Join(o.Repo, "bench", "scripts", "libvirtd-ns.sh"))
				if err != nil {
					notes = append(notes, "libvirt skipped: "+err.Error())
					fmt.Fprintf(o.Out, "    libvirt unavailable, continuing without it: %v\n", err)
					lv = nil
					continue
				}
				libvirtInfo = lv.Version(ctx)
				logf("libvirt: %s", libvirtInfo)
			}
			switch name {
			case "libvirt":
				systems = append(systems, lv)
			case "libvirt-plain":
				systems = append(systems, lv.Plain())
			default:
				lvTuned = lv.Tuned()
				systems = append(systems, lvTuned)
			}
		}
	}

	pr := newProber(c.Client)
	var runs []report.Run
	var warmups []string
	var warm warmState
	loopErr := func() error {
		for i := range scenarios {
			sc := &scenarios[i]
			if err := ctx.Err(); err != nil {
				return err
			}
			if err := env.Shape(ctx, *sc); err != nil {
				return err
			}
			bw, err := env.MeasureBandwidth(ctx, 3*time.Second)
			if err != nil {
				return err
			}
			sc.MeasuredMiBps = bw
			logf("scenario %s: %d MiB guest, ferry.dirty=%d:%d, link %s, measured %.0f MiB/s (%d TCP streams)", sc.Name, sc.MemoryMiB, sc.WSSMiB, sc.DirtyMiBps, sc.LinkString(), bw, ProbeStreams)
			if o.Warmup && warm.due(*sc) {
				warm.done(*sc)
				for _, sys := range systems {
					if !isFerry(sys.Name()) {
						continue
					}
					what := "the rates QEMU's stream and the link reach"
					if sc.DiskMiB > 0 {
						what += ", and its disk mirror's"
					}
					logf("warm-up: one unmeasured %s migration with link %s (teaches the server %s)", sys.Name(), sc.LinkString(), what)
					r := runOne(ctx, env, pr, sys, *sc, 0, o)
					if err := ctx.Err(); err != nil {
						return err
					}
					wdir := filepath.Join(resultDir, "warmup")
					if err := os.MkdirAll(wdir, 0o755); err != nil {
						return fmt.Errorf("create %s: %w", wdir, err)
					}
					if err := writeJSON(filepath.Join(wdir, fmt.Sprintf("%s-%s-0.json", sc.Name, sys.Name())), r); err != nil {
						return err
					}
					fmt.Fprintf(o.Out, "    warm-up: %s\n", describe(r))
					warmups = append(warmups, warmupLine(r))
				}
			}
			for n := 1; n <= o.Runs; n++ {
				for _, sys := range systems {
					if err := ctx.Err(); err != nil {
						return err
					}
					if sc.DiskMiB > 0 && !migratesDisks(sys) {
						if n == 1 {
							notes = append(notes, fmt.Sprintf("%s: %s skipped (the harness drives no storage migration for it)", sc.Name, sys.Name()))
						}
						continue
					}
					if sc.DiskMiB == 0 && diskOnly(sys) {
						continue // the same migration as libvirt's but for --p2p
					}
					r := runOne(ctx, env, pr, sys, *sc, n, o)
					runs = append(runs, r)
					if err := writeJSON(filepath.Join(resultDir, fmt.Sprintf("%s-%s-%d.json", sc.Name, sys.Name(), n)), r); err != nil {
						return err
					}
					fmt.Fprintf(o.Out, "    %s\n", describe(r))
				}
			}
		}
		return nil
	}()
	env.Unshape()
	if len(runs) == 0 {
		return resultDir, loopErr
	}
	if loopErr != nil {
		notes = append(notes, "incomplete: "+loopErr.Error())
	}
	// Summarise what was measured, also after an interruption.
	defer func() { err = errors.Join(loopErr, err) }()

	meta := map[string]any{
		"started": started.UTC().Format(time.RFC3339), "runs": o.Runs, "capSeconds": o.Cap.Seconds(),
		"guest": fmt.Sprintf("%d MiB (big: %d MiB; disk: %d MiB with a %d MiB local qcow2 disk, %d MiB allocated, writer at %d KiB/s), 1 vCPU, TCG, WSS %d MiB in half/heavy/wan/flaky",
			o.MemoryMiB, BigMemoryMiB, DiskMemoryMiB, DiskMiB, DiskAllocMiB, DiskWriterKiBps, o.WSSMiB),
		"libvirt":        orDefault(libvirtInfo, "not run"),
		"libvirtTuned":   tunedInfo(lvTuned),
		"elapsed":        time.Since(started).Round(time.Second).String(),
		"ferryStrategy":  orDefault(o.FerryStrategy, "(Ferry's default)"),
		"ferryMultifd":   map[bool]string{true: "(Ferry's planner)", false: fmt.Sprintf("--multifd %d", o.FerryMultifd)}[o.FerryMultifd == 0],
		"ferryTransport": map[bool]string{false: "TLS (Ferry's default)", true: "plaintext (--insecure-transport)"}[o.FerryInsecure],
		"host":           fmt.Sprintf("%d CPUs, %s, guests under TCG", runtime.NumCPU(), kernelRelease()),
		"ferryBinary":    binInfo,
		"warmup":         warmupString(o.Warmup, contains(o.Systems, "ferry")),
		"warmupRuns":     warmups,
		"notes":          notes,
	}
	if err := writeSummary(resultDir, scenarios, runs, meta, o.Out); err != nil {
		return resultDir, err
	}
	return resultDir, nil
}

// writeSummary writes summary.json, summary.md (also printed to out) and
// one remaining-bytes plot per scenario into dir.
func writeSummary(dir string, scenarios []Scenario, runs []report.Run, meta map[string]any, out io.Writer) error {
	sum := report.Summarize(scenarios, runs, meta)
	if err := writeJSON(filepath.Join(dir, "summary.json"), sum); err != nil {
		return err
	}
	var md strings.Builder
	sum.Markdown(&md)
	if notes := report.StringList(meta["notes"]); len(notes) > 0 {
		md.WriteString("\n## Harness notes\n\n")
		for _, n := range notes {
			md.WriteString("- " + n + "\n")
		}
	}
	if err := os.WriteFile(filepath.Join(dir, "summary.md"), []byte(md.String()), 0o644); err != nil {
		return fmt.Errorf("write summary.md: %w", err)
	}
	for _, sc := range scenarios {
		var scRuns []report.Run
		for _, r := range runs {
			if r.Scenario == sc.Name {
				scRuns = append(scRuns, r)
			}
		}
		title := fmt.Sprintf("%s: remaining bytes (dirty %d MiB/s asked, link %s)", sc.Name, sc.DirtyMiBps, sc.LinkString())
		f, err := os.Create(filepath.Join(dir, "remaining-"+sc.Name+".svg"))
		if err != nil {
			return fmt.Errorf("write plot: %w", err)
		}
		err = report.PlotRemaining(f, title, scRuns)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return fmt.Errorf("write plot for %s: %w", sc.Name, err)
		}
	}
	fmt.Fprintf(out, "\n%s\nresults: %s\n", md.String(), dir)
	fmt.Fprintln(out, "\nprediction accuracy:")
	for _, ss := range sum.Scenarios {
		if ss.Prediction != nil {
			fmt.Fprintf(out, "  %s\n", ss.Prediction.Line(ss.Scenario.Name))
		}
	}
	fmt.Fprintln(out, "requirement checks:")
	for _, c := range sum.Checks {
		fmt.Fprintf(out, "  %s\n", c.Line())
	}
	return nil
}

// fillAborted completes the figures of a migration that did not finish:
// an aborted job's final statistics may be empty (QEMU drops them on
// cancel), so the bytes come from the last sample and the total is the
// time waited.
func fillAborted(m *report.Migration) {
	if n := len(m.Samples); n > 0 && m.TransferredBytes == 0 {
		m.TransferredBytes = m.Samples[n-1].TransferredBytes
	}
	if !m.Completed() && m.TotalMs == 0 {
		m.TotalMs = m.WallMs
	}
}

// runOne boots the guest with sys, measures it, migrates it and removes it.
func runOne(ctx context.Context, env *Env, pr *prober, sys System, sc Scenario, n int, o Options) (r report.Run) {
	g := newGuest(sys.Name(), sc, env.GuestDir, sc.MemoryMiB)
	if sc.DiskMiB > 0 {
		g.DiskSource, g.DiskMiB = env.DiskBase, sc.DiskMiB
	}
	spec := sc
	r = report.Run{Scenario: sc.Name, System: sys.Name(), Index: n, Started: time.Now().UTC(), Guest: g,
		ShapedMiBps: sc.ShapedMiBps, MeasuredMiBps: sc.MeasuredMiBps, Spec: &spec}
	fail := func(err error) report.Run { r.Error = err.Error(); return r }
	defer func() {
		dctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if err := sys.Destroy(dctx, g); err != nil && r.Error == "" {
			r.Error = "cleanup: " + err.Error()
		}
	}()
	_ = sys.Destroy(ctx, g) // leftovers of an interrupted run

	booted := time.Now()
	pid, err := sys.Boot(ctx, g)
	if err != nil {
		return fail(err)
	}
	r.QEMUBinary = qemuBinary(ctx, pid)
	if _, err := pr.waitDirtying(ctx, g.IP, 180*time.Second, o.Settle); err != nil {
		return fail(fmt.Errorf("%s guest not ready: %w", sys.Name(), err))
	}
	if r.NonZeroBytes, err = countNonZero(pid, g.MemoryMiB); err != nil {
		return fail(err)
	}
	stream, err := guestprobe.Dial(ctx, func(ctx context.Context, network, addr string) (net.Conn, error) {
		return pr.dial(ctx, network, addr)
	}, g.IP)
	if err != nil {
		return fail(err)
	}
	defer stream.Close()
	if err := stream.WaitLines(ctx, 250); err != nil {
		return fail(fmt.Errorf("guest stream: %w", err))
	}
	if p, ok := sys.(Planner); ok {
		// Right before the migration, with the same flags: what it
		// predicts (and changes nothing).
		r.DryRun = p.DryRun(ctx, g)
	}
	before, err := pr.status(ctx, g.IP)
	if err != nil {
		return fail(err)
	}
	r.BootIDBefore = before.BootID
	stream.WindowGap()

	r.UptimeMs = time.Since(booted).Milliseconds()
	cpu, cpuErr := startCPU(env, sys)
	flapCtx, stopFlaps := context.WithCancel(ctx)
	flapsDone := make(chan []report.LinkEvent, 1)
	issued := time.Now()
	go func() { flapsDone <- flap(flapCtx, env, sc, issued) }()
	rep, err := sys.Migrate(ctx, g, o.Cap)
	stopFlaps()
	r.LinkEvents = <-flapsDone
	if cpuErr == nil {
		r.CPU = cpu.Stop(env.Src.Name, env.Dst.Name)
	}
	fillAborted(&rep)
	r.Migration = rep
	if err != nil {
		return fail(err)
	}
	if cpuErr != nil {
		return fail(cpuErr)
	}
	time.Sleep(500 * time.Millisecond) // let a lingering stall show
	r.ClientGapMs = stream.WindowGap().Milliseconds()
	for _, gp := range stream.Gaps(issued) {
		r.ClientGaps = append(r.ClientGaps, report.ClientGap{EndMs: gp.End.Sub(issued).Milliseconds(), Ms: gp.Length.Milliseconds()})
	}
	after, err := pr.waitStatus(ctx, g.IP, 15*time.Second)
	if err != nil {
		return fail(fmt.Errorf("guest after migration: %w", err))
	}
	r.BootIDAfter = after.BootID
	r.Rebooted = after.BootID != before.BootID
	r.AchievedMiBps = after.AchievedMiBps
	if dt := after.DirtyElapsedS - before.DirtyElapsedS; dt > 0 && after.PagesDirtied >= before.PagesDirtied {
		r.WindowMiBps = float64(after.PagesDirtied-before.PagesDirtied) * 4096 / (1 << 20) / dt
	}
	if sc.DiskMiB > 0 && rep.Completed() {
		r.DiskVerify = pr.verify(ctx, g.IP)
	}
	st := stream.Close()
	r.StreamLines = st.Lines
	r.StreamBroken = st.Broken()
	if st.Err != nil {
		r.StreamError = st.Err.Error()
	}
	return r
}

// longestGaps lists the n longest client gaps as "LEN ms at END s"
// (after the migration was issued), longest first.
func longestGaps(gaps []report.ClientGap, n int) string {
	gs := slices.Clone(gaps)
	slices.SortStableFunc(gs, func(a, b report.ClientGap) int { return cmp.Compare(b.Ms, a.Ms) })
	var parts []string
	for _, g := range gs[:min(n, len(gs))] {
		parts = append(parts, fmt.Sprintf("%d ms at %.1f s", g.Ms, float64(g.EndMs)/1000))
	}
	return strings.Join(parts, ", ")
}

// describe is a one-line account of a run.
func describe(r report.Run) string {
	head := fmt.Sprintf("%-6s run %d %-13s", r.Scenario, r.Index, r.System)
	if r.Error != "" {
		return head + " ERROR: " + r.Error
	}
	m := r.Migration
	down := fmt.Sprintf("%4dms", m.DowntimeMs)
	if m.DowntimeUnknown {
		down = "     ?"
	}
	s := fmt.Sprintf("%s %-9s total %6.2fs downtime %s client gap %5dms sent %5.0f MiB rounds %3d non-zero %4.0f MiB dirty %5.1f MiB/s",
		head, m.Status, float64(m.TotalMs)/1000, down, r.ClientGapMs, float64(m.TransferredBytes)/(1<<20), m.Rounds,
		float64(r.NonZeroBytes)/(1<<20), r.AchievedMiBps)
	if r.Rebooted {
		s += " REBOOTED"
	}
	if gs := longestGaps(r.ClientGaps, 3); gs != "" {
		s += " (gaps " + gs + ")"
	}
	if r.StreamBroken {
		s += " STREAM BROKEN (" + r.StreamError + ")"
	}
	s += fmt.Sprintf(" wall %.2fs", float64(m.WallMs)/1000)
	if m.PlanningMs > 0 {
		s += fmt.Sprintf(" (planning %d ms)", m.PlanningMs)
	}
	if r.CPU != nil {
		s += fmt.Sprintf(" cpu %.2fs (qemu %.2f+%.2f, daemons %.2f+%.2f)", r.CPU.HostsS(), r.CPU.SrcQEMUS, r.CPU.DstQEMUS, r.CPU.SrcDaemonS, r.CPU.DstDaemonS)
	}
	if len(r.LinkEvents) > 0 {
		var ev []string
		for _, e := range r.LinkEvents {
			ev = append(ev, fmt.Sprintf("%.1fs %s", float64(e.TMs)/1000, e.What))
		}
		s += " link: " + strings.Join(ev, ", ")
	}
	if p := predictionString(r); p != "" {
		s += "\n    " + strings.Repeat(" ", len(head)) + p
	}
	return s
}

// predictionString is the run's predicted vs actual total, "" for systems
// that do not predict.
func predictionString(r report.Run) string {
	dr := r.DryRun
	if dr == nil {
		return ""
	}
	if dr.Predicted == nil {
		return "no prediction: dry run: " + firstLineOf(dr.Error)
	}
	p := dr.Predicted
	s := fmt.Sprintf("predicted total %.2f s vs actual ", float64(p.TotalMs)/1000)
	if e, ok := r.TotalErrorPct(); ok {
		s += fmt.Sprintf("%.2f s (error %+.0f%%)", float64(r.Migration.TotalMs)/1000, e)
	} else {
		s += fmt.Sprintf("— (%s)", orDefault(r.Migration.Status, "no migration"))
	}
	s += fmt.Sprintf("; downtime predicted %d ms vs actual %d ms; dry-run choice %s", p.DowntimeMs, r.Migration.DowntimeMs, orDefault(dr.Choice, "—"))
	if r.Migration.Strategy != "" && r.Migration.Strategy != p.Strategy {
		s += fmt.Sprintf(", ran %s", r.Migration.Strategy)
	}
	if rp := r.Migration.Predicted; rp != nil {
		s += fmt.Sprintf("; report's own prediction %.2f s / %d ms", float64(rp.TotalMs)/1000, rp.DowntimeMs)
	}
	s += fmt.Sprintf("; link %.0f MiB/s (%s)", dr.BandwidthMiBps, dr.BandwidthSource)
	if dr.StreamSource != "" {
		s += fmt.Sprintf("; stream %.0f MiB/s (%s)", dr.StreamMiBps, dr.StreamSource)
	}
	if dr.MirrorSource != "" {
		s += fmt.Sprintf("; mirror %.0f MiB/s (%s)", dr.MirrorMiBps, dr.MirrorSource)
	}
	return s
}

// warmupLine summarises a warm-up run for the summary.
func warmupLine(r report.Run) string {
	link := shapedString(r.ShapedMiBps)
	if r.Spec != nil {
		link = r.Spec.LinkString()
	}
	head := fmt.Sprintf("%s (link %s)", r.Scenario, link)
	if r.Error != "" {
		return head + ": " + firstLineOf(r.Error)
	}
	s := fmt.Sprintf("%s: %s %s, total %.2f s", head, orDefault(r.Migration.Strategy, "?"), r.Migration.Status, float64(r.Migration.TotalMs)/1000)
	if p := predictionString(r); p != "" {
		s += "; " + p
	}
	return s
}

func tunedInfo(s *LibvirtSystem) string {
	if s == nil {
		return "not run"
	}
	return "virsh migrate --live --p2p " + s.Flags()
}

func warmupString(on, ferry bool) string {
	switch {
	case !ferry:
		return "n/a (no Ferry runs)"
	case on:
		return "on (one unmeasured migration per Ferry system and shaping setting, and one before a scenario with local disks, before the measured runs)"
	}
	return "off (-warmup=false): the first Ferry run plans without a learned rate"
}

// describeBinary identifies the ferry binary the benchmark uses: the
// repository's commit (and whether its tree had changes) and the copy's
// SHA-256.
func describeBinary(ctx context.Context, repo, bin string) string {
	sum := "?"
	if f, err := os.Open(bin); err == nil {
		h := sha256.New()
		if _, err := io.Copy(h, f); err == nil {
			sum = hex.EncodeToString(h.Sum(nil))[:16]
		}
		f.Close()
	}
	rev := "?"
	if out, err := run(ctx, "", "git", "-C", repo, "rev-parse", "--short", "HEAD"); err == nil {
		rev = strings.TrimSpace(out)
		if st, err := run(ctx, "", "git", "-C", repo, "status", "--porcelain", "--untracked-files=no"); err == nil && strings.TrimSpace(st) != "" {
			rev += " (tree modified)"
		}
	}
	return fmt.Sprintf("bin/ferry copied at start, sha256 %s…, repository at %s", sum, rev)
}

func firstLineOf(s string) string {
	s, _, _ = strings.Cut(strings.TrimSpace(s), "\n")
	return s
}

func writeJSON(path string, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return fmt.Errorf("encode %s: %w", filepath.Base(path), err)
	}
	if err := os.WriteFile(path, append(b, '\n'), 0o644); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

func shapedString(mibps float64) string {
	if mibps <= 0 {
		return "none"
	}
	return fmt.Sprintf("%.0f MiB/s", mibps)
}

func orDefault(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

func contains(xs []string, s string) bool {
	for _, x := range xs {
		if x == s {
			return true
		}
	}
	return false
}

func kernelRelease() string {
	b, err := os.ReadFile("/proc/sys/kernel/osrelease")
	if err != nil {
		return "unknown kernel"
	}
	return "Linux " + strings.TrimSpace(string(b))
}
