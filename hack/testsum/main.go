// Command testsum condenses `go test -json` output for CI logs: one line
// per finished test with its result and duration, the whole output of every
// test that failed, the package results, and the slowest tests at the end.
// It exits 1 when a test or package failed, or the stream ended early.
//
//	go test -json ./test/e2e/... | go run ./hack/testsum
package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
)

// event is one line of `go test -json` (cmd/test2json's TestEvent).
type event struct {
	Action  string
	Package string
	Test    string
	Elapsed float64
	Output  string
}

// result is a finished test.
type result struct {
	name    string
	action  string
	elapsed float64
}

func main() {
	failed, err := summarize(os.Stdin, os.Stdout)
	if err != nil {
		fmt.Fprintln(os.Stderr, "testsum:", err)
		os.Exit(1)
	}
	if failed {
		os.Exit(1)
	}
}

// summarize reads the JSON stream from r and writes the summary to w. It
// reports whether anything failed.
func summarize(r io.Reader, w io.Writer) (bool, error) {
	out := map[string]*strings.Builder{} // per test (package/test)
	var done []result
	failed, sawPackage := false, false
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 1<<20), 64<<20)
	for sc.Scan() {
		line := sc.Bytes()
		var e event
		if err := json.Unmarshal(line, &e); err != nil || e.Action == "" {
			// Not an event (a build error): pass it through.
			fmt.Fprintln(w, string(line))
			continue
		}
		key := e.Package + "/" + e.Test
		switch e.Action {
		case "output":
			b := out[key]
			if b == nil {
				b = &strings.Builder{}
				out[key] = b
			}
			b.WriteString(e.Output)
		case "pass", "fail", "skip":
			if e.Test == "" { // the package's result
				sawPackage = true
				if e.Action == "fail" {
					failed = true
				}
				if b := out[key]; b != nil { // TestMain's own lines, the ok/FAIL line
					fmt.Fprint(w, b.String())
				}
				fmt.Fprintf(w, "%s\t%s\t%.1fs\n", strings.ToUpper(e.Action), e.Package, e.Elapsed)
				delete(out, key)
				continue
			}
			fmt.Fprintf(w, "--- %s: %s (%.1fs)\n", strings.ToUpper(e.Action), e.Test, e.Elapsed)
			if e.Action == "fail" {
				failed = true
				if b := out[key]; b != nil {
					fmt.Fprint(w, b.String())
				}
			}
			delete(out, key)
			if !strings.Contains(e.Test, "/") {
				done = append(done, result{e.Test, e.Action, e.Elapsed})
			}
		}
	}
	if err := sc.Err(); err != nil {
		return true, fmt.Errorf("read: %w", err)
	}
	// A test still holding output never finished: the binary died (panic,
	// timeout). Print what it said.
	for key, b := range out {
		if strings.HasSuffix(key, "/") {
			fmt.Fprint(w, b.String())
			continue
		}
		failed = true
		fmt.Fprintf(w, "--- UNFINISHED: %s\n%s", key, b.String())
	}
	if !sawPackage {
		failed = true
		fmt.Fprintln(w, "testsum: no package result in the stream")
	}
	sort.Slice(done, func(i, j int) bool { return done[i].elapsed > done[j].elapsed })
	total := 0.0
	for _, d := range done {
		total += d.elapsed
	}
	fmt.Fprintf(w, "slowest tests (of %d, %.0fs in all):\n", len(done), total)
	for _, d := range done[:min(len(done), 15)] {
		fmt.Fprintf(w, "  %6.1fs  %s  %s\n", d.elapsed, d.action, d.name)
	}
	return failed, nil
}
