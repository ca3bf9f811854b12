package failpoint

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestParseRejectsBadTerms(t *testing.T) {
	for _, v := range []string{"x", "=exit", "a=sleep(soon)", "a=boom", "a=exit*0", "a=exit*x"} {
		if err := Validate(v); err == nil || !strings.Contains(err.Error(), Env) {
			t.Errorf("Validate(%q) = %v, want an error naming %s", v, err, Env)
		}
	}
}

func TestInject(t *testing.T) {
	log := filepath.Join(t.TempDir(), "fp.log")
	t.Setenv(Env, "a=error(boom)*1; b=sleep(30ms); c=exit")
	t.Setenv(LogEnv, log)
	reset()
	t.Cleanup(reset)
	if err := Inject("a"); !errors.Is(err, ErrInjected) || !strings.Contains(err.Error(), "boom") {
		t.Fatalf("first a = %v, want the injected error", err)
	}
	if err := Inject("a"); err != nil {
		t.Fatalf("second a = %v, want nil (count 1)", err)
	}
	start := time.Now()
	if err := Inject("b"); err != nil || time.Since(start) < 30*time.Millisecond {
		t.Fatalf("b = %v after %s, want a 30ms sleep", err, time.Since(start))
	}
	exited := false
	exit = func() { exited = true }
	t.Cleanup(func() { exit = func() { os.Exit(137) } })
	_ = Inject("c")
	if !exited {
		t.Fatal("c did not exit")
	}
	if err := Inject("unarmed"); err != nil {
		t.Fatalf("unarmed point = %v", err)
	}
	b, err := os.ReadFile(log)
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Count(string(b), "\n"); got != 3 {
		t.Fatalf("log has %d lines, want 3 (a, b, c):\n%s", got, b)
	}
}

func TestArmed(t *testing.T) {
	t.Setenv(Env, "a=sleep(1ms)*1")
	t.Setenv(LogEnv, "")
	reset()
	t.Cleanup(reset)
	if !Armed("a") || Armed("b") {
		t.Fatalf("Armed(a) = %v, Armed(b) = %v; want true, false", Armed("a"), Armed("b"))
	}
	_ = Inject("a")
	if Armed("a") {
		t.Fatal("Armed(a) after its only firing = true, want false")
	}
}
