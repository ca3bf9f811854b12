package qemu

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// resetProbeState forgets in-memory verdicts and warnings (as a restarted
// agent would) and restores the real probe hooks when the test ends.
func resetProbeState(t *testing.T) {
	t.Helper()
	clear := func() {
		probeMu.Lock()
		probeCalls = map[string]*probeCall{}
		warned = map[string]bool{}
		probeMu.Unlock()
	}
	clear()
	t.Cleanup(func() {
		clear()
		probeFunc, kvmCheck = runProbe, openKVM
	})
}

func forgetVerdicts() {
	probeMu.Lock()
	probeCalls = map[string]*probeCall{}
	probeMu.Unlock()
}

// countingProbe wraps probe and counts its runs.
func countingProbe(n *atomic.Int32, probe func(context.Context, string, string, string, time.Duration) (bool, string, error)) func(context.Context, string, string, string, time.Duration) (bool, string, error) {
	return func(ctx context.Context, bin, kernel, accel string, timeout time.Duration) (bool, string, error) {
		n.Add(1)
		return probe(ctx, bin, kernel, accel, timeout)
	}
}

// fakeHost sets up a fake QEMU binary and kernel so ResolveAccel reaches
// the (replaced) probe without QEMU or /dev/kvm.
func fakeHost(t *testing.T) (bin, kernel, cache string) {
	t.Helper()
	dir := t.TempDir()
	bin, kernel = filepath.Join(dir, "qemu"), filepath.Join(dir, "vmlinuz")
	os.WriteFile(bin, []byte("#!/bin/sh\nexit 1\n"), 0o755)
	os.WriteFile(kernel, []byte("kernel"), 0o644)
	kvmCheck = func() error { return nil }
	return bin, kernel, filepath.Join(dir, "accel.json")
}

func logBuffer() (*slog.Logger, *bytes.Buffer) {
	var b bytes.Buffer
	return slog.New(slog.NewTextHandler(&b, nil)), &b
}

func TestResolveAccelExplicit(t *testing.T) {
	resetProbeState(t)
	var n atomic.Int32
	probeFunc = countingProbe(&n, runProbe)
	res, err := ResolveAccel(context.Background(), ResolveRequest{Requested: "tcg"})
	if err != nil || res.Accel != "tcg" {
		t.Errorf("tcg: %+v, %v", res, err)
	}
	if _, err := ResolveAccel(context.Background(), ResolveRequest{Requested: "xen"}); err == nil || !strings.Contains(err.Error(), `must be one of auto, kvm, tcg, got "xen"`) {
		t.Errorf("xen: %v", err)
	}
	kvmCheck = func() error { return errors.New("open /dev/kvm: no such file or directory") }
	if _, err := ResolveAccel(context.Background(), ResolveRequest{Requested: "kvm"}); err == nil || !strings.Contains(err.Error(), "accel kvm requested but /dev/kvm is unusable") {
		t.Errorf("kvm without /dev/kvm: %v", err)
	}
	log, buf := logBuffer()
	res, err = ResolveAccel(context.Background(), ResolveRequest{Requested: "auto", Log: log})
	if err != nil || res.Accel != "tcg" || !strings.HasPrefix(res.Reason, "no /dev/kvm") {
		t.Errorf("auto without /dev/kvm: %+v, %v", res, err)
	}
	if !strings.Contains(buf.String(), "level=WARN") || !strings.Contains(buf.String(), "falling back to TCG") {
		t.Errorf("no WARN logged: %s", buf.String())
	}
	kvmCheck = func() error { return nil }
	if res, err := ResolveAccel(context.Background(), ResolveRequest{Requested: "kvm"}); err != nil || res.Accel != "kvm" {
		t.Errorf("kvm: %+v, %v", res, err)
	}
	if n.Load() != 0 {
		t.Errorf("explicit requests ran %d probes", n.Load())
	}
}

