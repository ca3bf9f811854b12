package core_test

import (
	"strings"
	"testing"

	"github.com/ferryvm/ferry/internal/migration/sim"
	"github.com/ferryvm/ferry/internal/scripttest"
)

// TestScripts runs the scenarios in testdata/*.txt: blocks of
//
//	command args...
//	----
//	expected output
//
// separated by blank lines, '#' starts a comment line. The commands are
// sim.Interp's, one interpreter per file. Run with -args -rewrite to
// regenerate the expectations.
func TestScripts(t *testing.T) {
	scripttest.Dir(t, func(t *testing.T, file string) {
		in := &sim.Interp{}
		scripttest.Run(t, file, func(t *testing.T, b scripttest.Block) []string {
			if len(b.Header) != 1 {
				b.Fatalf(t, "want one command line before ----, got %d", len(b.Header))
			}
			f := strings.Fields(b.Header[0])
			got, err := in.Do(f[0], f[1:])
			if err != nil {
				got = "error: " + err.Error()
			}
			return scripttest.Lines(got)
		})
	})
}
