// Package failpoint lets end-to-end tests make a real ferry process stop,
// wait or fail at a named point of its code, so a fault can be injected
// exactly there (a SIGKILL while the server sits between the owner CAS and
// arming the destination, say). Points are armed only through the
// FERRY_FAILPOINTS environment variable of the process; unset, every point
// is a no-op that costs one map lookup.
//
// The variable holds semicolon-separated terms NAME=ACTION[*COUNT]:
//
//	sleep(DURATION)  wait, then go on (a window for the test to act in)
//	error(TEXT)      make the point return an error wrapping ErrInjected
//	exit             kill the process on the spot (SIGKILL semantics: no cleanup)
//
// COUNT limits how many times the term fires (default: every time). A file
// named by FERRY_FAILPOINTS_LOG, if set, gets a line "NAME ACTION" each time
// a point fires, so a test can wait until the process has reached it.
package failpoint

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"
)

// ErrInjected is wrapped by the error an error(...) point returns.
var ErrInjected = errors.New("failpoint: injected error")

// Env is the environment variable that arms failpoints.
const Env = "FERRY_FAILPOINTS"

// LogEnv names a file that records each point that fires.
const LogEnv = "FERRY_FAILPOINTS_LOG"

type term struct {
	action string // sleep, error, exit
	arg    string
	left   int // < 0: unlimited
}

var (
	mu     sync.Mutex
	terms  map[string]*term
	loaded bool
	exit   = func() { os.Exit(137) }
)

// Validate reports whether v is a well-formed FERRY_FAILPOINTS value, so a
// test can check what it arms before it starts a process.
func Validate(v string) error {
	_, err := parse(v)
	return err
}

func parse(v string) (map[string]*term, error) {
	out := map[string]*term{}
	for _, part := range strings.Split(v, ";") {
		part = strings.TrimSpace(part)
		if part == "" {
			continue
		}
		name, spec, ok := strings.Cut(part, "=")
		if !ok || name == "" {
			return nil, fmt.Errorf("%s: term %q: want NAME=ACTION", Env, part)
		}
		t := &term{left: -1}
		if a, c, ok := strings.Cut(spec, "*"); ok {
			n, err := strconv.Atoi(c)
			if err != nil || n < 1 {
				return nil, fmt.Errorf("%s: term %q: count %q must be a positive integer", Env, part, c)
			}
			spec, t.left = a, n
		}
		switch {
		case spec == "exit":
			t.action = "exit"
		case strings.HasPrefix(spec, "sleep(") && strings.HasSuffix(spec, ")"):
			t.action, t.arg = "sleep", spec[6:len(spec)-1]
			if _, err := time.ParseDuration(t.arg); err != nil {
				return nil, fmt.Errorf("%s: term %q: %w", Env, part, err)
			}
		case strings.HasPrefix(spec, "error(") && strings.HasSuffix(spec, ")"):
			t.action, t.arg = "error", spec[6:len(spec)-1]
		default:
			return nil, fmt.Errorf("%s: term %q: action must be sleep(DURATION), error(TEXT) or exit", Env, part)
		}
		out[name] = t
	}
	return out, nil
}

func load() {
	if loaded {
		return
	}
	loaded = true
	v := os.Getenv(Env)
	if v == "" {
		return
	}
	t, err := parse(v)
	if err != nil {
		fmt.Fprintln(os.Stderr, err) // a test that armed a bad value must see why nothing fires
		return
	}
	terms = t
}

// Inject runs the point called name: nil when it is not armed.
func Inject(name string) error {
	mu.Lock()
	load()
	t := terms[name]
	if t == nil || t.left == 0 {
		mu.Unlock()
		return nil
	}
	if t.left > 0 {
		t.left--
	}
	action, arg := t.action, t.arg
	mu.Unlock()
	record(name, action, arg)
	switch action {
	case "sleep":
		d, _ := time.ParseDuration(arg) // validated by Parse
		time.Sleep(d)
	case "error":
		return fmt.Errorf("%s: %s: %w", name, arg, ErrInjected)
	case "exit":
		exit()
	}
	return nil
}

// Armed reports whether the point called name is armed and has firings
// left, without firing it: code that must take another path to make room
// for the point (defer an action so the point can sit before it) asks
// this first.
func Armed(name string) bool {
	mu.Lock()
	defer mu.Unlock()
	load()
	t := terms[name]
	return t != nil && t.left != 0
}

func record(name, action, arg string) {
	p := os.Getenv(LogEnv)
	if p == "" {
		return
	}
	f, err := os.OpenFile(p, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
	if err != nil {
		fmt.Fprintf(os.Stderr, "failpoint %s: log: %v\n", name, err)
		return
	}
	defer f.Close()
	fmt.Fprintf(f, "%s %s(%s)\n", name, action, arg)
}

// reset forgets the parsed environment (tests).
func reset() {
	mu.Lock()
	defer mu.Unlock()
	loaded, terms = false, nil
}