func TestResolveAccelCacheAndStaleKey(t *testing.T) {
	resetProbeState(t)
	bin, kernel, cache := fakeHost(t)
	var n atomic.Int32
	probeFunc = countingProbe(&n, func(context.Context, string, string, string, time.Duration) (bool, string, error) {
		return false, "guest did not boot within 8s under KVM", nil
	})
	log, buf := logBuffer()
	req := ResolveRequest{Requested: "auto", Binary: bin, Kernel: kernel, CacheFile: cache, Log: log}
	res, err := ResolveAccel(context.Background(), req)
	if err != nil || res.Accel != "tcg" || res.Reason != "KVM probe failed (guest did not boot within 8s under KVM)" {
		t.Fatalf("first: %+v, %v", res, err)
	}
	const warning = "KVM probe failed (guest did not boot within 8s under KVM); falling back to TCG — expect slower guests"
	if !strings.Contains(buf.String(), warning) {
		t.Errorf("log lacks %q:\n%s", warning, buf.String())
	}
	for i := 0; i < 3; i++ {
		forgetVerdicts() // force a read of the cache file
		if res2, err := ResolveAccel(context.Background(), req); err != nil || res2 != res {
			t.Fatalf("cached: %+v, %v", res2, err)
		}
	}
	if n.Load() != 1 {
		t.Errorf("probe ran %d times, want 1 (cache file ignored?)", n.Load())
	}
	if c := strings.Count(buf.String(), "falling back to TCG"); c != 1 {
		t.Errorf("fallback logged %d times, want once", c)
	}

	// A stale key (host kernel upgrade) probes again.
	var e cacheEntry
	b, _ := os.ReadFile(cache)
	if err := json.Unmarshal(b, &e); err != nil || e.Key.Kernel != kernel || e.Key.OSRelease == "" {
		t.Fatalf("cache file %s: %v %+v", b, err, e)
	}
	e.Key.OSRelease = "0.0.0-old"
	b, _ = json.Marshal(e)
	os.WriteFile(cache, b, 0o644)
	forgetVerdicts()
	ResolveAccel(context.Background(), req)
	if n.Load() != 2 {
		t.Errorf("stale key: probe ran %d times, want 2", n.Load())
	}
	// A replaced QEMU binary probes again, and now KVM works.
	probeFunc = countingProbe(&n, func(context.Context, string, string, string, time.Duration) (bool, string, error) {
		return true, "", nil
	})
	os.WriteFile(bin, []byte("#!/bin/sh\nexit 2\n"), 0o755)
	forgetVerdicts()
	res, err = ResolveAccel(context.Background(), req)
	if err != nil || res.Accel != "kvm" || !strings.Contains(res.Reason, "KVM probe booted") || n.Load() != 3 {
		t.Errorf("new binary: %+v, %v, %d probes", res, err, n.Load())
	}
	// A corrupt cache file probes again.
	os.WriteFile(cache, []byte("{not json"), 0o644)
	forgetVerdicts()
	ResolveAccel(context.Background(), req)
	if n.Load() != 4 {
		t.Errorf("corrupt cache: probe ran %d times, want 4", n.Load())
	}
}

func TestResolveAccelConcurrentCallersShareOneProbe(t *testing.T) {
	resetProbeState(t)
	bin, kernel, cache := fakeHost(t)
	var n atomic.Int32
	probeFunc = countingProbe(&n, func(context.Context, string, string, string, time.Duration) (bool, string, error) {
		time.Sleep(200 * time.Millisecond)
		return true, "", nil
	})
	var wg sync.WaitGroup
	for i := 0; i < 8; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			res, err := ResolveAccel(context.Background(), ResolveRequest{Binary: bin, Kernel: kernel, CacheFile: cache})
			if err != nil || res.Accel != "kvm" {
				t.Errorf("ResolveAccel: %+v, %v", res, err)
			}
		}()
	}
	wg.Wait()
	if n.Load() != 1 {
		t.Errorf("probe ran %d times for 8 concurrent callers, want 1", n.Load())
	}
}

