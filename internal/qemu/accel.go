package qemu

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"
)

// ProbeTimeout is how long the KVM probe guest gets to print its kernel
// banner. A working KVM prints it well under a second; a broken one (e.g.
// nested virtualization that hangs 64-bit guests) prints nothing at all.
const ProbeTimeout = 8 * time.Second

// probeBanner is the kernel's first console line ("Linux version ...").
const probeBanner = "Linux version"

// ResolveRequest asks which accelerator a VM should use on this host.
type ResolveRequest struct {
	Requested string       // auto (or ""), kvm or tcg
	Binary    string       // QEMU binary; default qemu-system-x86_64 from PATH
	Kernel    string       // probe kernel; default /boot/vmlinuz-$(uname -r) or the newest /boot/vmlinuz-*
	CacheFile string       // JSON verdict cache; "" caches in memory only
	Log       *slog.Logger // default slog.Default()
}

// Result is the resolved accelerator (kvm or tcg) and why.
type Result struct {
	Accel  string
	Reason string
}

// ResolveAccel turns the requested accelerator into kvm or tcg:
//
//   - tcg resolves to tcg;
//   - kvm resolves to kvm, or fails when /dev/kvm cannot be opened;
//   - auto resolves to tcg when /dev/kvm cannot be opened read-write, and
//     otherwise boots Kernel under KVM (no initrd, console on a serial
//     file) and picks kvm only if the kernel banner appears within
//     ProbeTimeout: on some hosts /dev/kvm exists but guests hang.
//
// The probe verdict is cached in CacheFile, keyed by the QEMU binary
// (path, size, mtime), the kernel (path, size) and the host kernel release,
// so it runs once per host; a changed key probes again. Concurrent callers
// share one probe. A fallback to TCG is logged once per process at WARN.
func ResolveAccel(ctx context.Context, req ResolveRequest) (Result, error) {
	log := req.Log
	if log == nil {
		log = slog.Default()
	}
	switch req.Requested {
	case "tcg":
		return Result{Accel: "tcg", Reason: "tcg requested"}, nil
	case "kvm":
		if err := kvmCheck(); err != nil {
			return Result{}, fmt.Errorf("qemu: accel kvm requested but /dev/kvm is unusable: %w", err)
		}
		return Result{Accel: "kvm", Reason: "kvm requested"}, nil
	case "auto", "":
	default:
		return Result{}, fmt.Errorf("qemu: accel: must be one of auto, kvm, tcg, got %q", req.Requested)
	}
	if err := kvmCheck(); err != nil {
		res := Result{Accel: "tcg", Reason: fmt.Sprintf("no /dev/kvm (%v)", err)}
		warnOnce(log, "nokvm", res, false)
		return res, nil
	}
	binary := req.Binary
	if binary == "" {
		binary = "qemu-system-x86_64"
	}
	binPath, err := exec.LookPath(binary)
	if err != nil {
		return Result{}, fmt.Errorf("qemu: accel probe: %w", err)
	}
	kernel := req.Kernel
	if kernel == "" {
		kernel = defaultProbeKernel()
	}
	if kernel == "" {
		res := Result{Accel: "tcg", Reason: "KVM untested: no kernel to probe with in /boot (set a probe kernel)"}
		warnOnce(log, "nokernel", res, false)
		return res, nil
	}
	key, err := makeCacheKey(binPath, kernel)
	if err != nil {
		return Result{}, fmt.Errorf("qemu: accel probe: %w", err)
	}
	res, cached, err := probeOnce(ctx, key, req.CacheFile, binPath, kernel)
	if err != nil {
		return Result{}, err
	}
	if res.Accel == "tcg" {
		warnOnce(log, req.CacheFile+"\x00"+key.String(), res, cached)
	}
	return res, nil
}

// openKVM checks that /dev/kvm can be opened read-write.
func openKVM() error {
	f, err := os.OpenFile("/dev/kvm", os.O_RDWR, 0)
	if err != nil {
		return err
	}
	return f.Close()
}

