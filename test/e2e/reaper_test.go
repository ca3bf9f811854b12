package e2e

import (
	"context"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	ferryv1 "github.com/ferryvm/ferry/gen/ferry/v1"
	"github.com/ferryvm/ferry/internal/agent"
	"github.com/ferryvm/ferry/internal/store"
)

// etcdEndpoint reads the embedded etcd's client URL from the server log.
func etcdEndpoint(t *testing.T, c *cluster) string {
	t.Helper()
	re := regexp.MustCompile(`embedded etcd ready.*?endpoint"?[=:]"?(http://[0-9.]+:[0-9]+)`)
	deadline := time.Now().Add(10 * time.Second)
	for {
		b, _ := os.ReadFile(filepath.Join(c.dir, "logs", "server.log"))
		if m := re.FindSubmatch(b); m != nil {
			return string(m[1])
		}
		if time.Now().After(deadline) {
			t.Fatalf("no embedded etcd endpoint in the server log:\n%s", b)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TestOrphanQEMUIsReaped removes a running VM's record from etcd behind
// the server's back (what a create whose reply was lost and whose record
// was rolled back leaves): the agent stops and removes that QEMU after the
// grace period and logs it; a VM with a record is left alone.
func TestOrphanQEMUIsReaped(t *testing.T) {
	const grace = 6 * time.Second
	t.Setenv(agent.OrphanGraceEnv, grace.String())
	c := upCluster(t, 1)
	ns := c.c.Hosts[0].Netns
	running := func(v *ferryv1.VM) bool { return v.State == "running" }
	c.mustFerry("vm", "create", "-f", c.writeSpec("orphan", "198.19.0.31", ""))
	c.mustFerry("vm", "create", "-f", c.writeSpec("kept", "198.19.0.32", ""))
	orphan := c.waitVM("orphan", 60*time.Second, "running", running)
	kept := c.waitVM("kept", 60*time.Second, "running", running)
	if got := taps(t, ns); len(got) != 2 {
		t.Fatalf("taps in %s = %v, want two", ns, got)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	st, err := store.NewEtcd(ctx, []string{etcdEndpoint(t, c)})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if err := st.DeleteVM(ctx, "orphan"); err != nil {
		t.Fatal(err)
	}
	removed := time.Now()
	waitGone(t, int(orphan.Pid), grace+30*time.Second)
	took := time.Since(removed)
	t.Logf("orphan QEMU pid %d removed %s after its record", orphan.Pid, took.Round(time.Millisecond))
	if took < grace {
		t.Fatalf("orphan reaped %s after its record went, before the %s grace", took, grace)
	}
	// The QEMU exits first; its taps and directory go right after, and the
	// agent logs "orphan QEMU removed" once they are gone.
	var logs []byte
	var line string
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		logs, _ = os.ReadFile(filepath.Join(c.dir, "logs", "h1-agent.log"))
		done := false
		for _, l := range strings.Split(string(logs), "\n") {
			if strings.Contains(l, "removing orphan QEMU") && strings.Contains(l, "orphan") {
				line = l
			}
			done = done || strings.Contains(l, "orphan QEMU removed")
		}
		if done || time.Now().After(deadline) {
			break
		}
	}
	if line == "" {
		t.Fatalf("no log line for the reaped QEMU in the agent log:\n%s", logs)
	}
	t.Logf("agent log: %s", line)
	if _, err := os.Stat(filepath.Join(c.dir, "h1", "vms", "orphan")); !os.IsNotExist(err) {
		t.Fatalf("the orphan's directory is left: %v", err)
	}
	if got := taps(t, ns); len(got) != 1 {
		t.Fatalf("taps in %s after the reap = %v, want only the kept VM's", ns, got)
	}
	// The VM with a record runs on, well past the grace.
	time.Sleep(2 * time.Second)
	if !alive(int(kept.Pid)) {
		t.Fatalf("the kept VM's QEMU pid %d was killed", kept.Pid)
	}
	if v := c.waitVM("kept", 10*time.Second, "running", running); v.Pid != kept.Pid {
		t.Fatalf("kept VM pid %d, want %d", v.Pid, kept.Pid)
	}
}
