// Command ferry-bench is `make bench`: it live-migrates the same test
// guest with Ferry, plain QEMU (defaults) and libvirt (defaults and tuned)
// between the two namespaced hosts of one dev cluster, in several load
// and link scenarios, and
// writes per-run JSON, a Markdown summary and SVG plots to
// bench/results/<timestamp>/. See bench/README.md.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/ferryvm/ferry/bench/internal/bench"
)

func main() {
	o := bench.Options{Out: os.Stdout}
	var scenarios, systems string
	flag.IntVar(&o.Runs, "runs", 3, "runs per scenario and system (medians are reported)")
	flag.StringVar(&scenarios, "scenarios", strings.Join(bench.AllScenarios, ","), "comma-separated scenarios: "+strings.Join(bench.AllScenarios, ", "))
	flag.StringVar(&systems, "systems", strings.Join(bench.AllSystems, ","), "comma-separated systems: "+strings.Join(bench.AllSystems, ", ")+"; also ferry-plain (Ferry with --insecure-transport: ferry ÷ ferry-plain is the cost of TLS; make bench-tls)")
	flag.DurationVar(&o.Cap, "cap", 60*time.Second, "abort a migration that has not completed after this long")
	flag.Float64Var(&o.LinkMiBps, "link-mibps", 48, "host-to-host link rate of the shaped scenarios, MiB/s (half dirties at half of it, heavy at twice, wan and flaky at a third)")
	flag.Int64Var(&o.MemoryMiB, "memory-mib", 1024, "guest RAM, MiB (big: 4096)")
	flag.Int64Var(&o.WSSMiB, "wss-mib", 256, "dirtier working set in half/heavy/wan/flaky, MiB")
	flag.DurationVar(&o.Settle, "settle", 3*time.Second, "let the dirtier run this long before migrating")
	flag.BoolVar(&o.Warmup, "warmup", true, "before the measured runs, one unmeasured migration per Ferry system and shaping setting, and one before a scenario with local disks, so Ferry's server has learned the rates QEMU's stream, the link and the disk mirror reach (-warmup=false: off)")
	flag.StringVar(&o.FerryStrategy, "strategy", "", "ferry migrate --strategy (empty: Ferry's default)")
	flag.IntVar(&o.FerryMultifd, "multifd", 0, "ferry migrate --multifd N: N parallel streams for Ferry's systems (0: Ferry's planner decides)")
	flag.BoolVar(&o.FerryInsecure, "ferry-insecure", false, "ferry migrate --insecure-transport: Ferry's streams in plaintext like the libvirt systems' (default: Ferry's TLS)")
	flag.StringVar(&o.Repo, "repo", ".", "repository root (bin/ferry, build/guest, hack/, bench/scripts)")
	flag.StringVar(&o.ResultsDir, "results", "", "parent of the timestamped result directory (default REPO/bench/results)")
	flag.StringVar(&o.Prefix, "prefix", "fbench", "namespace prefix of the benchmark's dev cluster")
	estimate := flag.Bool("estimate", false, "print the estimated duration of the run the other flags describe, and exit")
	resummarize := flag.String("resummarize", "", "recompute the summary and plots of this result directory from its run files, and exit")
	flag.Parse()
	if *resummarize != "" {
		if err := bench.Resummarize(*resummarize, os.Stdout); err != nil {
			fmt.Fprintf(os.Stderr, "ferry-bench: %v\n", err)
			os.Exit(1)
		}
		return
	}
	if flag.NArg() > 0 {
		fmt.Fprintf(os.Stderr, "ferry-bench: unexpected arguments %q\n", flag.Args())
		os.Exit(2)
	}
	o.Scenarios = splitList(scenarios)
	o.Systems = splitList(systems)
	if o.Runs < 1 {
		fmt.Fprintln(os.Stderr, "ferry-bench: -runs must be at least 1")
		os.Exit(2)
	}
	if o.FerryMultifd < 0 || o.FerryMultifd > 16 {
		fmt.Fprintf(os.Stderr, "ferry-bench: -multifd %d: give 0 (Ferry's planner decides) or 1..16 streams\n", o.FerryMultifd)
		os.Exit(2)
	}
	if *estimate {
		d, err := bench.EstimateFor(o)
		if err != nil {
			fmt.Fprintf(os.Stderr, "ferry-bench: %v\n", err)
			os.Exit(2)
		}
		fmt.Printf("estimated %s\n", d.Round(time.Minute))
		return
	}
	repo, err := filepath.Abs(o.Repo)
	if err != nil {
		fmt.Fprintf(os.Stderr, "ferry-bench: %v\n", err)
		os.Exit(2)
	}
	o.Repo = repo
	if o.ResultsDir == "" {
		o.ResultsDir = filepath.Join(repo, "bench", "results")
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	dir, err := bench.Run(ctx, o)
	if err != nil {
		fmt.Fprintf(os.Stderr, "ferry-bench: %v\n", err)
		if dir != "" {
			fmt.Fprintf(os.Stderr, "ferry-bench: partial results in %s\n", dir)
		}
		os.Exit(1)
	}
}

func splitList(s string) []string {
	var out []string
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}
