package report

import (
	"encoding/json"
	"fmt"
	"io"
	"math"
	"slices"
	"strings"
)

// Systems is the order systems appear in tables and plots.
var Systems = []string{"ferry", "qemu", "libvirt", "libvirt-tuned", "libvirt-plain"}

// tableSystems is the order of tables and plots: Systems with ferry-plain
// (Ferry with --insecure-transport) right after ferry.
func tableSystems() []string {
	return append([]string{Systems[0], "ferry-plain"}, Systems[1:]...)
}

// probeStreams is the harness's number of bandwidth-probe streams (see
// bench.ProbeStreams), for the text.
const probeStreams = 4

// Peers are the systems Ferry is compared with.
var Peers = []string{"qemu", "libvirt", "libvirt-tuned", "libvirt-plain"}

// RatioPeers are the systems of the ratio table: Peers and ferry-plain
// (Ferry with insecureTransport: ferry ÷ ferry-plain is the cost of TLS).
var RatioPeers = append(append([]string{}, Peers...), "ferry-plain")

// Row is the summary of one system in one scenario. Time medians (total,
// downtime, client gap) are over completed runs; bytes over all runs.
type Row struct {
	Scenario  string `json:"scenario"`
	System    string `json:"system"`
	Runs      int    `json:"runs"`
	Completed int    `json:"completed"`
	// Clean counts completed runs without reboot or broken stream.
	Clean int `json:"clean"`
	// Medians; NaN (null in JSON) when there is no run to take it from.
	TotalMs       F `json:"medianTotalMs"`
	DowntimeMs    F `json:"medianDowntimeMs"`
	ClientGapMs   F `json:"medianClientGapMs"`
	Bytes         F `json:"medianBytes"`
	AchievedMiBps F `json:"medianAchievedMiBps"`
	WindowMiBps   F `json:"medianWindowMiBps"`
	NonZeroBytes  F `json:"medianNonZeroBytes"`
	// PauseMs is the median guest pause from the source QEMU's STOP event
	// to the destination QEMU's RESUME event (Migration.PauseMs), over the
	// completed runs that measured it; NaN for systems that do not.
	PauseMs F `json:"medianPauseMs"`
	// WallMs is the median time from issuing the migration to its end as
	// the harness saw it (Ferry: including planning), PlanningMs Ferry's
	// planning time, CPUS the hosts' CPU seconds (QEMU and daemons), all
	// over completed runs.
	WallMs     F `json:"medianWallMs"`
	PlanningMs F `json:"medianPlanningMs"`
	CPUS       F `json:"medianCpuS"`
	// Strategies counts the strategies the runs used (Ferry).
	Strategies map[string]int `json:"strategies,omitempty"`
	// DiskBytes is the median local-disk data sent over completed runs;
	// DiskVerified counts the runs whose guest read every disk record
	// back intact, DiskChecked the median records it checked.
	DiskBytes    F   `json:"medianDiskBytes,omitempty"`
	DiskVerified int `json:"diskVerified,omitempty"`
	DiskChecked  F   `json:"medianDiskChecked,omitempty"`
	// Errors lists distinct failure messages.
	Errors []string `json:"errors,omitempty"`
}

// ScenarioSummary is one scenario: its conditions, a row per system, the
// physical bound and the ratios.
type ScenarioSummary struct {
	Scenario Scenario `json:"scenario"`
	Rows     []Row    `json:"rows"`
	// NonZeroBytes is the median non-zero guest memory over all runs;
	// BoundMs = NonZeroBytes / measured bandwidth.
	NonZeroBytes F `json:"nonZeroBytes"`
	BoundMs      F `json:"boundMs"`
	// Ratios of Ferry's medians to the other systems' and to the bound.
	Ratios map[string]F `json:"ratios"`
	// RatesDiffer is set when the systems' achieved dirty rates differ by
	// more than 15%: their figures are then not comparable.
	RatesDiffer bool `json:"ratesDiffer"`
	// Prediction is how well Ferry's dry-run predicted its runs (nil
	// without Ferry runs).
	Prediction *PredictionSummary `json:"prediction,omitempty"`
}

