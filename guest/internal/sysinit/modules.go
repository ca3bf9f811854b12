//go:build linux

package sysinit

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// ModuleEntry is one line of the module list written by
// hack/build-guest.sh into the initramfs (/etc/ferry/modules):
//
//	kernel/drivers/virtio/virtio_ring.ko   load this file (relative to /lib/modules/<release>)
//	builtin virtio_blk                     built into the kernel, nothing to load
//	missing foo                            not found at build time
//
// Blank lines and lines starting with '#' are ignored.
type ModuleEntry struct {
	Name   string // module name (file base without .ko)
	Path   string // relative .ko path; "" for builtin/missing
	Status string // "load", "builtin" or "missing"
}

// ParseModuleList parses a module list.
func ParseModuleList(r io.Reader) ([]ModuleEntry, error) {
	var out []ModuleEntry
	sc := bufio.NewScanner(r)
	for ln := 1; sc.Scan(); ln++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		f := strings.Fields(line)
		switch {
		case len(f) == 2 && (f[0] == "builtin" || f[0] == "missing"):
			out = append(out, ModuleEntry{Name: f[1], Status: f[0]})
		case len(f) == 1 && strings.HasSuffix(f[0], ".ko"):
			out = append(out, ModuleEntry{Name: strings.TrimSuffix(filepath.Base(f[0]), ".ko"), Path: f[0], Status: "load"})
		default:
			return nil, fmt.Errorf("module list line %d: cannot parse %q", ln, line)
		}
	}
	return out, sc.Err()
}

// LoadModules loads the modules listed in listFile in order from
// /lib/modules/<release>/. It logs one line per module and returns the
// number that failed to load.
func LoadModules(listFile string, logf Logf) int {
	f, err := os.Open(listFile)
	if err != nil {
		logf("modules: %v", err)
		return 1
	}
	defer f.Close()
	list, err := ParseModuleList(f)
	if err != nil {
		logf("modules: %v", err)
		return 1
	}
	base := filepath.Join("/lib/modules", KernelRelease())
	failed := 0
	for _, m := range list {
		switch m.Status {
		case "builtin":
			logf("module %s: built into the kernel", m.Name)
			continue
		case "missing":
			logf("module %s: not available for this kernel (skipped at build time)", m.Name)
			continue
		}
		t0 := time.Now()
		err := loadModule(filepath.Join(base, m.Path))
		switch {
		case err == nil:
			logf("module %s: loaded (%v)", m.Name, time.Since(t0).Round(time.Millisecond))
		case err == unix.EEXIST:
			logf("module %s: already loaded", m.Name)
		default:
			failed++
			logf("module %s: FAILED: %v", m.Name, err)
		}
	}
	return failed
}

func loadModule(path string) error {
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	return unix.FinitModule(fd, "", 0)
}
