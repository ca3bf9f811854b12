package e2e

import (
	"fmt"
	"os"
	"strings"
	"testing"
	"time"
)

// procStatus returns the fields of /proc/PID/status.
func procStatus(t *testing.T, pid int) map[string]string {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatalf("status of pid %d: %v", pid, err)
	}
	m := map[string]string{}
	for _, line := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(line, ":"); ok {
			m[k] = strings.Join(strings.Fields(v), " ")
		}
	}
	return m
}

// checkUnprivilegedQEMU checks that host's QEMUs run as uid and gid (real,
// effective, saved and filesystem ids) under a seccomp filter.
func (c *cluster) checkUnprivilegedQEMU(host string, uid int) {
	c.t.Helper()
	pids := qemuPIDs(c.t, c.hostNS(host))
	if len(pids) == 0 {
		c.t.Fatalf("no QEMU on %s", host)
	}
	for _, pid := range pids {
		st := procStatus(c.t, pid)
		want := strings.Repeat(fmt.Sprint(uid)+" ", 4)
		if st["Uid"] != strings.TrimSpace(want) || st["Seccomp"] != "2" {
			c.t.Errorf("QEMU pid %d on %s: Uid %q Seccomp %q, want %q and 2 (filter)", pid, host, st["Uid"], st["Seccomp"], strings.TrimSpace(want))
		} else {
			c.t.Logf("QEMU pid %d on %s: Uid %s Gid %s Seccomp %s", pid, host, st["Uid"], st["Gid"], st["Seccomp"])
		}
	}
}

// TestQEMURunsUnprivileged starts the agents with --qemu-user nobody (via
// FERRY_QEMU_USER): the guest's QEMU runs as nobody under seccomp, the
// guest boots and answers, and a live migration (on TLS, whose
// credentials the unprivileged destination and source read) moves it to
// a destination QEMU that is unprivileged too, the guest not rebooted.
func TestQEMURunsUnprivileged(t *testing.T) {
	const nobody = 65534
	c := upClusterEnv(t, 2, []string{"FERRY_QEMU_USER=nobody"})
	// QEMU, as nobody, reads its stream credentials in its VM directory
	// under the cluster's (a 0700 temporary directory): let it through.
	if err := os.Chmod(c.dir, 0o711); err != nil {
		t.Fatal(err)
	}
	const name, ip = "lowpriv", "198.19.0.63"
	boot := c.bootGuest(name, ip, "16:4")
	c.checkUnprivilegedQEMU("h1", nobody)
	m, wall := c.mustMigrateWait(name, "h2")
	logReport(t, "unprivileged", m, wall)
	if m.Status != "completed" || m.Transport != "tls" {
		t.Errorf("migration %s over %q, want completed over tls", m.Status, m.Transport)
	}
	c.checkOnHost(name, "h2")
	c.checkUnprivilegedQEMU("h2", nobody)
	if id := c.bootID(ip, 10*time.Second); id != boot {
		t.Errorf("boot id %s after the migration, was %s: the guest rebooted", id, boot)
	}
	c.noCredentialsLeft(name)
}