// PredictionTolerancePct is the error within which a prediction counts as
// accurate.
const PredictionTolerancePct = 25

// ratioMetrics are the figures compared between Ferry and each peer.
var ratioMetrics = []struct {
	key, title string
	get        func(Row) F
}{
	{"total", "total", func(r Row) F { return r.TotalMs }},
	{"wall", "wall", func(r Row) F { return r.WallMs }},
	{"downtime", "downtime", func(r Row) F { return r.DowntimeMs }},
	{"gap", "client gap", func(r Row) F { return r.ClientGapMs }},
	{"bytes", "bytes", func(r Row) F { return r.Bytes }},
	{"cpu", "CPU s", func(r Row) F { return r.CPUS }},
}

// PredictionSummary compares Ferry's predictions with its actual figures
// in one scenario (completed runs with a dry-run prediction).
type PredictionSummary struct {
	Runs int `json:"runs"`
	// MedianAbsErrorPct is the median |predicted - actual| / actual of
	// the total time, dry run vs actual; Within says whether it is within
	// ±PredictionTolerancePct, RunsWithin how many runs are.
	MedianAbsErrorPct F    `json:"medianAbsErrorPct"`
	MedianErrorPct    F    `json:"medianErrorPct"`
	Within            bool `json:"within"`
	RunsWithin        int  `json:"runsWithin"`
	// The same for the report's own prediction (the migration re-plans).
	MedianAbsReportErrorPct F `json:"medianAbsReportErrorPct"`
	// Medians of predicted and actual total and downtime.
	PredictedTotalMs    F `json:"medianPredictedTotalMs"`
	ActualTotalMs       F `json:"medianActualTotalMs"`
	PredictedDowntimeMs F `json:"medianPredictedDowntimeMs"`
	ActualDowntimeMs    F `json:"medianActualDowntimeMs"`
	// Choices counts the dry runs' choices, Ran the strategies the runs
	// used, BandwidthSources where the dry runs' bandwidth came from.
	Choices          map[string]int `json:"choices"`
	Ran              map[string]int `json:"ran"`
	BandwidthSources map[string]int `json:"bandwidthSources"`
	// Missing counts Ferry runs without a usable prediction.
	Missing int `json:"missing"`
}

// Check is one requirement checked against the measured runs.
type Check struct {
	Name string `json:"name"`
	// Result is PASS, FAIL or N/A (not measured).
	Result string `json:"result"`
	Detail string `json:"detail"`
}

// Line is the check as one line of text.
func (c Check) Line() string { return fmt.Sprintf("%s  %s: %s", c.Result, c.Name, c.Detail) }

// Summary is the whole benchmark.
type Summary struct {
	Meta      map[string]any    `json:"meta"`
	Scenarios []ScenarioSummary `json:"scenarios"`
	Checks    []Check           `json:"checks"`
}

// F is a float64 that encodes NaN and ±Inf as JSON null.
type F float64

// MarshalJSON implements json.Marshaler.
func (f F) MarshalJSON() ([]byte, error) {
	if math.IsNaN(float64(f)) || math.IsInf(float64(f), 0) {
		return []byte("null"), nil
	}
	return json.Marshal(float64(f))
}

