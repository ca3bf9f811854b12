package report

import (
	"bytes"
	"encoding/json"
	"math"
	"strings"
	"testing"
)

func TestMedian(t *testing.T) {
	for _, tc := range []struct {
		in   []float64
		want float64
	}{{[]float64{3, 1, 2}, 2}, {[]float64{4, 1, 3, 2}, 2.5}, {[]float64{7}, 7}} {
		if got := float64(median(tc.in)); got != tc.want {
			t.Errorf("median(%v) = %v, want %v", tc.in, got, tc.want)
		}
	}
	if !math.IsNaN(float64(median(nil))) {
		t.Error("median(nil) is not NaN")
	}
}

func TestSummarizeMarkdownAndJSON(t *testing.T) {
	scs := []Scenario{{Name: "half", WSSMiB: 256, DirtyMiBps: 24, ShapedMiBps: 48, MeasuredMiBps: 46}}
	mk := func(sys string, i int, total, down int64, status string) Run {
		return Run{Scenario: "half", System: sys, Index: i, NonZeroBytes: 350 << 20, ClientGapMs: down + 50, AchievedMiBps: 24,
			Migration: Migration{Status: status, TotalMs: total, DowntimeMs: down, TransferredBytes: 700 << 20,
				Samples: []Sample{{TMs: 0, RemainingBytes: 1 << 30}, {TMs: total, RemainingBytes: 0}}}}
	}
	runs := []Run{
		mk("ferry", 1, 10000, 100, "completed"), mk("ferry", 2, 12000, 300, "completed"), mk("ferry", 3, 11000, 200, "completed"),
		mk("qemu", 1, 20000, 300, "completed"), mk("libvirt", 1, 180000, 0, "aborted"),
	}
	sum := Summarize(scs, runs, map[string]any{"runs": 3})
	ss := sum.Scenarios[0]
	if got := float64(ss.Rows[0].TotalMs); got != 11000 {
		t.Errorf("ferry median total = %v, want 11000", got)
	}
	if got := float64(ss.Ratios["total_ferry/qemu"]); got != 0.55 {
		t.Errorf("ferry/qemu total ratio = %v, want 0.55", got)
	}
	if lv := ss.Rows[2]; lv.Completed != 0 || !math.IsNaN(float64(lv.TotalMs)) {
		t.Errorf("libvirt row = %+v, want 0 completed and no total", lv)
	}
	if _, err := json.Marshal(sum); err != nil {
		t.Fatalf("summary does not encode (NaN?): %v", err)
	}
	var md bytes.Buffer
	sum.Markdown(&md)
	for _, want := range []string{"| half | 48 / 46 | 24 / 24.0 | ferry | 3/3 | 11.00 | 0.00 | 200 |", "| libvirt | 0/1 | — |"} {
		if !strings.Contains(md.String(), want) {
			t.Errorf("markdown lacks %q:\n%s", want, md.String())
		}
	}
	var svg bytes.Buffer
	if err := PlotRemaining(&svg, "half <test>", runs); err != nil {
		t.Fatal(err)
	}
	if s := svg.String(); !strings.HasPrefix(s, "<svg") || strings.Count(s, "<polyline") != len(runs) || !strings.Contains(s, "half &lt;test&gt;") {
		t.Errorf("unexpected SVG:\n%s", s)
	}
}

func TestPredictionAccuracyAndChecks(t *testing.T) {
	scs := []Scenario{{Name: "half", ShapedMiBps: 48, MeasuredMiBps: 46}, {Name: "heavy", ShapedMiBps: 48, MeasuredMiBps: 46}}
	mk := func(sc, sys string, i int, predicted, total, down, gap int64) Run {
		r := Run{Scenario: sc, System: sys, Index: i, ClientGapMs: gap,
			Migration: Migration{Status: "completed", TotalMs: total, DowntimeMs: down, Strategy: "postcopy",
				Predicted: &Predicted{Strategy: "postcopy", TotalMs: predicted * 2, DowntimeMs: 40}}}
		if sys == "ferry" && predicted > 0 {
			r.DryRun = &DryRun{Choice: "postcopy", BandwidthSource: "measured (0.5 s TCP probe)",
				Predicted: &Predicted{Strategy: "postcopy", TotalMs: predicted, DowntimeMs: 40}}
		}
		return r
	}
	runs := []Run{
		// half: errors +20 %, -10 %, +50 % → median |error| 20 %.
		mk("half", "ferry", 1, 12000, 10000, 60, 700), mk("half", "ferry", 2, 9000, 10000, 70, 800), mk("half", "ferry", 3, 15000, 10000, 80, 900),
		mk("half", "libvirt", 1, 0, 16000, 300, 400),
		// heavy: one run's client gap is over 1 s; errors +100 %.
		mk("heavy", "ferry", 1, 20000, 10000, 60, 900), mk("heavy", "ferry", 2, 20000, 10000, 60, 1200),
	}
	if e, ok := runs[0].TotalErrorPct(); !ok || math.Abs(e-20) > 1e-9 {
		t.Errorf("TotalErrorPct = %v, %v; want +20", e, ok)
	}
	if e, ok := runs[0].ReportTotalErrorPct(); !ok || math.Abs(e-140) > 1e-9 {
		t.Errorf("ReportTotalErrorPct = %v, %v; want +140", e, ok)
	}
	sum := Summarize(scs, runs, map[string]any{"warmupRuns": []any{"idle (link none): precopy completed"}})
	half := sum.Scenarios[0].Prediction
	if half == nil || half.Runs != 3 || float64(half.MedianAbsErrorPct) != 20 || !half.Within || half.RunsWithin != 2 || half.Choices["postcopy"] != 3 {
		t.Errorf("half prediction = %+v", half)
	}
	if heavy := sum.Scenarios[1].Prediction; heavy == nil || heavy.Within || float64(heavy.MedianAbsErrorPct) != 100 {
		t.Errorf("heavy prediction = %+v", heavy)
	}
	results := map[string]string{}
	for _, c := range sum.Checks {
		results[c.Name] = c.Result
	}
	for name, want := range map[string]string{
		"heavy: every Ferry run completes (same boot, stream intact)": "PASS",
		"heavy: Ferry median client gap ≤ 500 ms":                     "FAIL", // median of 900 and 1200
		"half: Ferry median total ≤ libvirt's":                        "PASS",
		"half: Ferry median downtime ≤ libvirt's":                     "PASS",
		"half: Ferry's dry-run total within ±25 % of the actual":      "FAIL", // one run is off by 50 %
		"heavy: Ferry's dry-run total within ±25 % of the actual":     "FAIL",
		"half: Ferry median total ≤ 1.5× the bound":                   "FAIL", // 10 s vs 0 non-zero: no bound
	} {
		if results[name] != want && !(want == "FAIL" && results[name] == "N/A" && strings.Contains(name, "bound")) {
			t.Errorf("check %q = %q, want %q (all: %v)", name, results[name], want, results)
		}
	}
	if _, ok := results["idle: Ferry median downtime ≤ 50 ms"]; ok {
		t.Error("idle check present without idle runs")
	}
	var md bytes.Buffer
	sum.Markdown(&md)
	for _, want := range []string{"## Prediction accuracy", "half: median |error| of total 20 % (within ±25 %", "heavy: median |error| of total 100 % (NOT within",
		"## Requirement checks", "FAIL  heavy: Ferry median client gap", "PASS  half: Ferry median total ≤ libvirt's: Ferry 10.00 s", "- idle (link none): precopy completed",
		"| half | libvirt |"} {
		if !strings.Contains(md.String(), want) {
			t.Errorf("markdown lacks %q:\n%s", want, md.String())
		}
	}
	if _, err := json.Marshal(sum); err != nil {
		t.Fatal(err)
	}
}