// defaultProbeKernel finds a kernel image in /boot.
func defaultProbeKernel() string {
	if rel := osRelease(); rel != "" {
		if k := "/boot/vmlinuz-" + rel; fileExists(k) {
			return k
		}
	}
	m, _ := filepath.Glob("/boot/vmlinuz-*")
	sort.Strings(m)
	if len(m) == 0 {
		return ""
	}
	return m[len(m)-1]
}

func fileExists(p string) bool { _, err := os.Stat(p); return err == nil }

func osRelease() string {
	b, err := os.ReadFile("/proc/sys/kernel/osrelease")
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
}

// cacheKey identifies the inputs a probe verdict depends on.
type cacheKey struct {
	QEMU       string `json:"qemu"`
	QEMUSize   int64  `json:"qemuSize"`
	QEMUMtime  int64  `json:"qemuMtimeUnixNano"`
	Kernel     string `json:"kernel"`
	KernelSize int64  `json:"kernelSize"`
	OSRelease  string `json:"osRelease"`
}

func (k cacheKey) String() string { b, _ := json.Marshal(k); return string(b) }

// cacheEntry is the CacheFile content.
type cacheEntry struct {
	Key      cacheKey  `json:"key"`
	Accel    string    `json:"accel"`
	Reason   string    `json:"reason"`
	ProbedAt time.Time `json:"probedAt"`
	ProbeMs  int64     `json:"probeMs"`
}

func makeCacheKey(binPath, kernel string) (cacheKey, error) {
	real, err := filepath.EvalSymlinks(binPath)
	if err != nil {
		return cacheKey{}, err
	}
	bst, err := os.Stat(real)
	if err != nil {
		return cacheKey{}, err
	}
	kst, err := os.Stat(kernel)
	if err != nil {
		return cacheKey{}, fmt.Errorf("probe kernel: %w", err)
	}
	return cacheKey{QEMU: real, QEMUSize: bst.Size(), QEMUMtime: bst.ModTime().UnixNano(),
		Kernel: kernel, KernelSize: kst.Size(), OSRelease: osRelease()}, nil
}

// probeCall is one in-flight or finished probe shared by callers.
type probeCall struct {
	done   chan struct{}
	res    Result
	cached bool
	err    error
}

var (
	probeMu    sync.Mutex
	probeCalls = map[string]*probeCall{} // by cache file + key; errors are dropped
	warned     = map[string]bool{}
	// probeFunc runs the probe and kvmCheck tests /dev/kvm; tests replace them.
	probeFunc = runProbe
	kvmCheck  = openKVM
)

// probeOnce returns the verdict for key from memory, CacheFile or a new
// probe, running at most one probe at a time per (cacheFile, key).
func probeOnce(ctx context.Context, key cacheKey, cacheFile, binPath, kernel string) (Result, bool, error) {
	id := cacheFile + "\x00" + key.String()
	probeMu.Lock()
	c, ok := probeCalls[id]
	if !ok {
		c = &probeCall{done: make(chan struct{})}
		probeCalls[id] = c
	}
	probeMu.Unlock()
	if ok {
		select {
		case <-c.done:
			return c.res, true, c.err
		case <-ctx.Done():
			return Result{}, false, fmt.Errorf("qemu: waiting for KVM probe: %w", ctx.Err())
		}
	}
	c.res, c.cached, c.err = resolveKey(ctx, key, cacheFile, binPath, kernel)
	if c.err != nil {
		probeMu.Lock()
		delete(probeCalls, id) // let a later caller retry
		probeMu.Unlock()
	}
	close(c.done)
	return c.res, c.cached, c.err
}

