package core_test

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ferryvm/ferry/internal/migration/sim"
)

var rewrite = flag.Bool("rewrite", false, "rewrite the expected output of testdata/*.txt")

// TestScripts runs the scenarios in testdata/*.txt: blocks of
//
//	command args...
//	----
//	expected output
//
// separated by blank lines, '#' starts a comment line. The commands are
// sim.Interp's. Run with -args -rewrite to regenerate the expectations.
func TestScripts(t *testing.T) {
	files, err := filepath.Glob("testdata/*.txt")
	if err != nil || len(files) == 0 {
		t.Fatalf("no scripts in testdata: %v", err)
	}
	for _, f := range files {
		t.Run(strings.TrimSuffix(filepath.Base(f), ".txt"), func(t *testing.T) { runScript(t, f) })
	}
}

type block struct {
	line     int
	cmd      string
	expected string
}

func parseScript(t *testing.T, path string) (pre []string, blocks []block) {
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(string(data), "\n")
	for i := 0; i < len(lines); i++ {
		l := lines[i]
		if strings.TrimSpace(l) == "" || strings.HasPrefix(l, "#") {
			if len(blocks) == 0 {
				pre = append(pre, l)
			}
			continue
		}
		b := block{line: i + 1, cmd: strings.TrimSpace(l)}
		if i+1 >= len(lines) || lines[i+1] != "----" {
			t.Fatalf("%s:%d: command %q without a ---- line", path, i+1, l)
		}
		i += 2
		var out []string
		for ; i < len(lines) && lines[i] != ""; i++ {
			out = append(out, lines[i])
		}
		b.expected = strings.Join(out, "\n")
		blocks = append(blocks, b)
	}
	return pre, blocks
}

func runScript(t *testing.T, path string) {
	_, blocks := parseScript(t, path)
	in := &sim.Interp{}
	var rewritten strings.Builder
	data, _ := os.ReadFile(path)
	// keep the comments above each block when rewriting
	src := strings.Split(string(data), "\n")
	last := 0
	for _, b := range blocks {
		f := strings.Fields(b.cmd)
		got, err := in.Do(f[0], f[1:])
		if err != nil {
			got = "error: " + err.Error()
		}
		if *rewrite {
			for _, l := range src[last : b.line-1] {
				rewritten.WriteString(l + "\n")
			}
			fmt.Fprintf(&rewritten, "%s\n----\n%s\n", b.cmd, got)
			last = b.line + 1 + len(strings.Split(b.expected, "\n"))
			if b.expected == "" {
				last = b.line + 1
			}
			continue
		}
		if got != b.expected {
			t.Errorf("%s:%d: %s\ngot:\n%s\nwant:\n%s", path, b.line, b.cmd, got, b.expected)
		}
	}
	if *rewrite {
		for _, l := range src[min(last, len(src)):] {
			rewritten.WriteString(l + "\n")
		}
		out := strings.TrimRight(rewritten.String(), "\n") + "\n"
		if err := os.WriteFile(path, []byte(out), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}