func TestChecksIdleAndPeers(t *testing.T) {
	scs := []Scenario{{Name: "idle", MeasuredMiBps: 1000}, {Name: "wan", ShapedMiBps: 48, DelayMs: 20, LossPct: 0.1, MeasuredMiBps: 40}}
	mk := func(sc, sys string, status string, total, wall, down int64) Run {
		return Run{Scenario: sc, System: sys, Index: 1, NonZeroBytes: 100 << 20, QEMUBinary: "/usr/bin/qemu-system-x86_64 (10.0.2)",
			CPU:       &CPU{SrcQEMUS: 1, DstQEMUS: 0.5, SrcDaemonS: 0.25},
			Migration: Migration{Status: status, TotalMs: total, WallMs: wall, DowntimeMs: down, PlanningMs: 20}}
	}
	// Both pauses measured STOP to RESUME: Ferry's 40 ms against QEMU's 30
	// ms is within 1.5×, while QEMU's own 25 ms downtime is not.
	withPause := func(r Run, ms int64) Run { r.Migration.PauseMs = ms; return r }
	runs := []Run{
		withPause(mk("idle", "ferry", "completed", 800, 1000, 40), 40), withPause(mk("idle", "qemu", "completed", 900, 900, 25), 30),
		mk("idle", "libvirt", "completed", 900, 1200, 150), mk("idle", "libvirt-tuned", "completed", 700, 1100, 30),
		mk("wan", "ferry", "completed", 30000, 30100, 100), mk("wan", "qemu", "aborted", 60000, 60000, 0),
	}
	sum := Summarize(scs, runs, nil)
	got := map[string]Check{}
	for _, c := range sum.Checks {
		got[c.Name] = c
	}
	for name, want := range map[string]string{
		"idle: Ferry median downtime ≤ 50 ms":                                                    "PASS",
		"idle: Ferry median downtime ≤ 1.5× plain QEMU's":                                        "FAIL", // 40 > 37.5
		"idle: Ferry median wall time (with planning) ≤ 1.3× plain QEMU's":                       "PASS",
		"idle: Ferry median guest pause (source STOP to destination RESUME) ≤ 1.5× plain QEMU's": "PASS",
		"idle: Ferry median total ≤ libvirt-tuned's":                                             "FAIL",
		"idle: Ferry median downtime ≤ libvirt-tuned's":                                          "FAIL",
		"idle: Ferry median downtime ≤ libvirt's":                                                "PASS",
		"wan: every Ferry run completes (same boot, stream intact)":                              "PASS",
		"every system runs the same QEMU binary":                                                 "PASS",
		"all scenarios: Ferry median planning time < 100 ms":                                     "PASS",
	} {
		if got[name].Result != want {
			t.Errorf("check %q = %q (%s), want %q", name, got[name].Result, got[name].Detail, want)
		}
	}
	if _, ok := got["wan: Ferry median total ≤ qemu's"]; ok {
		t.Error("a peer that completed nothing is compared")
	}
	if d := got["wan: every Ferry run completes (same boot, stream intact)"].Detail; !strings.Contains(d, "qemu 0/1 completed") {
		t.Errorf("wan check does not state what the peer did: %s", d)
	}
	if r := sum.Scenarios[0].Rows[0]; float64(r.CPUS) != 1.75 || float64(r.WallMs) != 1000 {
		t.Errorf("ferry idle row = %+v", r)
	}
	if v := float64(sum.Scenarios[0].Ratios["cpu_ferry/libvirt-tuned"]); v != 1 {
		t.Errorf("cpu ratio = %v", v)
	}
	if s := scs[1].LinkString(); s != "48 MiB/s, 20 ms each way, 0.1 % loss each way" {
		t.Errorf("LinkString = %q", s)
	}
}