// resolveKey reads the cache file or probes and writes it.
func resolveKey(ctx context.Context, key cacheKey, cacheFile, binPath, kernel string) (Result, bool, error) {
	if cacheFile != "" {
		if b, err := os.ReadFile(cacheFile); err == nil {
			var e cacheEntry
			if json.Unmarshal(b, &e) == nil && e.Key == key && (e.Accel == "kvm" || e.Accel == "tcg") {
				return Result{Accel: e.Accel, Reason: e.Reason}, true, nil
			}
		}
	}
	start := time.Now()
	ok, detail, err := probeFunc(ctx, binPath, kernel, "kvm", ProbeTimeout)
	if err != nil {
		return Result{}, false, fmt.Errorf("qemu: KVM probe: %w", err)
	}
	took := time.Since(start)
	res := Result{Accel: "tcg", Reason: "KVM probe failed (" + detail + ")"}
	if ok {
		res = Result{Accel: "kvm", Reason: fmt.Sprintf("KVM probe booted a guest kernel in %.1fs", took.Seconds())}
	}
	if cacheFile != "" {
		e := cacheEntry{Key: key, Accel: res.Accel, Reason: res.Reason, ProbedAt: time.Now().UTC(), ProbeMs: took.Milliseconds()}
		if err := writeFileAtomic(cacheFile, e); err != nil {
			return Result{}, false, fmt.Errorf("qemu: write KVM probe cache: %w", err)
		}
	}
	return res, false, nil
}

// writeFileAtomic writes v as JSON to path via a temporary file.
func writeFileAtomic(path string, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o750); err != nil {
		return err
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), filepath.Base(path)+".tmp*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(append(b, '\n')); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}

// warnOnce logs a TCG fallback at WARN the first time id is seen.
func warnOnce(log *slog.Logger, id string, res Result, cached bool) {
	probeMu.Lock()
	seen := warned[id]
	warned[id] = true
	probeMu.Unlock()
	if !seen {
		log.Warn(res.Reason+"; falling back to TCG — expect slower guests", "accel", res.Accel, "cached", cached)
	}
}

// runProbe boots kernel under accel and reports whether the kernel banner
// reached the serial console within timeout; detail explains a failure. An
// error means the probe itself could not run (or ctx ended).
func runProbe(ctx context.Context, binary, kernel, accel string, timeout time.Duration) (ok bool, detail string, err error) {
	dir, err := os.MkdirTemp("", "ferry-accel-probe-")
	if err != nil {
		return false, "", err
	}
	defer os.RemoveAll(dir)
	serial, logPath := filepath.Join(dir, "serial.log"), filepath.Join(dir, "qemu.log")
	logf, err := os.Create(logPath)
	if err != nil {
		return false, "", err
	}
	cmd := exec.Command(binary, "-accel", accel, "-m", "128", "-nodefaults", "-display", "none",
		"-no-reboot", "-serial", "file:"+serial, "-kernel", kernel, "-append", "console=ttyS0 panic=-1")
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	err = cmd.Start()
	logf.Close()
	if err != nil {
		return false, "", fmt.Errorf("start %s: %w", binary, err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	defer func() {
		_ = cmd.Process.Signal(syscall.SIGKILL) // by PID (pidfd); no-op once exited
		<-exited
	}()

	booted := func() bool {
		b, _ := os.ReadFile(serial)
		return strings.Contains(string(b), probeBanner)
	}
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-tick.C:
			if booted() {
				return true, "", nil
			}
		case <-exited:
			if booted() {
				return true, "", nil
			}
			tail := tailFile(logPath, 0, 3)
			if tail == "" {
				tail = "no output"
			}
			return false, fmt.Sprintf("qemu exited under %s before the guest printed %q: %s", strings.ToUpper(accel), probeBanner, tail), nil
		case <-deadline.C:
			return false, fmt.Sprintf("guest did not boot within %s under %s", timeout.Round(time.Second), strings.ToUpper(accel)), nil
		case <-ctx.Done():
			return false, "", fmt.Errorf("probe interrupted: %w", ctx.Err())
		}
	}
}
