package bench

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"

	"github.com/ferryvm/ferry/bench/internal/report"
)

var dirtyRE = regexp.MustCompile(`ferry\.dirty=(\d+):(\d+)`)

// Resummarize recomputes summary.json, summary.md and the plots of a
// result directory from its run files (e.g. after an interrupted run, or
// after a change to the summary).
func Resummarize(dir string, out io.Writer) error {
	files, err := filepath.Glob(filepath.Join(dir, "*-*-*.json"))
	if err != nil {
		return fmt.Errorf("list runs in %s: %w", dir, err)
	}
	var runs []report.Run
	scs := map[string]Scenario{}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			return fmt.Errorf("read run: %w", err)
		}
		var r report.Run
		if err := json.Unmarshal(b, &r); err != nil {
			return fmt.Errorf("decode %s: %w", f, err)
		}
		fillAborted(&r.Migration)
		runs = append(runs, r)
		sc := Scenario{Name: r.Scenario, ShapedMiBps: r.ShapedMiBps, MeasuredMiBps: r.MeasuredMiBps}
		if r.Spec != nil {
			sc = *r.Spec
		} else if g, ok := r.Guest.(map[string]any); ok {
			if cl, ok := g["cmdline"].(string); ok {
				if m := dirtyRE.FindStringSubmatch(cl); m != nil {
					sc.WSSMiB, _ = strconv.ParseInt(m[1], 10, 64)
					sc.DirtyMiBps, _ = strconv.ParseInt(m[2], 10, 64)
				}
			}
		}
		scs[r.Scenario] = sc
	}
	if len(runs) == 0 {
		return fmt.Errorf("no run files (SCENARIO-SYSTEM-N.json) in %s", dir)
	}
	var scenarios []Scenario
	for _, name := range AllScenarios {
		if sc, ok := scs[name]; ok {
			scenarios = append(scenarios, sc)
		}
	}
	meta := map[string]any{}
	if b, err := os.ReadFile(filepath.Join(dir, "summary.json")); err == nil {
		var old struct {
			Meta map[string]any `json:"meta"`
		}
		if json.Unmarshal(b, &old) == nil && old.Meta != nil {
			meta = old.Meta
		}
	}
	if _, ok := meta["warmupRuns"]; !ok {
		// Rebuild the warm-up lines from warmup/ (a directory put together
		// from several result directories has no summary of its own).
		wfiles, _ := filepath.Glob(filepath.Join(dir, "warmup", "*-ferry-0.json"))
		var lines []string
		for _, f := range wfiles {
			b, err := os.ReadFile(f)
			if err != nil {
				return fmt.Errorf("read warm-up run: %w", err)
			}
			var r report.Run
			if err := json.Unmarshal(b, &r); err != nil {
				return fmt.Errorf("decode %s: %w", f, err)
			}
			lines = append(lines, warmupLine(r))
		}
		if len(lines) > 0 {
			meta["warmupRuns"] = lines
		}
	}
	slices.SortFunc(runs, func(a, b report.Run) int { return a.Started.Compare(b.Started) })
	return writeSummary(dir, scenarios, runs, meta, out)
}
