// Package scripttest runs the data-driven scripts of the pure planners'
// tests (testdata/*.txt in the style of etcd-raft's interaction tests):
// blocks of input lines, "----", the expected output up to a blank line.
// It is imported by tests only.
package scripttest

import (
	"os"
	"strconv"
	"strings"
	"testing"

	"github.com/ferryvm/ferry/internal/spec"
)

// Run runs every block of file through run (given the block's lines
// before "----", comments removed) and compares its output with the
// expected lines; with rewrite it writes the actual output back instead.
func Run(t *testing.T, file string, rewrite bool, run func(t *testing.T, header []string) []string) {
	t.Helper()
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
	var out []string
	blocks := 0
	for i := 0; i < len(lines); {
		if strings.TrimSpace(lines[i]) == "" || strings.HasPrefix(lines[i], "#") {
			out = append(out, lines[i])
			i++
			continue
		}
		start := i + 1
		var header, want []string
		for ; i < len(lines) && lines[i] != "----"; i++ {
			if !strings.HasPrefix(lines[i], "#") {
				header = append(header, lines[i])
			}
			out = append(out, lines[i])
		}
		if i == len(lines) {
			t.Fatalf("%s:%d: block without ----", file, start)
		}
		out = append(out, "----")
		for i++; i < len(lines) && strings.TrimSpace(lines[i]) != ""; i++ {
			want = append(want, lines[i])
		}
		got := run(t, header)
		blocks++
		out = append(out, got...)
		if !rewrite && strings.Join(got, "\n") != strings.Join(want, "\n") {
			t.Errorf("%s:%d: %s\n--- got:\n%s\n--- want:\n%s", file, start, header[0], strings.Join(got, "\n"), strings.Join(want, "\n"))
		}
	}
	if rewrite {
		if err := os.WriteFile(file, []byte(strings.Join(out, "\n")+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if blocks == 0 {
		t.Fatalf("%s: no blocks", file)
	}
}

// KV splits key=value fields into a map; a bare word maps to "".
func KV(fields []string) map[string]string {
	m := map[string]string{}
	for _, f := range fields {
		k, v, _ := strings.Cut(f, "=")
		m[k] = v
	}
	return m
}

// Size parses a binary size (spec.ParseSize) or a rate with "/s"; ""
// is 0.
func Size(t *testing.T, s string) int64 {
	t.Helper()
	s = strings.TrimSuffix(s, "/s")
	if s == "" {
		return 0
	}
	v, err := spec.ParseSize(s)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// Int parses an integer; "" is 0.
func Int(t *testing.T, s string) int {
	t.Helper()
	if s == "" {
		return 0
	}
	v, err := strconv.Atoi(s)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// Float parses a float; "" is 0.
func Float(t *testing.T, s string) float64 {
	t.Helper()
	if s == "" {
		return 0
	}
	v, err := strconv.ParseFloat(s, 64)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// List splits a comma-separated list; "" is nil.
func List(s string) []string {
	if s == "" {
		return nil
	}
	return strings.Split(s, ",")
}

// Bandwidths is a fake table of host-pair rates for tests; "*" matches
// any host. It satisfies the planners' Bandwidths interfaces.
type Bandwidths map[[2]string]float64

// Estimate returns the most specific matching rate.
func (b Bandwidths) Estimate(from, to string) (float64, bool) {
	for _, k := range [][2]string{{from, to}, {from, "*"}, {"*", to}, {"*", "*"}} {
		if v, ok := b[k]; ok {
			return v, true
		}
	}
	return 0, false
}
