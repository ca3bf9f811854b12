package report

import (
	"fmt"
	"math"
	"slices"
	"strings"
)

// Requirement thresholds (issue 13, "What it must show").
const (
	IdleMaxDowntimeMs       = 50  // Ferry's idle downtime
	IdleMaxDowntimeVsQEMU   = 1.5 // × plain QEMU's idle downtime
	IdleMaxWallVsQEMU       = 1.3 // × plain QEMU's idle wall time
	HalfMaxTotalVsBound     = 1.5 // × the bound
	HeavyMaxClientGapMs     = 500 // median client gap
	PlanningMaxMs           = 100 // planning time of a VM running > 1 min
	peerCompletesMinRuns    = 1
	scenariosMustComplete   = "wan,flaky"
	scenariosMustAllRunsRun = "heavy,wan,flaky"
)

// summaryIndex finds rows and runs.
type summaryIndex struct {
	scs  []ScenarioSummary
	runs []Run
}

func (ix summaryIndex) row(scenario, system string) (Row, bool) {
	for _, ss := range ix.scs {
		if ss.Scenario.Name != scenario {
			continue
		}
		for _, r := range ss.Rows {
			if r.System == system {
				return r, true
			}
		}
	}
	return Row{}, false
}

func (ix summaryIndex) scenario(name string) (ScenarioSummary, bool) {
	for _, ss := range ix.scs {
		if ss.Scenario.Name == name {
			return ss, true
		}
	}
	return ScenarioSummary{}, false
}

// rowLine is a row's figures for a check's detail.
func rowLine(r Row) string {
	s := fmt.Sprintf("%s %d/%d completed, total %s s, downtime %s ms, client gap %s ms, wall %s s, sent %s MiB, CPU %s s",
		r.System, r.Completed, r.Runs, fmtNum("%.2f", r.TotalMs/1000), fmtNum("%.0f", r.DowntimeMs), fmtNum("%.0f", r.ClientGapMs),
		fmtNum("%.2f", r.WallMs/1000), fmtNum("%.0f", r.Bytes/(1<<20)), fmtNum("%.1f", r.CPUS))
	if len(r.Strategies) > 0 {
		s += ", ran " + counts(r.Strategies)
	}
	return s
}

// verdict is PASS when ok, else FAIL; N/A when a figure is missing.
func verdict(ok bool, figures ...F) string {
	for _, f := range figures {
		if math.IsNaN(float64(f)) {
			return "N/A"
		}
	}
	if ok {
		return "PASS"
	}
	return "FAIL"
}

