// Package scripttest runs the data-driven scripts of the pure planners'
// tests (testdata/*.txt in the style of etcd-raft's interaction tests):
// blocks of input lines, "----", the expected output up to a blank line.
// It is imported by tests only, and gives their binaries a -rewrite flag.
package scripttest

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/ferryvm/ferry/internal/spec"
)

// rewrite is the -rewrite flag of every test binary that imports this
// package: go test ./internal/PKG -run TestScripts -rewrite writes the
// actual output back into the scripts (then review the diff).
var rewrite = flag.Bool("rewrite", false, "rewrite the expected output of the testdata/*.txt scripts")

// Block is one block of a script.
type Block struct {
	File   string   // the script's path
	Line   int      // the block's first line, counted from 1
	Header []string // the lines before "----", comments removed; Header[0] is the directive
}

// Directive is the first word of the block's first line.
func (b Block) Directive() string {
	if f := strings.Fields(b.Header[0]); len(f) > 0 {
		return f[0]
	}
	return ""
}

// Fatalf ends the test with a message naming the block's file and line.
func (b Block) Fatalf(t *testing.T, format string, args ...any) {
	t.Helper()
	t.Fatalf("%s:%d: %s", b.File, b.Line, fmt.Sprintf(format, args...))
}

// Func runs one block and returns its output lines.
type Func func(t *testing.T, b Block) []string

// Dir calls each, in a subtest named after the file (without ".txt"),
// for every testdata/*.txt of the package under test; it fails when
// there is none. each usually calls Run; state shared by one file's
// blocks lives in its closure.
func Dir(t *testing.T, each func(t *testing.T, file string)) {
	t.Helper()
	files, err := filepath.Glob("testdata/*.txt")
	if err != nil || len(files) == 0 {
		t.Fatalf("no scripts in testdata: %v", err)
	}
	for _, f := range files {
		t.Run(strings.TrimSuffix(filepath.Base(f), ".txt"), func(t *testing.T) { each(t, f) })
	}
}

// Run runs every block of file through run and compares its output with
// the expected lines; with -rewrite it writes the actual output back
// instead. A file without blocks fails.
func Run(t *testing.T, file string, run Func) {
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
		b := Block{File: file, Line: i + 1}
		var want []string
		for ; i < len(lines) && lines[i] != "----"; i++ {
			if !strings.HasPrefix(lines[i], "#") {
				b.Header = append(b.Header, lines[i])
			}
			out = append(out, lines[i])
		}
		if i == len(lines) {
			t.Fatalf("%s:%d: block without ----", file, b.Line)
		}
		out = append(out, "----")
		for i++; i < len(lines) && strings.TrimSpace(lines[i]) != ""; i++ {
			want = append(want, lines[i])
		}
		got := run(t, b)
		blocks++
		out = append(out, got...)
		if !*rewrite && strings.Join(got, "\n") != strings.Join(want, "\n") {
			t.Errorf("%s:%d: %s\n--- got:\n%s\n--- want:\n%s", file, b.Line, b.Header[0], strings.Join(got, "\n"), strings.Join(want, "\n"))
		}
	}
	if *rewrite {
		if err := os.WriteFile(file, []byte(strings.Join(out, "\n")+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if blocks == 0 {
		t.Fatalf("%s: no blocks", file)
	}
	t.Logf("%s: %d blocks", file, blocks)
}

// Lines splits a command's output into lines; "" is no lines.
func Lines(s string) []string {
	if s == "" {
		return nil
	}
	return strings.Split(s, "\n")
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
