// Package health runs a host's health checks for `ferry agent`: a
// command's exit status, a marker file's presence, an HTTP probe, each
// with a period and a failure threshold, and folds their results into the
// host's verdict, healthy, degraded or failed, which the agent reports in
// every heartbeat (the server evacuates a degraded host when the policy
// says so).
//
// The verdict (Tracker) is pure; Run holds the clock and the probes.
package health

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"sort"
	"strings"
	"sync"
	"time"
)

// Verdicts.
const (
	Healthy  = "healthy"
	Degraded = "degraded"
	Failed   = "failed"
)

// Check kinds.
const (
	KindFile    = "file"
	KindCommand = "command"
	KindHTTP    = "http"
)

// ErrInvalid is wrapped by Parse's and Validate's errors.
var ErrInvalid = errors.New("invalid health check")

// Defaults for zero Check fields.
const (
	DefaultPeriod    = 2 * time.Second
	DefaultTimeout   = 5 * time.Second
	DefaultThreshold = 2
)

// Check is one health check.
type Check struct {
	// Kind is file (fails while Target exists: a marker an operator or a
	// monitoring tool drops), command (fails on a non-zero exit of
	// Target, run by sh -c) or http (fails unless GET Target answers 2xx).
	Kind   string
	Target string
	// Severity is what the host becomes when the check fails: degraded
	// (default) or failed.
	Severity string
	// Period between runs; Timeout of one run; Threshold consecutive
	// failures before the check counts as failing.
	Period    time.Duration
	Timeout   time.Duration
	Threshold int
}

// Name identifies the check in the verdict's detail.
func (c Check) Name() string { return c.Kind + ":" + c.Target }

// Parse reads a check from its flag form, KIND:TARGET with an optional
// "failed:" prefix for the severity (e.g. file:/run/ferry/degraded,
// failed:command:/usr/local/bin/check-raid, http:http://127.0.0.1:9100/ok).
func Parse(s string, period time.Duration, threshold int) (Check, error) {
	c := Check{Severity: Degraded, Period: period, Threshold: threshold}
	rest := s
	if r, ok := strings.CutPrefix(rest, Failed+":"); ok {
		c.Severity, rest = Failed, r
	}
	kind, target, ok := strings.Cut(rest, ":")
	if !ok {
		return Check{}, fmt.Errorf("%w: %q: want KIND:TARGET with KIND file, command or http (e.g. file:/run/ferry/degraded)", ErrInvalid, s)
	}
	c.Kind, c.Target = kind, target
	return c, c.Validate()
}

// Validate checks one check; the error names the field and the fix.
func (c Check) Validate() error {
	switch c.Kind {
	case KindFile, KindCommand, KindHTTP:
	default:
		return fmt.Errorf("%w: kind %q: use file, command or http", ErrInvalid, c.Kind)
	}
	if c.Target == "" {
		return fmt.Errorf("%w: %s check has no target: give a path, a command or a URL", ErrInvalid, c.Kind)
	}
	if c.Kind == KindHTTP && !strings.HasPrefix(c.Target, "http://") && !strings.HasPrefix(c.Target, "https://") {
		return fmt.Errorf("%w: http check target %q: must be an http:// or https:// URL", ErrInvalid, c.Target)
	}
	if c.Severity != "" && c.Severity != Degraded && c.Severity != Failed {
		return fmt.Errorf("%w: severity %q: use degraded or failed", ErrInvalid, c.Severity)
	}
	if c.Period < 0 || c.Timeout < 0 || c.Threshold < 0 {
		return fmt.Errorf("%w: %s: period, timeout and threshold must not be negative", ErrInvalid, c.Name())
	}
	return nil
}

func (c Check) withDefaults() Check {
	if c.Severity == "" {
		c.Severity = Degraded
	}
	if c.Period == 0 {
		c.Period = DefaultPeriod
	}
	if c.Timeout == 0 {
		c.Timeout = min(DefaultTimeout, c.Period)
	}
	if c.Threshold == 0 {
		c.Threshold = DefaultThreshold
	}
	return c
}

// Tracker folds check results into the verdict. Safe for concurrent use.
type Tracker struct {
	mu     sync.Mutex
	checks []Check
	fails  map[string]int    // consecutive failures per check
	last   map[string]string // last failure per check
}

// NewTracker tracks checks (defaults applied).
func NewTracker(checks []Check) *Tracker {
	t := &Tracker{fails: map[string]int{}, last: map[string]string{}}
	for _, c := range checks {
		t.checks = append(t.checks, c.withDefaults())
	}
	return t
}

// Record folds one result of check name (err nil: it passed).
func (t *Tracker) Record(name string, err error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if err == nil {
		t.fails[name] = 0
		delete(t.last, name)
		return
	}
	t.fails[name]++
	t.last[name] = err.Error()
}

// Verdict is the host's health and, unless healthy, which checks fail
// and how. A check counts once it failed Threshold times in a row; the
// worst severity among the failing checks wins.
func (t *Tracker) Verdict() (string, string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	verdict := Healthy
	var details []string
	for _, c := range t.checks {
		if t.fails[c.Name()] < c.Threshold {
			continue
		}
		if c.Severity == Failed {
			verdict = Failed
		} else if verdict == Healthy {
			verdict = Degraded
		}
		details = append(details, fmt.Sprintf("%s failed %d times: %s", c.Name(), t.fails[c.Name()], t.last[c.Name()]))
	}
	sort.Strings(details)
	return verdict, strings.Join(details, "; ")
}

// Run runs every check on its period until ctx ends.
func (t *Tracker) Run(ctx context.Context) {
	var wg sync.WaitGroup
	for _, c := range t.checks {
		wg.Add(1)
		go func() {
			defer wg.Done()
			tick := time.NewTicker(c.Period)
			defer tick.Stop()
			for {
				cctx, cancel := context.WithTimeout(ctx, c.Timeout)
				err := probe(cctx, c)
				cancel()
				if ctx.Err() != nil {
					return
				}
				t.Record(c.Name(), err)
				select {
				case <-ctx.Done():
					return
				case <-tick.C:
				}
			}
		}()
	}
	wg.Wait()
}

// probe runs one check once.
func probe(ctx context.Context, c Check) error {
	switch c.Kind {
	case KindFile:
		if _, err := os.Stat(c.Target); err == nil {
			return fmt.Errorf("marker %s exists", c.Target)
		} else if !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("marker %s: %w", c.Target, err)
		}
		return nil
	case KindCommand:
		out, err := exec.CommandContext(ctx, "sh", "-c", c.Target).CombinedOutput()
		if err != nil {
			msg := strings.TrimSpace(string(out))
			if len(msg) > 200 {
				msg = msg[:200]
			}
			return fmt.Errorf("%w: %s", err, msg)
		}
		return nil
	default:
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.Target, nil)
		if err != nil {
			return err
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode/100 != 2 {
			return fmt.Errorf("status %s", resp.Status)
		}
		return nil
	}
}
