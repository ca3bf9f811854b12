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
var Systems = []string{"ferry", "qemu", "libvirt"}

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
}

// Summary is the whole benchmark.
type Summary struct {
	Meta      map[string]any    `json:"meta"`
	Scenarios []ScenarioSummary `json:"scenarios"`
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
		for _, sys := range Systems {
			var r Row
			r.Scenario, r.System = sc.Name, sys
			var total, down, gap, bytes, ach, win, nz []float64
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
					down = append(down, float64(run.Migration.DowntimeMs))
					gap = append(gap, float64(run.ClientGapMs))
				}
			}
			if r.Runs == 0 {
				continue
			}
			r.TotalMs, r.DowntimeMs, r.ClientGapMs = median(total), median(down), median(gap)
			r.Bytes, r.AchievedMiBps, r.WindowMiBps, r.NonZeroBytes = median(bytes), median(ach), median(win), median(nz)
			rows[sys] = r
			ss.Rows = append(ss.Rows, r)
		}
		ss.NonZeroBytes = median(nonzero)
		if sc.MeasuredMiBps > 0 {
			ss.BoundMs = ss.NonZeroBytes / F(sc.MeasuredMiBps*(1<<20)) * 1000
		}
		f, hasF := rows["ferry"]
		for _, other := range []string{"libvirt", "qemu"} {
			o, ok := rows[other]
			if !hasF || !ok {
				continue
			}
			ss.Ratios["total_ferry/"+other] = f.TotalMs / o.TotalMs
			ss.Ratios["downtime_ferry/"+other] = f.DowntimeMs / o.DowntimeMs
			ss.Ratios["gap_ferry/"+other] = f.ClientGapMs / o.ClientGapMs
			ss.Ratios["bytes_ferry/"+other] = f.Bytes / o.Bytes
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
		sum.Scenarios = append(sum.Scenarios, ss)
	}
	return sum
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
	fmt.Fprintf(w, "# Live-migration benchmark: Ferry vs plain QEMU defaults vs libvirt\n\n")
	for _, k := range []string{"started", "runs", "capSeconds", "guest", "ferryStrategy", "host"} {
		if v, ok := s.Meta[k]; ok {
			fmt.Fprintf(w, "- %s: %v\n", k, v)
		}
	}
	fmt.Fprintf(w, "\nTimes are medians over completed runs (total and downtime as each system reports them; "+
		"client gap = longest silence on the guest's 2 ms TCP counter stream seen from the client namespace). "+
		"Bytes: median over all runs. Bound = non-zero guest memory ÷ measured host-to-host bandwidth.\n\n")
	fmt.Fprintln(w, "| scenario | link (shaped / measured MiB/s) | dirty asked / achieved MiB/s | system | completed | total s | downtime ms | client gap ms | sent MiB | non-zero MiB | bound s | total / bound |")
	fmt.Fprintln(w, "|---|---|---|---|---|---|---|---|---|---|---|---|")
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
			fmt.Fprintf(w, "| %s | %s / %s | %d / %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n",
				sc.Name, link, fmtNum("%.0f", F(sc.MeasuredMiBps)), sc.DirtyMiBps, fmtNum("%.1f", r.AchievedMiBps),
				r.System, comp, fmtNum("%.2f", r.TotalMs/1000), fmtNum("%.0f", r.DowntimeMs), fmtNum("%.0f", r.ClientGapMs),
				fmtNum("%.0f", r.Bytes/(1<<20)), fmtNum("%.0f", r.NonZeroBytes/(1<<20)), fmtNum("%.2f", ss.BoundMs/1000),
				fmtNum("%.1f×", r.TotalMs/ss.BoundMs))
		}
	}
	fmt.Fprintln(w, "\n## Ratios (Ferry ÷ other; < 1 means Ferry is better)")
	fmt.Fprintln(w, "\n| scenario | total ÷ libvirt | total ÷ QEMU | downtime ÷ libvirt | downtime ÷ QEMU | client gap ÷ libvirt | client gap ÷ QEMU | bytes ÷ libvirt | bytes ÷ QEMU | Ferry total ÷ bound |")
	fmt.Fprintln(w, "|---|---|---|---|---|---|---|---|---|---|")
	for _, ss := range s.Scenarios {
		r := func(k string) string {
			v, ok := ss.Ratios[k]
			if !ok {
				return "—"
			}
			return fmtNum("%.2f", v)
		}
		fmt.Fprintf(w, "| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", ss.Scenario.Name,
			r("total_ferry/libvirt"), r("total_ferry/qemu"), r("downtime_ferry/libvirt"), r("downtime_ferry/qemu"),
			r("gap_ferry/libvirt"), r("gap_ferry/qemu"), r("bytes_ferry/libvirt"), r("bytes_ferry/qemu"), r("total_ferry/bound"))
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
