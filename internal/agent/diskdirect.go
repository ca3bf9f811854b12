package agent

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"syscall"
)

// Local disks are opened with O_DIRECT (QEMU's cache.direct=on) where the
// data dir's filesystem takes it. A live migration's destination writes
// the mirrored disk through QEMU; in the page cache, the mirror's flush
// before it reports ready then has to write the whole disk out at once
// (on a busy host disk, seconds per GiB: the session-5 measurement had the
// flush double a 1 GiB mirror), and the guest's data would sit twice in
// the host's memory. The guest still sees a write cache and flushes it.

// directIOProbe remembers whether the data dir takes O_DIRECT.
type directIOProbe struct {
	once sync.Once
	ok   bool
}

// localDisksDirect reports whether local disks open with O_DIRECT here
// (probed once: an aligned block written to a file in the data dir).
func (a *Agent) localDisksDirect() bool {
	a.direct.once.Do(func() {
		err := probeDirectIO(a.cfg.DataDir)
		a.direct.ok = err == nil
		if err != nil {
			a.log.Warn("the data dir's filesystem refuses O_DIRECT: local disks use the host's page cache (a mirror's final flush then writes the whole disk at once)", "dir", a.cfg.DataDir, "err", err)
		} else {
			a.log.Info("local disks open with O_DIRECT (cache.direct=on)", "dir", a.cfg.DataDir)
		}
	})
	return a.direct.ok
}

// probeDirectIO writes one 4 KiB block with O_DIRECT to a scratch file
// in dir and removes it.
func probeDirectIO(dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("probe O_DIRECT: %w", err)
	}
	path := filepath.Join(dir, fmt.Sprintf(".odirect-probe-%d", os.Getpid()))
	f, err := os.OpenFile(path, os.O_CREATE|os.O_EXCL|os.O_WRONLY|syscall.O_DIRECT, 0o600)
	if err != nil {
		return fmt.Errorf("probe O_DIRECT: open: %w", err)
	}
	defer os.Remove(path)
	// An anonymous mapping is page aligned, as O_DIRECT wants its buffer.
	buf, err := syscall.Mmap(-1, 0, 4096, syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_ANON|syscall.MAP_PRIVATE)
	if err != nil {
		f.Close()
		return fmt.Errorf("probe O_DIRECT: buffer: %w", err)
	}
	defer syscall.Munmap(buf)
	_, werr := f.Write(buf)
	cerr := f.Close()
	if err := errors.Join(werr, cerr); err != nil {
		return fmt.Errorf("probe O_DIRECT: write: %w", err)
	}
	return nil
}

// mkDisksDir creates a VM's disks directory, or narrows an existing one,
// to mode 0700 for root: QEMU opens its own images by path as root before
// it switches to the unprivileged QEMU user (-run-with user=), and that
// user must not reach another VM's images through the data dir.
func mkDisksDir(dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("create disks dir: %w", err)
	}
	if err := os.Chmod(dir, 0o700); err != nil {
		return fmt.Errorf("disks dir: %w", err)
	}
	return nil
}
