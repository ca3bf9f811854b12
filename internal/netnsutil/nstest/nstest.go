// Package nstest makes throwaway network namespaces for tests. Each one has
// a unique name (ferry-ut-PID-RANDOM by default), its loopback up, and is
// removed by t.Cleanup together with every process still inside it.
package nstest

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/ferryvm/ferry/internal/netnsutil"
)

// RequireRoot skips the test unless it runs as root with iproute2's ip.
func RequireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to create network namespaces")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		t.Skip("needs iproute2's ip")
	}
}

// UniqueName returns prefix-PID-RANDOM, e.g. "ferry-ut-1234-a1b2c3".
func UniqueName(prefix string) string {
	b := make([]byte, 3)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	return fmt.Sprintf("%s-%d-%s", prefix, os.Getpid(), hex.EncodeToString(b))
}

// New creates a throwaway namespace with lo up and returns its name. The
// test is skipped when not root. Cleanup kills (by PID) every process left
// inside the namespace and deletes it, also when the test fails.
func New(t testing.TB) string {
	t.Helper()
	RequireRoot(t)
	name := UniqueName("ferry-ut")
	if err := netnsutil.Add(name); err != nil {
		t.Fatalf("create test namespace: %v", err)
	}
	t.Cleanup(func() { Remove(t, name) })
	err := netnsutil.Do(name, func() error {
		lo, err := netlink.LinkByName("lo")
		if err != nil {
			return err
		}
		return netlink.LinkSetUp(lo)
	})
	if err != nil {
		t.Fatalf("set lo up in %s: %v", name, err)
	}
	return name
}

// Remove SIGKILLs the processes inside namespace name (found by its inode,
// never by process name), waits briefly for them to go, and deletes it.
func Remove(t testing.TB, name string) {
	t.Helper()
	if !netnsutil.Exists(name) {
		return
	}
	if pids, err := netnsutil.PIDs(name); err == nil {
		for _, pid := range pids {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
		deadline := time.Now().Add(3 * time.Second)
		for time.Now().Before(deadline) {
			if left, _ := netnsutil.PIDs(name); len(left) == 0 {
				break
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	if err := netnsutil.Delete(name); err != nil {
		t.Errorf("cleanup: %v", err)
	}
}