// median returns the median of xs, NaN for none.
func median(xs []float64) F {
	if len(xs) == 0 {
		return F(math.NaN())
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	n := len(s)
	if n%2 == 1 {
		return F(s[n/2])
	}
	return F((s[n/2-1] + s[n/2]) / 2)
}

// Summarize computes the summary of runs for the given scenarios.
func Summarize(scenarios []Scenario, runs []Run, meta map[string]any) Summary {
	sum := Summary{Meta: meta}
	for _, sc := range scenarios {
		ss := ScenarioSummary{Scenario: sc, Ratios: map[string]F{}}
		var nonzero []float64
		rows := map[string]Row{}
		for _, sys := range tableSystems() {
			var r Row
			r.Scenario, r.System = sc.Name, sys
			var total, down, pause, gap, bytes, ach, win, nz, wall, plan, cpu, disk, checked []float64
			for _, run := range runs {
				if run.Scenario != sc.Name || run.System != sys {
					continue
				}
				r.Runs++
				if run.NonZeroBytes > 0 {
					nz = append(nz, float64(run.NonZeroBytes))
					nonzero = append(nonzero, float64(run.NonZeroBytes))
				}
				if run.Error != "" {
					r.Errors = appendUnique(r.Errors, run.Error)
					continue
				}
				if run.Migration.Error != "" {
					r.Errors = appendUnique(r.Errors, run.Migration.Status+": "+firstLine(run.Migration.Error))
				}
				bytes = append(bytes, float64(run.Migration.TransferredBytes))
				ach = append(ach, run.AchievedMiBps)
				win = append(win, run.WindowMiBps)
				if run.Migration.Completed() {
					r.Completed++
					if run.OK() {
						r.Clean++
					}
					total = append(total, float64(run.Migration.TotalMs))
					if !run.Migration.DowntimeUnknown {
						down = append(down, float64(run.Migration.DowntimeMs))
					}
					if run.Migration.PauseMs > 0 {
						pause = append(pause, float64(run.Migration.PauseMs))
					}
					gap = append(gap, float64(run.ClientGapMs))
					wall = append(wall, float64(run.Migration.WallMs))
					if sys == "ferry" {
						plan = append(plan, float64(run.Migration.PlanningMs))
					}
					if run.CPU != nil {
						cpu = append(cpu, run.CPU.HostsS())
					}
					if sc.DiskMiB > 0 {
						disk = append(disk, float64(run.Migration.DiskBytes))
					}
					if v := run.DiskVerify; v != nil {
						checked = append(checked, float64(v.Checked))
						if v.OK {
							r.DiskVerified++
						}
					}
					if st := run.Migration.Strategy; st != "" {
						if r.Strategies == nil {
							r.Strategies = map[string]int{}
						}
						r.Strategies[st]++
					}
				}
			}
			if r.Runs == 0 {
				continue
			}
			r.TotalMs, r.DowntimeMs, r.ClientGapMs, r.PauseMs = median(total), median(down), median(gap), median(pause)
			r.Bytes, r.AchievedMiBps, r.WindowMiBps, r.NonZeroBytes = median(bytes), median(ach), median(win), median(nz)
			r.WallMs, r.PlanningMs, r.CPUS = median(wall), median(plan), median(cpu)
			if sc.DiskMiB > 0 {
				r.DiskBytes, r.DiskChecked = median(disk), median(checked)
			}
			rows[sys] = r
			ss.Rows = append(ss.Rows, r)
		}
		ss.NonZeroBytes = median(nonzero)
		if sc.MeasuredMiBps > 0 {
			ss.BoundMs = ss.NonZeroBytes / F(sc.MeasuredMiBps*(1<<20)) * 1000
		}
		f, hasF := rows["ferry"]
		for _, other := range RatioPeers {
			o, ok := rows[other]
			if !hasF || !ok {
				continue
			}
			for _, m := range ratioMetrics {
				ss.Ratios[m.key+"_ferry/"+other] = m.get(f) / m.get(o)
			}
		}
		if hasF && ss.BoundMs > 0 {
			ss.Ratios["total_ferry/bound"] = f.TotalMs / ss.BoundMs
		}
		lo, hi := math.Inf(1), math.Inf(-1)
		for _, r := range ss.Rows {
			if a := float64(r.AchievedMiBps); !math.IsNaN(a) {
				lo, hi = math.Min(lo, a), math.Max(hi, a)
			}
		}
		ss.RatesDiffer = hi > 1 && lo < hi*0.85
		ss.Prediction = summarizePrediction(sc.Name, runs)
		sum.Scenarios = append(sum.Scenarios, ss)
	}
	sum.Checks = checks(sum.Scenarios, runs)
	return sum
}

// summarizePrediction compares Ferry's dry-run predictions with its runs.
func summarizePrediction(scenario string, runs []Run) *PredictionSummary {
	p := &PredictionSummary{Choices: map[string]int{}, Ran: map[string]int{}, BandwidthSources: map[string]int{}}
	var abs, signed, absRep, pt, at, pd, ad []float64
	n := 0
	for _, r := range runs {
		if r.Scenario != scenario || r.System != "ferry" {
			continue
		}
		n++
		if r.DryRun != nil {
			if r.DryRun.Choice != "" {
				p.Choices[r.DryRun.Choice]++
			} else if r.DryRun.Error != "" {
				p.Choices["(dry run failed)"]++
			}
			if r.DryRun.BandwidthSource != "" {
				src, _, _ := strings.Cut(r.DryRun.BandwidthSource, " (")
				p.BandwidthSources[src]++
			}
		}
		if r.Migration.Strategy != "" {
			p.Ran[r.Migration.Strategy]++
		}
		e, ok := r.TotalErrorPct()
		if !ok {
			p.Missing++
			continue
		}
		p.Runs++
		abs, signed = append(abs, math.Abs(e)), append(signed, e)
		if math.Abs(e) <= PredictionTolerancePct {
			p.RunsWithin++
		}
		if er, ok := r.ReportTotalErrorPct(); ok {
			absRep = append(absRep, math.Abs(er))
		}
		pt, at = append(pt, float64(r.DryRun.Predicted.TotalMs)), append(at, float64(r.Migration.TotalMs))
		pd, ad = append(pd, float64(r.DryRun.Predicted.DowntimeMs)), append(ad, float64(r.Migration.DowntimeMs))
	}
	if n == 0 {
		return nil
	}
	p.MedianAbsErrorPct, p.MedianErrorPct, p.MedianAbsReportErrorPct = median(abs), median(signed), median(absRep)
	p.Within = p.Runs > 0 && float64(p.MedianAbsErrorPct) <= PredictionTolerancePct
	p.PredictedTotalMs, p.ActualTotalMs = median(pt), median(at)
	p.PredictedDowntimeMs, p.ActualDowntimeMs = median(pd), median(ad)
	return p
}

func appendUnique(xs []string, s string) []string {
	if slices.Contains(xs, s) {
		return xs
	}
	return append(xs, s)
}

func firstLine(s string) string {
	s, _, _ = strings.Cut(strings.TrimSpace(s), "\n")
	if len(s) > 160 {
		s = s[:160] + "…"
	}
	return s
}

// fmtNum formats v with the given format, "—" for NaN or Inf.
func fmtNum(format string, v F) string {
	if math.IsNaN(float64(v)) || math.IsInf(float64(v), 0) {
		return "—"
	}
	return fmt.Sprintf(format, float64(v))
}

// Markdown writes the summary as Markdown tables.
func (s Summary) Markdown(w io.Writer) {
	fmt.Fprintf(w, "# Live-migration benchmark: Ferry vs plain QEMU defaults vs libvirt (defaults and tuned)\n\n")
	for _, k := range []string{"started", "elapsed", "runs", "capSeconds", "guest", "ferryStrategy", "ferryTransport", "warmup", "host", "ferryBinary", "libvirt", "libvirtTuned"} {
		if v, ok := s.Meta[k]; ok {
			fmt.Fprintf(w, "- %s: %v\n", k, v)
		}
	}
	fmt.Fprint(w, "\n## Scenarios\n\n")
	for _, ss := range s.Scenarios {
		sc := ss.Scenario
		load := "no dirtier"
		switch {
		case sc.DirtyMiBps > 0:
			load = fmt.Sprintf("dirtier over a %d MiB working set at %d MiB/s asked (`ferry.dirty=%d:%d`)", sc.WSSMiB, sc.DirtyMiBps, sc.WSSMiB, sc.DirtyMiBps)
		case sc.WSSMiB > 0:
			load = fmt.Sprintf("%d MiB filled, not dirtied (`ferry.dirty=%d:0`)", sc.WSSMiB, sc.WSSMiB)
		}
		mem := ""
		if sc.MemoryMiB > 0 {
			mem = fmt.Sprintf("%d MiB guest, ", sc.MemoryMiB)
		}
		fmt.Fprintf(w, "- `%s`: %s%s; link %s, %d TCP streams measured %s MiB/s; plot `remaining-%s.svg`\n",
			sc.Name, mem, load, sc.LinkString(), probeStreams, fmtNum("%.0f", F(sc.MeasuredMiBps)), sc.Name)
	}
	fmt.Fprintf(w, "\nTimes are medians over completed runs (total and downtime as each system reports them; pause = the guest's pause from the source QEMU's STOP event to the destination QEMU's RESUME event, measured the same way for Ferry and plain QEMU (libvirt owns its QEMUs' monitors: not measured); wall = from issuing "+
		"the migration to its end as the harness saw it, for Ferry including planning; "+
		"client gap = longest silence on the guest's 2 ms TCP counter stream seen from the client namespace; "+
		"CPU = utime+stime of the QEMU processes and the system's migration daemons on both hosts during the migration). "+
		"Bytes: median over all runs. Bound = non-zero guest memory ÷ measured host-to-host bandwidth.\n\n")
	fmt.Fprintln(w, "| scenario | link MiB/s (shaped / measured) | dirty asked / achieved MiB/s | system | completed | total s | wall s | downtime ms | pause ms | client gap ms | sent MiB | CPU s | non-zero MiB | bound s | total / bound |")
	fmt.Fprintln(w, "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
	for _, ss := range s.Scenarios {
		sc := ss.Scenario
		link := fmtNum("%.0f", F(sc.ShapedMiBps))
		if sc.ShapedMiBps == 0 {
			link = "none"
		}
		for _, r := range ss.Rows {
			comp := fmt.Sprintf("%d/%d", r.Completed, r.Runs)
			if r.Clean != r.Completed {
				comp += fmt.Sprintf(" (%d clean)", r.Clean)
			}
			fmt.Fprintf(w, "| %s | %s / %s | %d / %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n",
				sc.Name, link, fmtNum("%.0f", F(sc.MeasuredMiBps)), sc.DirtyMiBps, fmtNum("%.1f", r.AchievedMiBps),
				r.System, comp, fmtNum("%.2f", r.TotalMs/1000), fmtNum("%.2f", r.WallMs/1000), fmtNum("%.0f", r.DowntimeMs), fmtNum("%.0f", r.PauseMs), fmtNum("%.0f", r.ClientGapMs),
				fmtNum("%.0f", r.Bytes/(1<<20)), fmtNum("%.2f", r.CPUS), fmtNum("%.0f", r.NonZeroBytes/(1<<20)), fmtNum("%.2f", ss.BoundMs/1000),
				fmtNum("%.1f×", r.TotalMs/ss.BoundMs))
		}
	}
	fmt.Fprintln(w, "\n## Ratios (Ferry ÷ peer; < 1 means Ferry is better)")
	fmt.Fprint(w, "\n| scenario | peer |")
	for _, m := range ratioMetrics {
		fmt.Fprintf(w, " %s |", m.title)
	}
	fmt.Fprint(w, " Ferry total ÷ bound |\n|---|---|")
	for range ratioMetrics {
		fmt.Fprint(w, "---|")
	}
	fmt.Fprintln(w, "---|")
	for _, ss := range s.Scenarios {
		for _, peer := range RatioPeers {
			if _, ok := ss.Ratios["total_ferry/"+peer]; !ok {
				continue
			}
			fmt.Fprintf(w, "| %s | %s |", ss.Scenario.Name, peer)
			for _, m := range ratioMetrics {
				fmt.Fprintf(w, " %s |", fmtNum("%.2f", ss.Ratios[m.key+"_ferry/"+peer]))
			}
			b, ok := ss.Ratios["total_ferry/bound"]
			if !ok {
				b = F(math.NaN())
			}
			fmt.Fprintf(w, " %s |\n", fmtNum("%.2f", b))
		}
	}
	s.diskMarkdown(w)
	s.predictionMarkdown(w)
	if len(s.Checks) > 0 {
		fmt.Fprint(w, "\n## Requirement checks\n\n")
		fmt.Fprintln(w, "```")
		for _, c := range s.Checks {
			fmt.Fprintln(w, c.Line())
		}
		fmt.Fprintln(w, "```")
	}
	var notes []string
	for _, ss := range s.Scenarios {
		if ss.RatesDiffer {
			notes = append(notes, fmt.Sprintf("- %s: the systems' achieved dirty rates differ by more than 15%% — compare them with care.", ss.Scenario.Name))
		}
		for _, r := range ss.Rows {
			for _, e := range r.Errors {
				notes = append(notes, fmt.Sprintf("- %s/%s: %s", ss.Scenario.Name, r.System, firstLine(e)))
			}
		}
	}
	if len(notes) > 0 {
		fmt.Fprintln(w, "\n## Notes")
		fmt.Fprintln(w, strings.Join(notes, "\n"))
	}
}

// predictionMarkdown writes the "Prediction accuracy" section.
func (s Summary) predictionMarkdown(w io.Writer) {
	var has bool
	for _, ss := range s.Scenarios {
		has = has || ss.Prediction != nil
	}
	if !has {
		return
	}
	fmt.Fprintln(w, "\n## Prediction accuracy (Ferry)")
	fmt.Fprintf(w, "\nRight before every measured Ferry run the harness runs `ferry migrate VM --to h2 --dry-run -o json` "+
		"with the same flags and takes the prediction of the strategy the run uses (the plan's choice under auto). "+
		"Error = (predicted − actual) ÷ actual total time (`totalMs`, which excludes the planning measurement); "+
		"+ means Ferry predicted too long. A scenario is within tolerance when the median |error| is ≤ %d %%. "+
		"\"report's own\" is the `predicted` in the migration's report (it measures and plans again when it starts).\n\n", PredictionTolerancePct)
	fmt.Fprintf(w, "| scenario | runs | dry-run choice | strategy run | predicted total s | actual total s | median abs error | median error | within ±%d %% | runs within | predicted / actual downtime ms | report's own: median abs error | bandwidth source (dry run) |\n", PredictionTolerancePct)
	fmt.Fprintln(w, "|---|---|---|---|---|---|---|---|---|---|---|---|---|")
	for _, ss := range s.Scenarios {
		p := ss.Prediction
		if p == nil {
			continue
		}
		within := "no"
		if p.Within {
			within = "yes"
		}
		if p.Runs == 0 {
			within = "—"
		}
		runs := fmt.Sprintf("%d", p.Runs)
		if p.Missing > 0 {
			runs += fmt.Sprintf(" (+%d without prediction)", p.Missing)
		}
		fmt.Fprintf(w, "| %s | %s | %s | %s | %s | %s | %s | %s | %s | %d/%d | %s / %s | %s | %s |\n", ss.Scenario.Name, runs,
			counts(p.Choices), counts(p.Ran), fmtNum("%.2f", p.PredictedTotalMs/1000), fmtNum("%.2f", p.ActualTotalMs/1000),
			fmtNum("%.0f %%", p.MedianAbsErrorPct), fmtNum("%+.0f %%", p.MedianErrorPct), within, p.RunsWithin, p.Runs,
			fmtNum("%.0f", p.PredictedDowntimeMs), fmtNum("%.0f", p.ActualDowntimeMs), fmtNum("%.0f %%", p.MedianAbsReportErrorPct),
			counts(p.BandwidthSources))
	}
	fmt.Fprintln(w)
	fmt.Fprintln(w, "Accuracy lines:")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "```")
	for _, ss := range s.Scenarios {
		if p := ss.Prediction; p != nil {
			fmt.Fprintln(w, p.Line(ss.Scenario.Name))
		}
	}
	fmt.Fprintln(w, "```")
	fmt.Fprintln(w, "\nA fresh server has no learned rate, and the agents' background link probe measures raw TCP "+
		"(on the unshaped veth far faster than QEMU's migration thread reaches under TCG) and may predate the harness's "+
		"change of the emulated link between scenarios (the dry run's bandwidth source says how old it is). The server learns "+
		"the rate from finished migrations. The harness's `-warmup` (on by default) therefore runs one unmeasured Ferry "+
		"migration per link setting, and one before a scenario with local disks (the mirror's rate), before the measured runs; those are in no figure above (they are in `warmup/`).")
	if ws, ok := s.Meta["warmupRuns"]; ok {
		if lines := stringList(ws); len(lines) > 0 {
			fmt.Fprintln(w, "\nWarm-up migrations (unmeasured):")
			fmt.Fprintln(w)
			for _, l := range lines {
				fmt.Fprintf(w, "- %s\n", l)
			}
		}
	}
}

// Line is the scenario's prediction accuracy as one line of text.
func (p PredictionSummary) Line(scenario string) string {
	if p.Runs == 0 {
		return fmt.Sprintf("%s: no Ferry run with a prediction (%d without)", scenario, p.Missing)
	}
	verdict := "within"
	if !p.Within {
		verdict = "NOT within"
	}
	return fmt.Sprintf("%s: median |error| of total %s (%s ±%d %%; median error %s, %d/%d runs within), predicted %s s vs actual %s s; chosen: %s",
		scenario, fmtNum("%.0f %%", p.MedianAbsErrorPct), verdict, PredictionTolerancePct, fmtNum("%+.0f %%", p.MedianErrorPct),
		p.RunsWithin, p.Runs, fmtNum("%.2f", p.PredictedTotalMs/1000), fmtNum("%.2f", p.ActualTotalMs/1000), counts(p.Choices))
}

// counts renders a histogram as "a ×2, b" in key order.
func counts(m map[string]int) string {
	if len(m) == 0 {
		return "—"
	}
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	var parts []string
	for _, k := range keys {
		if m[k] > 1 {
			parts = append(parts, fmt.Sprintf("%s ×%d", k, m[k]))
		} else {
			parts = append(parts, k)
		}
	}
	return strings.Join(parts, ", ")
}

// stringList returns v as strings ([]string, or []any after a JSON round
// trip).
func stringList(v any) []string {
	switch l := v.(type) {
	case []string:
		return l
	case []any:
		var out []string
		for _, x := range l {
			if s, ok := x.(string); ok {
				out = append(out, s)
			}
		}
		return out
	}
	return nil
}

// StringList is stringList for the harness (meta values after a JSON round
// trip).
func StringList(v any) []string { return stringList(v) }

// diskMarkdown writes the "Local disks" section of the scenarios whose
// guest has a local disk.
func (s Summary) diskMarkdown(w io.Writer) {
	head := false
	for _, ss := range s.Scenarios {
		sc := ss.Scenario
		if sc.DiskMiB == 0 {
			continue
		}
		if !head {
			head = true
			fmt.Fprint(w, "\n## Local disks\n\n")
			fmt.Fprintln(w, "Disk sent = the system's own figure of local-disk data sent (Ferry: diskBytesTransferred; libvirt: disk_processed), "+
				"median over completed runs; verified = runs whose guest then read every record its disk writer had made durable back intact (`GET /verify`).")
			fmt.Fprintln(w, "\n| scenario | disk (virtual / allocated MiB, writer KiB/s) | system | completed | total s | downtime ms | client gap ms | disk sent MiB | verified | records checked |")
			fmt.Fprintln(w, "|---|---|---|---|---|---|---|---|---|---|")
		}
		for _, r := range ss.Rows {
			fmt.Fprintf(w, "| %s | %d / %d, %d | %s | %d/%d | %s | %s | %s | %s | %d/%d | %s |\n", sc.Name, sc.DiskMiB, sc.DiskAllocMiB, sc.DiskKiBps,
				r.System, r.Completed, r.Runs, fmtNum("%.2f", r.TotalMs/1000), fmtNum("%.0f", r.DowntimeMs), fmtNum("%.0f", r.ClientGapMs),
				fmtNum("%.0f", r.DiskBytes/(1<<20)), r.DiskVerified, r.Runs, fmtNum("%.0f", r.DiskChecked))
		}
	}
}