// checks evaluates the requirements against the runs; every detail
// carries the figures it was decided on.
func checks(scs []ScenarioSummary, runs []Run) []Check {
	ix := summaryIndex{scs, runs}
	var out []Check
	add := func(c Check) { out = append(out, c) }

	// idle downtime and wall time.
	if f, ok := ix.row("idle", "ferry"); ok {
		add(Check{Name: fmt.Sprintf("idle: Ferry median downtime ≤ %d ms", IdleMaxDowntimeMs),
			Result: verdict(f.DowntimeMs <= IdleMaxDowntimeMs, f.DowntimeMs), Detail: rowLine(f)})
		if q, ok := ix.row("idle", "qemu"); ok {
			lim := q.DowntimeMs * IdleMaxDowntimeVsQEMU
			add(Check{Name: fmt.Sprintf("idle: Ferry median downtime ≤ %.1f× plain QEMU's", IdleMaxDowntimeVsQEMU),
				Result: verdict(f.DowntimeMs <= lim, f.DowntimeMs, q.DowntimeMs),
				Detail: fmt.Sprintf("Ferry %s ms vs QEMU %s ms (limit %s ms, ratio %s)", fmtNum("%.0f", f.DowntimeMs), fmtNum("%.0f", q.DowntimeMs),
					fmtNum("%.0f", lim), fmtNum("%.2f", f.DowntimeMs/q.DowntimeMs))})
			// The same limit on the measure both systems share: QEMU's own
			// downtime stops at the source's last byte, Ferry's runs to the
			// destination's RESUME.
			{
				pl := q.PauseMs * IdleMaxDowntimeVsQEMU
				add(Check{Name: fmt.Sprintf("idle: Ferry median guest pause (source STOP to destination RESUME) ≤ %.1f× plain QEMU's", IdleMaxDowntimeVsQEMU),
					Result: verdict(f.PauseMs <= pl, f.PauseMs, q.PauseMs),
					Detail: fmt.Sprintf("Ferry %s ms vs QEMU %s ms (limit %s ms, ratio %s); QEMU's own downtime figure for the same runs %s ms",
						fmtNum("%.0f", f.PauseMs), fmtNum("%.0f", q.PauseMs), fmtNum("%.0f", pl), fmtNum("%.2f", f.PauseMs/q.PauseMs), fmtNum("%.0f", q.DowntimeMs))})
			}
			wl := q.WallMs * IdleMaxWallVsQEMU
			add(Check{Name: fmt.Sprintf("idle: Ferry median wall time (with planning) ≤ %.1f× plain QEMU's", IdleMaxWallVsQEMU),
				Result: verdict(f.WallMs <= wl, f.WallMs, q.WallMs),
				Detail: fmt.Sprintf("Ferry %s s (planning %s ms) vs QEMU %s s (limit %s s, ratio %s)", fmtNum("%.2f", f.WallMs/1000),
					fmtNum("%.0f", f.PlanningMs), fmtNum("%.2f", q.WallMs/1000), fmtNum("%.2f", wl/1000), fmtNum("%.2f", f.WallMs/q.WallMs))})
		}
	}
	// half total vs the bound.
	if ss, ok := ix.scenario("half"); ok {
		if f, ok := ix.row("half", "ferry"); ok {
			lim := ss.BoundMs * HalfMaxTotalVsBound
			add(Check{Name: fmt.Sprintf("half: Ferry median total ≤ %.1f× the bound", HalfMaxTotalVsBound),
				Result: verdict(f.TotalMs <= lim, f.TotalMs, ss.BoundMs),
				Detail: fmt.Sprintf("Ferry %s s vs bound %s s (%s MiB non-zero ÷ %.0f MiB/s): %s×", fmtNum("%.2f", f.TotalMs/1000),
					fmtNum("%.2f", ss.BoundMs/1000), fmtNum("%.0f", ss.NonZeroBytes/(1<<20)), ss.Scenario.MeasuredMiBps, fmtNum("%.2f", f.TotalMs/ss.BoundMs))})
		}
	}
	// heavy, wan, flaky: every Ferry run completes.
	for _, sc := range strings.Split(scenariosMustAllRunsRun, ",") {
		f, ok := ix.row(sc, "ferry")
		if !ok {
			continue
		}
		c := Check{Name: sc + ": every Ferry run completes (same boot, stream intact)", Detail: rowLine(f)}
		c.Result = verdict(f.Runs > 0 && f.Clean == f.Runs)
		if bad := badRuns(runs, sc, "ferry"); len(bad) > 0 {
			c.Detail += "; " + strings.Join(bad, "; ")
		}
		if slices.Contains(strings.Split(scenariosMustComplete, ","), sc) {
			var peers []string
			for _, p := range Peers {
				if r, ok := ix.row(sc, p); ok {
					peers = append(peers, rowLine(r))
				}
			}
			if len(peers) > 0 {
				c.Detail += ". Peers: " + strings.Join(peers, "; ")
			}
		}
		add(c)
		if sc == "heavy" {
			add(Check{Name: fmt.Sprintf("heavy: Ferry median client gap ≤ %d ms", HeavyMaxClientGapMs),
				Result: verdict(f.ClientGapMs <= HeavyMaxClientGapMs, f.ClientGapMs),
				Detail: fmt.Sprintf("median %s ms over %d completed runs (downtime median %s ms)", fmtNum("%.0f", f.ClientGapMs), f.Completed, fmtNum("%.0f", f.DowntimeMs))})
		}
	}
	// Prediction accuracy in every scenario Ferry runs.
	for _, ss := range scs {
		p := ss.Prediction
		if p == nil {
			continue
		}
		c := Check{Name: fmt.Sprintf("%s: Ferry's dry-run total within ±%d %% of the actual", ss.Scenario.Name, PredictionTolerancePct), Detail: p.Line(ss.Scenario.Name) + "; every run must be within"}
		c.Result = verdict(p.Runs > 0 && p.Within && p.RunsWithin == p.Runs)
		if p.Runs == 0 {
			c.Result = "FAIL"
		}
		add(c)
	}
	// Ferry vs each peer that completes: total no worse; downtime no
	// worse than libvirt's.
	for _, ss := range scs {
		f, ok := ix.row(ss.Scenario.Name, "ferry")
		if !ok {
			continue
		}
		for _, peer := range Peers {
			o, ok := ix.row(ss.Scenario.Name, peer)
			if !ok || o.Completed < peerCompletesMinRuns {
				continue
			}
			metrics := []struct {
				what string
				get  func(Row) F
				unit string
				div  float64
			}{{"median total", func(r Row) F { return r.TotalMs }, "s", 1000}}
			if strings.HasPrefix(peer, "libvirt") {
				metrics = append(metrics, struct {
					what string
					get  func(Row) F
					unit string
					div  float64
				}{"median downtime", func(r Row) F { return r.DowntimeMs }, "ms", 1})
			}
			for _, m := range metrics {
				fv, pv := m.get(f), m.get(o)
				c := Check{Name: fmt.Sprintf("%s: Ferry %s ≤ %s's", ss.Scenario.Name, m.what, peer)}
				c.Result = verdict(fv <= pv, pv)
				if math.IsNaN(float64(fv)) {
					c.Result = "FAIL" // the peer completed, Ferry did not
				}
				format := "%.0f"
				if m.div > 1 {
					format = "%.2f"
				}
				c.Detail = fmt.Sprintf("Ferry %s %s vs %s %s %s (ratio %s). Figures: %s | %s", fmtNum(format, fv/F(m.div)), m.unit, peer,
					fmtNum(format, pv/F(m.div)), m.unit, fmtNum("%.2f", fv/pv), rowLine(f), rowLine(o))
				if m.what == "median downtime" && math.IsNaN(float64(pv)) {
					c.Detail += fmt.Sprintf(". %s reported no downtime for its %d completed run(s) (libvirt keeps no statistics after a post-copy migration); the client gap is the guest-side figure", peer, o.Completed)
				}
				add(c)
			}
		}
	}
	// Planning time.
	var plan, up []float64
	for _, r := range runs {
		if r.System == "ferry" && r.Migration.Completed() {
			plan = append(plan, float64(r.Migration.PlanningMs))
			if r.UptimeMs > 0 {
				up = append(up, float64(r.UptimeMs))
			}
		}
	}
	if len(plan) > 0 {
		m := median(plan)
		up = append(up, 0) // slices.Max needs one; 0 s is "not recorded"
		add(Check{Name: fmt.Sprintf("all scenarios: Ferry median planning time < %d ms", PlanningMaxMs),
			Result: verdict(m < PlanningMaxMs, m),
			Detail: fmt.Sprintf("median %s ms, max %.0f ms over %d completed runs; the VMs had run for %s s (median, max %.0f s) when they migrated, the requirement is for VMs running over a minute",
				fmtNum("%.0f", m), slices.Max(plan), len(plan), fmtNum("%.0f", median(up[:len(up)-1])/1000), slices.Max(up)/1000)})
	}
	// The same QEMU for every system.
	bins := map[string][]string{}
	for _, r := range runs {
		if r.QEMUBinary != "" && !slices.Contains(bins[r.QEMUBinary], r.System) {
			bins[r.QEMUBinary] = append(bins[r.QEMUBinary], r.System)
		}
	}
	if len(bins) > 0 {
		var parts []string
		for b, sys := range bins {
			parts = append(parts, b+": "+strings.Join(sys, ", "))
		}
		slices.Sort(parts)
		add(Check{Name: "every system runs the same QEMU binary", Result: verdict(len(bins) == 1), Detail: strings.Join(parts, "; ")})
	}
	return out
}

// badRuns lists the runs of system in scenario that did not complete
// cleanly, with why.
func badRuns(runs []Run, scenario, system string) []string {
	var bad []string
	for _, r := range runs {
		if r.Scenario != scenario || r.System != system || r.OK() {
			continue
		}
		id := fmt.Sprintf("run %d", r.Index)
		switch {
		case r.Error != "":
			bad = append(bad, id+": "+firstLine(r.Error))
		case !r.Migration.Completed():
			bad = append(bad, id+": "+r.Migration.Status+" "+firstLine(r.Migration.Error))
		case r.Rebooted:
			bad = append(bad, id+": rebooted")
		case r.StreamBroken:
			bad = append(bad, id+": stream broken ("+firstLine(r.StreamError)+")")
		}
	}
	return bad
}
