package e2e

import (
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	ferryv1 "github.com/ferryvm/ferry/gen/ferry/v1"
	"github.com/ferryvm/ferry/guest/guestapi"
	"github.com/ferryvm/ferry/internal/netnsutil"
)

// TestGuestAliveAfterMigration: a live migration checks that the guest
// shows a sign of life on the destination: the test guest answers
// guest-ping on its guest agent channel (three legs, h1→h2→h1→h2); a VM
// without the channel is judged by vCPU and NIC progress.
func TestGuestAliveAfterMigration(t *testing.T) {
	if !guestHasAgent {
		t.Fatalf("the test guest in %s has no guest agent handler (virtio_console): rebuild it with make guest", guestDir)
	}
	c := upCluster(t, 2)
	const name, ip = "alive", "198.19.0.61"
	boot := c.bootGuest(name, ip, "")
	var figures []int64
	for i, to := range []string{"h2", "h1", "h2"} {
		m, wall := c.mustMigrateWait(name, to)
		logReport(t, fmt.Sprintf("leg %d", i+1), m, wall)
		if m.Status != "completed" || m.GuestAliveAfterMs <= 0 || m.GuestAliveMethod != "guest-ping" || len(m.Warnings) != 0 {
			t.Fatalf("leg %d to %s: status %s guestAliveAfterMs %d method %q warnings %q; want completed, > 0 by guest-ping, no warning",
				i+1, to, m.Status, m.GuestAliveAfterMs, m.GuestAliveMethod, m.Warnings)
		}
		figures = append(figures, m.GuestAliveAfterMs)
	}
	slices.Sort(figures)
	fmt.Printf("GUEST-ALIVE guest-ping guestAliveAfterMs median %d ms (sorted %v)\n", figures[len(figures)/2], figures)
	if got := c.bootID(ip, 10*time.Second); got != boot {
		t.Errorf("boot_id changed: %s -> %s", boot, got)
	}

	// Without the channel: the fallback (vCPU time, tap counters).
	const fb, fbIP = "alive-fb", "198.19.0.62"
	c.mustFerry("vm", "create", "--host", "h1", "-f", c.writeSpec(fb, fbIP, "guestAgent: false\n"))
	c.waitVM(fb, 60*time.Second, "running", func(v *ferryv1.VM) bool { return v.State == "running" })
	if _, err := c.guestStatus(fbIP, 60*time.Second); err != nil {
		t.Fatal(err)
	}
	m, wall := c.mustMigrateWait(fb, "h2")
	logReport(t, "fallback", m, wall)
	if m.Status != "completed" || m.GuestAliveAfterMs <= 0 || (m.GuestAliveMethod != "vcpu" && m.GuestAliveMethod != "nic-tx") || len(m.Warnings) != 0 {
		t.Fatalf("fallback: status %s guestAliveAfterMs %d method %q warnings %q; want completed, > 0 by vcpu or nic-tx, no warning",
			m.Status, m.GuestAliveAfterMs, m.GuestAliveMethod, m.Warnings)
	}
	fmt.Printf("GUEST-ALIVE fallback guestAliveAfterMs %d ms (%s)\n", m.GuestAliveAfterMs, m.GuestAliveMethod)
}

// TestGuestUnresponsiveAfterSwitchover: the guest is told to stop its
// kernel at the next command on its guest agent channel. Nothing uses the
// channel before the switchover, so the first command is the destination's
// check right after it: the kernel stops there (its stop line is in the
// destination's serial log, not the source's), the guest never answers, and
// the migration completes with a "guest unresponsive" warning, the VM left
// on the destination (it ran there: no rollback).
func TestGuestUnresponsiveAfterSwitchover(t *testing.T) {
	if !guestHasAgent {
		t.Fatalf("the test guest in %s has no guest agent handler (virtio_console): rebuild it with make guest", guestDir)
	}
	c := upCluster(t, 2)
	const name, ip = "hang", "198.19.0.63"
	c.bootGuest(name, ip, "")

	client := netnsutil.HTTPClient(c.c.Client)
	client.Timeout = 5 * time.Second
	resp, err := client.Post("http://"+ip+":8080"+guestapi.StopKernelPath+"?on=guest-agent", "", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusAccepted {
		t.Fatalf("POST %s: %s, want 202", guestapi.StopKernelPath, resp.Status)
	}
	srcLog := filepath.Join(c.vmDir("h1", name), "serial.log")
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(readFile(srcLog), "stop-kernel armed") {
		if time.Now().After(deadline) {
			t.Fatalf("the source's serial log never showed the stop being armed:\n%s", tail(readFile(srcLog), 1500))
		}
		time.Sleep(100 * time.Millisecond)
	}
	if s := readFile(srcLog); strings.Contains(s, guestapi.StopKernelLine) {
		t.Fatalf("the kernel stopped on the source, before the migration:\n%s", tail(s, 1500))
	}

	m, wall := c.mustMigrateWait(name, "h2", "--guest-alive-timeout", "3s")
	logReport(t, "stopped kernel", m, wall)
	if m.Status != "completed" {
		t.Fatalf("status %s, want completed (the guest ran on the destination)", m.Status)
	}
	if m.GuestAliveAfterMs != -1 || len(m.Warnings) != 1 || !strings.HasPrefix(m.Warnings[0], "guest unresponsive: ") {
		t.Fatalf("guestAliveAfterMs %d warnings %q; want -1 and one \"guest unresponsive\" warning", m.GuestAliveAfterMs, m.Warnings)
	}
	var event bool
	for _, e := range m.Events {
		event = event || e.State == "warning" && strings.HasPrefix(e.Message, "guest unresponsive")
	}
	if !event {
		t.Errorf("no guest unresponsive event in %v", m.Events)
	}
	t.Logf("warning: %s", m.Warnings[0])
	vm := c.checkOnHost(name, "h2")
	if vm.State != "running" {
		t.Errorf("VM record state %s, want running on h2", vm.State)
	}
	// The stop happened on the destination: after the switchover.
	dstLog := readFile(filepath.Join(c.vmDir("h2", name), "serial.log"))
	i := strings.Index(dstLog, guestapi.StopKernelLine)
	if i < 0 || !strings.Contains(dstLog[i:], "Kernel panic") {
		t.Fatalf("the destination's serial log has no stop line followed by the panic:\n%s", tail(dstLog, 2000))
	}
	t.Logf("destination console: %s", strings.SplitN(dstLog[i:], "\n", 2)[0])
	if _, err := c.guestStatus(ip, 2*time.Second); err == nil {
		t.Errorf("the guest still answers /status after its kernel stopped")
	}
}

func readFile(p string) string {
	b, _ := os.ReadFile(p)
	return string(b)
}

func tail(s string, n int) string {
	if len(s) > n {
		return "..." + s[len(s)-n:]
	}
	return s
}