func TestResolveAccelProbeErrorNotCached(t *testing.T) {
	resetProbeState(t)
	bin, kernel, cache := fakeHost(t)
	probeFunc = func(ctx context.Context, _, _, _ string, _ time.Duration) (bool, string, error) {
		return false, "", context.DeadlineExceeded
	}
	if _, err := ResolveAccel(context.Background(), ResolveRequest{Binary: bin, Kernel: kernel, CacheFile: cache}); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err = %v", err)
	}
	if _, err := os.Stat(cache); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("an interrupted probe was cached")
	}
	probeFunc = func(context.Context, string, string, string, time.Duration) (bool, string, error) {
		return true, "", nil
	}
	if res, err := ResolveAccel(context.Background(), ResolveRequest{Binary: bin, Kernel: kernel, CacheFile: cache}); err != nil || res.Accel != "kvm" {
		t.Errorf("retry after error: %+v, %v", res, err)
	}
}

// TestProbeUnderTCGBoots checks the probe's success criterion for real:
// under TCG the same guest prints its banner quickly.
func TestProbeUnderTCGBoots(t *testing.T) {
	bin, kernel := needQEMU(t), needKernel(t)
	start := time.Now()
	ok, detail, err := runProbe(context.Background(), bin, kernel, "tcg", 30*time.Second)
	if err != nil || !ok {
		t.Fatalf("TCG probe: ok=%v detail=%q err=%v", ok, detail, err)
	}
	t.Logf("TCG probe saw %q after %s", probeBanner, time.Since(start).Round(time.Millisecond))
}

// TestResolveAccelAutoRealProbe runs the real probe on this host. Where
// /dev/kvm exists but guests hang (nested virtualization), auto must fall
// back to TCG after ProbeTimeout; the second call must come from the cache.
func TestResolveAccelAutoRealProbe(t *testing.T) {
	bin, kernel := needQEMU(t), needKernel(t)
	resetProbeState(t)
	var n atomic.Int32
	probeFunc = countingProbe(&n, runProbe)
	cache := filepath.Join(t.TempDir(), "accel.json")
	log, buf := logBuffer()
	req := ResolveRequest{Requested: "auto", Binary: bin, Kernel: kernel, CacheFile: cache, Log: log}

	start := time.Now()
	res, err := ResolveAccel(context.Background(), req)
	took := time.Since(start)
	if err != nil {
		t.Fatalf("ResolveAccel: %v", err)
	}
	t.Logf("auto -> %s (%s) in %s", res.Accel, res.Reason, took.Round(time.Millisecond))
	if res.Accel != "kvm" && res.Accel != "tcg" {
		t.Fatalf("accel = %q", res.Accel)
	}
	if openKVM() == nil {
		if !strings.Contains(res.Reason, "KVM probe") || n.Load() != 1 {
			t.Errorf("with /dev/kvm the verdict must come from one probe: %+v, %d probes", res, n.Load())
		}
		if res.Accel == "tcg" && !strings.Contains(buf.String(), "falling back to TCG") {
			t.Errorf("fallback not logged: %s", buf.String())
		}
		if took > ProbeTimeout+5*time.Second {
			t.Errorf("probe took %s, timeout is %s", took, ProbeTimeout)
		}
	} else if !strings.HasPrefix(res.Reason, "no /dev/kvm") {
		t.Errorf("reason = %q, want no /dev/kvm", res.Reason)
	}

	forgetVerdicts() // a restarted agent: only the cache file remains
	start = time.Now()
	res2, err := ResolveAccel(context.Background(), req)
	if err != nil || res2 != res {
		t.Fatalf("second call: %+v, %v; want %+v", res2, err, res)
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("cached call took %s", d)
	}
	if n.Load() > 1 {
		t.Errorf("probe ran again: %d runs", n.Load())
	}
}
