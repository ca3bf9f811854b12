package e2e

// Helpers for the migration engine's fault tests (engine_test.go):
// restarting a cluster daemon with failpoints armed, waiting until a
// failpoint fired, and the end-state checks every fault test shares (the
// VM runs exactly once, on the host its record names, with the same boot;
// the client's TCP stream is unbroken).

import (
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ferryvm/ferry/internal/devcluster"
)

// baseArgv strips an `env K=V...` prefix a previous restart put in front
// of a daemon's command line.
func baseArgv(argv []string) []string {
	if cmd := devcluster.AfterEnv(argv); cmd != nil {
		return cmd
	}
	return argv
}

// killProcess SIGKILLs a recorded cluster daemon and waits until it is gone.
func (c *cluster) killProcess(p devcluster.Process, what string) {
	c.t.Helper()
	if err := syscall.Kill(p.PID, syscall.SIGKILL); err != nil {
		c.t.Fatalf("kill %s (pid %d): %v", what, p.PID, err)
	}
	waitGone(c.t, p.PID, 10*time.Second)
	c.t.Logf("killed %s (pid %d)", what, p.PID)
}

// startProcessEnv starts a daemon again with its recorded command line
// (without any earlier env prefix) and the environment entries env, then
// waits until every host is ready again.
func (c *cluster) startProcessEnv(p devcluster.Process, label string, env ...string) {
	c.t.Helper()
	argv := baseArgv(p.Argv)
	if len(env) > 0 {
		argv = append(append([]string{"env"}, env...), argv...)
	}
	start := time.Now()
	if _, err := c.c.StartProcess(p.Netns, p.Log, argv); err != nil {
		c.t.Fatal(err)
	}
	if err := c.c.WaitHostsReady(ctxT(c.t, time.Minute), 30*time.Second); err != nil {
		c.t.Fatal(err)
	}
	c.t.Logf("restarted %s (env %v); hosts ready after %s", label, env, time.Since(start).Round(time.Millisecond))
}

// armFailpoints restarts a daemon with FERRY_FAILPOINTS=fps and a
// failpoint log in the cluster directory, whose path it returns.
func (c *cluster) armFailpoints(p devcluster.Process, label, fps string) string {
	c.t.Helper()
	log := filepath.Join(c.dir, "failpoints-"+label+".log")
	c.killProcess(p, label)
	c.startProcessEnv(p, label, "FERRY_FAILPOINTS="+fps, "FERRY_FAILPOINTS_LOG="+log)
	return log
}

// waitFailpoint waits until the failpoint log names point.
func waitFailpoint(t *testing.T, log, point string, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if b, err := os.ReadFile(log); err == nil && strings.Contains(string(b), point) {
			t.Logf("failpoint %s fired", point)
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("failpoint %s did not fire within %s (log %s)", point, timeout, log)
}

// hostIndex is the observer's index of host (h1 = 0, h2 = 1).
func hostIndex(host string) int {
	if host == "h2" {
		return 1
	}
	return 0
}

// other is the other host of the pair.
func other(host string) string {
	if host == "h2" {
		return "h1"
	}
	return "h2"
}

// checkRunsOnceOn checks the end of a fault test: the VM record names host,
// is running and unlocked; the observer sees its QEMU running there and no
// QEMU on the other host; the guest did not reboot; the other host holds
// nothing of the VM.
func (c *cluster) checkRunsOnceOn(name, ip, boot, host string, obs *observer) {
	c.t.Helper()
	c.checkOnHost(name, host)
	c.waitNoLeftovers(other(host), name, 30*time.Second)
	s, ok := obs.sampleAfter(time.Now(), 5*time.Second)
	i := hostIndex(host)
	if !ok || !s.running[i] || s.status[1-i] != "" {
		c.t.Errorf("QEMUs at the end: %v (sampled %v); want running on %s only", s, ok, host)
	}
	if got := c.bootID(ip, 30*time.Second); got != boot {
		c.t.Errorf("boot_id = %s, want %s (the guest rebooted)", got, boot)
	}
}

// checkStreamUnbroken waits for the client's counter stream to flow again,
// stops it and checks the connection survived with no counter lost or
// repeated; it logs and returns the longest gap.
func (c *cluster) checkStreamUnbroken(name string, w *streamWatch) time.Duration {
	c.t.Helper()
	if !w.flowing(10 * time.Second) {
		c.t.Errorf("the client stream did not flow within 10s of the end; guest console: %s", c.guestCrash(name))
	}
	w.stop()
	w.mu.Lock()
	defer w.mu.Unlock()
	c.t.Logf("stream: %d lines, last counter %d, longest gap %s before line %d; gaps > 100 ms: %v",
		w.lines, w.last, w.maxGap.Round(time.Millisecond), w.maxGapLine, first(w.bigGaps, 10))
	if w.readErr != nil {
		c.t.Errorf("the client's TCP connection broke: %v", w.readErr)
	}
	if len(w.anomalies) > 0 {
		c.t.Errorf("the stream lost or repeated counters: %v", first(w.anomalies, 10))
	}
	return w.maxGap
}
