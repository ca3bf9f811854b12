package qemucaps

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"time"

	"github.com/ferryvm/ferry/internal/qmp"
)

// ProbeTimeout bounds one probe: starting QEMU, the queries and its exit.
const ProbeTimeout = 20 * time.Second

// cacheVersion is the format of the cache file; bump it when Caps changes.
const cacheVersion = 1

type cacheEntry struct {
	Version int    `json:"version"`
	Binary  string `json:"binary"`
	Size    int64  `json:"size"`
	MtimeNS int64  `json:"mtime_ns"`
	Caps    Caps   `json:"caps"`
}

// Result is what Probe returns.
type Result struct {
	Caps Caps
	// Cached is true when the caps came from the cache file.
	Cached bool
	// Took is how long the probe (or the cache read) took.
	Took time.Duration
}

// Probe returns the capabilities of QEMU binary (a name looked up in PATH
// or a path). When cacheFile is not empty it is read first and used if it
// describes the same binary (path, size and modification time), and
// written after a fresh probe.
func Probe(ctx context.Context, binary, cacheFile string) (Result, error) {
	start := time.Now()
	path, err := exec.LookPath(binary)
	if err != nil {
		return Result{}, fmt.Errorf("probe QEMU: find %s: %w (install qemu-system-x86, see hack/deps.sh)", binary, err)
	}
	if path, err = filepath.Abs(path); err != nil {
		return Result{}, fmt.Errorf("probe QEMU: %w", err)
	}
	fi, err := os.Stat(path)
	if err != nil {
		return Result{}, fmt.Errorf("probe QEMU: %w", err)
	}
	if cacheFile != "" {
		if c, ok := readCache(cacheFile, path, fi); ok {
			return Result{Caps: c, Cached: true, Took: time.Since(start)}, nil
		}
	}
	replies, err := query(ctx, path)
	if err != nil {
		return Result{}, err
	}
	caps, err := Parse(replies)
	if err != nil {
		return Result{}, fmt.Errorf("probe QEMU %s: %w", path, err)
	}
	caps.Binary = path
	if cacheFile != "" {
		if err := writeCache(cacheFile, cacheEntry{Version: cacheVersion, Binary: path, Size: fi.Size(), MtimeNS: fi.ModTime().UnixNano(), Caps: caps}); err != nil {
			return Result{}, err
		}
	}
	return Result{Caps: caps, Took: time.Since(start)}, nil
}

func readCache(file, path string, fi os.FileInfo) (Caps, bool) {
	b, err := os.ReadFile(file)
	if err != nil {
		return Caps{}, false
	}
	var e cacheEntry
	if json.Unmarshal(b, &e) != nil || e.Version != cacheVersion || e.Binary != path || e.Size != fi.Size() || e.MtimeNS != fi.ModTime().UnixNano() {
		return Caps{}, false
	}
	return e.Caps, true
}

func writeCache(file string, e cacheEntry) error {
	b, err := json.Marshal(e)
	if err != nil {
		return fmt.Errorf("encode QEMU capability cache: %w", err)
	}
	if err := os.MkdirAll(filepath.Dir(file), 0o755); err != nil {
		return fmt.Errorf("write QEMU capability cache: %w", err)
	}
	tmp := file + ".tmp"
	if err := os.WriteFile(tmp, b, 0o644); err != nil {
		return fmt.Errorf("write QEMU capability cache: %w", err)
	}
	if err := os.Rename(tmp, file); err != nil {
		return fmt.Errorf("write QEMU capability cache: %w", err)
	}
	return nil
}

// query starts `path -machine none` with a QMP socket in a temporary
// directory, collects the replies Parse needs and quits it.
func query(ctx context.Context, path string) (_ Replies, err error) {
	ctx, cancel := context.WithTimeout(ctx, ProbeTimeout)
	defer cancel()
	defer func() {
		if err != nil {
			err = fmt.Errorf("probe QEMU %s: %w", path, err)
		}
	}()
	dir, err := os.MkdirTemp("", "ferry-qemu-probe-")
	if err != nil {
		return Replies{}, err
	}
	defer os.RemoveAll(dir)
	sock := filepath.Join(dir, "qmp.sock")
	cmd := exec.CommandContext(ctx, path, "-machine", "none", "-nodefaults", "-no-user-config", "-nographic", "-display", "none", "-S",
		"-qmp", "unix:"+sock+",server=on,wait=off")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		return Replies{}, err
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	defer func() {
		// quit was sent on success; kill otherwise, and always reap.
		select {
		case <-exited:
		case <-time.After(2 * time.Second):
			_ = cmd.Process.Kill()
			<-exited
		}
	}()
	for {
		if _, err := os.Stat(sock); err == nil {
			break
		}
		select {
		case err := <-exited:
			exited <- err
			return Replies{}, fmt.Errorf("exited before its QMP socket appeared: %v: %s", err, bytes.TrimSpace(stderr.Bytes()))
		case <-ctx.Done():
			_ = cmd.Process.Kill()
			return Replies{}, fmt.Errorf("QMP socket did not appear: %w", ctx.Err())
		case <-time.After(5 * time.Millisecond):
		}
	}
	var mon *qmp.Monitor
	for {
		mon, err = qmp.Connect(ctx, sock, qmp.WithName("probe"))
		if err == nil {
			break
		}
		// QEMU binds the socket file before it listens: retry a refusal
		// (under load the window is long enough to hit).
		if !errors.Is(err, syscall.ECONNREFUSED) || ctx.Err() != nil {
			_ = cmd.Process.Kill()
			return Replies{}, err
		}
		select {
		case err := <-exited:
			exited <- err
			return Replies{}, fmt.Errorf("exited before it answered on its QMP socket: %v: %s", err, bytes.TrimSpace(stderr.Bytes()))
		case <-ctx.Done():
			_ = cmd.Process.Kill()
			return Replies{}, fmt.Errorf("QMP socket refused connections: %w", ctx.Err())
		case <-time.After(5 * time.Millisecond):
		}
	}
	defer mon.Close()
	var r Replies
	steps := []struct {
		command string
		args    any
		out     *json.RawMessage
	}{
		{"query-version", nil, &r.Version},
		{"query-machines", nil, &r.Machines},
		{"query-cpu-definitions", nil, &r.CPUDefinitions},
		{"query-migrate-capabilities", nil, &r.Capabilities},
		{"query-qmp-schema", nil, &r.Schema},
		{"qom-list-types", map[string]any{"implements": "device", "abstract": false}, &r.Devices},
	}
	for _, s := range steps {
		if err := mon.Run(ctx, s.command, s.args, s.out); err != nil {
			_ = cmd.Process.Kill()
			return Replies{}, err
		}
	}
	if err := mon.Quit(ctx); err != nil && !errors.Is(err, qmp.ErrClosed) {
		_ = cmd.Process.Kill()
	}
	return r, nil
}
