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
	for _, want := range []string{"| half | 48 / 46 | 24 / 24.0 | ferry | 3/3 | 11.00 | 200 |", "| libvirt | 0/1 | — |"} {
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
