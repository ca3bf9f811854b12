package e2e

import (
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	ferryv1 "github.com/ferryvm/ferry/gen/ferry/v1"
	"github.com/ferryvm/ferry/guest/guestapi"
	"github.com/ferryvm/ferry/internal/agent"
	"github.com/ferryvm/ferry/internal/netnsutil"
)

// diskWriterKiBps is the guest disk writer's rate in the storage tests.
const diskWriterKiBps = 512

// writeDiskSpec writes a test-guest spec with one local disk (disk is
// the YAML of its fields, e.g. "size: 1GiB") and the disk writer on.
func (c *cluster) writeDiskSpec(name, ip, disk string) string {
	c.t.Helper()
	path := c.writeSpec(name, ip, "disks:\n  - name: data\n    "+disk+"\n")
	b, err := os.ReadFile(path)
	if err != nil {
		c.t.Fatal(err)
	}
	old := "ferry.ip=" + ip + "/15\""
	b = []byte(strings.Replace(string(b), old, fmt.Sprintf("ferry.ip=%s/15 ferry.disk=%d\"", ip, diskWriterKiBps), 1))
	if err := os.WriteFile(path, b, 0o644); err != nil {
		c.t.Fatal(err)
	}
	return path
}

// bootDiskGuest creates the VM on h1 and waits until its disk writer runs.
func (c *cluster) bootDiskGuest(name, ip, disk string) string {
	c.t.Helper()
	c.mustFerry("vm", "create", "--host", "h1", "-f", c.writeDiskSpec(name, ip, disk))
	c.checkOnHost(name, "h1")
	deadline := time.Now().Add(60 * time.Second)
	for {
		st, err := c.guestStatus(ip, time.Until(deadline))
		if err != nil {
			c.t.Fatal(err)
		}
		if st["disk_state"] == "running" && st["last_seq"].(float64) > 0 {
			c.t.Logf("guest %s: disk writer running on %v (%v records), last_seq %v", name, st["disk_device"], st["disk_records"], st["last_seq"])
			return st["boot_id"].(string)
		}
		if st["disk_state"] == "error" || time.Now().After(deadline) {
			c.t.Fatalf("guest %s disk writer not running: %v", name, st)
		}
		time.Sleep(300 * time.Millisecond)
	}
}

// verifyDisk asks the guest to read every disk record back and fails the
// test unless all up to last_seq are intact.
func (c *cluster) verifyDisk(ip, when string) guestapi.Verify {
	c.t.Helper()
	client := netnsutil.HTTPClient(c.c.Client)
	client.Timeout = 60 * time.Second
	var v guestapi.Verify
	var lastErr error
	for range 10 {
		resp, err := client.Get("http://" + ip + ":8080" + guestapi.VerifyPath)
		if err == nil {
			if resp.StatusCode == http.StatusOK {
				err = json.NewDecoder(resp.Body).Decode(&v)
			} else {
				err = fmt.Errorf("status %s", resp.Status)
			}
			resp.Body.Close()
			if err == nil {
				break
			}
		}
		lastErr = err
		time.Sleep(500 * time.Millisecond)
	}
	if v.LastSeq == 0 {
		c.t.Fatalf("%s: /verify: %+v (err %v)", when, v, lastErr)
	}
	c.t.Logf("%s: /verify ok=%v records %d..%d checked %d direct_io=%v in %.2fs", when, v.OK, v.FirstSeq, v.LastSeq, v.Checked, v.DirectIO, v.Seconds)
	if !v.OK || v.Checked != v.LastSeq-v.FirstSeq+1 || !v.DirectIO {
		c.t.Errorf("%s: disk records not intact: %+v", when, v)
	}
	return v
}

// imageFiles lists the image files under the VM's directory on host.
func (c *cluster) imageFiles(host, vm string) []string {
	m, _ := filepath.Glob(filepath.Join(c.vmDir(host, vm), "disks", "*"))
	return m
}

// checkDiskReport checks the report's disk figures add up for a disk of
// virtual size virt with allocated bytes alloc at the start.
func checkDiskReport(t *testing.T, m *ferryv1.Migration, virt int64) {
	t.Helper()
	if len(m.Disks) != 1 {
		t.Fatalf("report disks = %v, want one", m.Disks)
	}
	d := m.Disks[0]
	t.Logf("report disk %s: %s virtual %d allocated %d transferred %d, ready after %d ms, completed after %d ms; totals %d/%d; events %v",
		d.Name, d.State, d.VirtualSizeBytes, d.AllocatedBytes, d.BytesTransferred, d.MirrorMs, d.CompleteMs, m.DiskBytesTransferred, m.DiskBytesTotal, states(m))
	switch {
	case d.State != "completed":
		t.Errorf("disk %s mirror state %q, want completed", d.Name, d.State)
	case d.VirtualSizeBytes != virt:
		t.Errorf("disk virtual size %d, want %d", d.VirtualSizeBytes, virt)
	case m.DiskBytesTotal < d.AllocatedBytes || d.AllocatedBytes <= 0:
		t.Errorf("diskBytesTotal %d, allocated %d: want total ≥ allocated > 0", m.DiskBytesTotal, d.AllocatedBytes)
	case m.DiskBytesTransferred < d.AllocatedBytes:
		t.Errorf("diskBytesTransferred %d < the disk's allocated bytes %d", m.DiskBytesTransferred, d.AllocatedBytes)
	case m.DiskBytesTransferred > virt/4:
		t.Errorf("diskBytesTransferred %d not far below the virtual size %d of a mostly empty disk", m.DiskBytesTransferred, virt)
	case d.MirrorMs <= 0 || d.CompleteMs < d.MirrorMs:
		t.Errorf("mirror times: ready %d ms, completed %d ms", d.MirrorMs, d.CompleteMs)
	}
	if !strings.Contains(states(m), "mirroring") {
		t.Errorf("the migration never was in state mirroring: %s", states(m))
	}
}

func states(m *ferryv1.Migration) string {
	var s []string
	for _, e := range m.Events {
		s = append(s, e.State)
	}
	return strings.Join(s, "→")
}

// TestLocalDiskLiveMigration: a guest with a 1 GiB local qcow2 disk and the
// disk writer at 512 KiB/s is live-migrated h1→h2 and back while the
// client stream runs: every record up to last_seq is intact after each
// move, the stream never breaks, the boot is the same, the source's disk
// is gone only after the destination took over, and the report's disk
// figures add up.
func TestLocalDiskLiveMigration(t *testing.T) {
	c := upCluster(t, 2)
	const name, ip = "ldisk", "198.19.0.81"
	boot := c.bootDiskGuest(name, ip, "size: 1GiB")
	time.Sleep(2 * time.Second) // some records on the disk
	c.verifyDisk(ip, "before")
	stream := c.watchStream(ip)
	obs := c.startObserver(name)
	for i, hop := range []struct{ from, to string }{{"h1", "h2"}, {"h2", "h1"}} {
		before := c.imageFiles(hop.from, name)
		if len(before) != 1 {
			t.Fatalf("images of %s on %s before migrating: %v, want one", name, hop.from, before)
		}
		m, wall := c.mustMigrateWait(name, hop.to)
		logReport(t, fmt.Sprintf("local-disk migration %d %s→%s", i+1, hop.from, hop.to), m, wall)
		if m.Status != "completed" {
			t.Fatalf("migration %s→%s %s: %s", hop.from, hop.to, m.Status, m.Error)
		}
		c.checkOnHost(name, hop.to)
		checkDiskReport(t, m, 1<<30)
		fmt.Printf("LOCAL-DISK migration %d %s→%s: wall %s, downtime %d ms, disk %d of %d bytes allocated sent (virtual %d), mirror ready %d ms\n",
			i+1, hop.from, hop.to, wall.Round(time.Millisecond), m.DowntimeMs, m.DiskBytesTransferred, m.Disks[0].AllocatedBytes, m.Disks[0].VirtualSizeBytes, m.Disks[0].MirrorMs)
		c.waitNoLeftovers(hop.from, name, 15*time.Second)
		if got := c.imageFiles(hop.to, name); len(got) != 1 {
			t.Errorf("images of %s on %s after the migration: %v, want one", name, hop.to, got)
		}
		// The unprivileged QEMU user cannot reach the images: QEMU opened
		// them as root before it switched user.
		if st, err := os.Stat(filepath.Join(c.vmDir(hop.to, name), "disks")); err != nil {
			t.Errorf("disks dir of %s on %s: %v", name, hop.to, err)
		} else if m := st.Mode().Perm(); m != 0o700 {
			t.Errorf("disks dir of %s on %s: mode %o, want 700", name, hop.to, m)
		}
		c.verifyDisk(ip, fmt.Sprintf("after migration %d", i+1))
	}
	if !stream.flowing(2 * time.Second) {
		t.Errorf("client stream not flowing after the migrations")
	}
	stream.stop()
	stream.mu.Lock()
	t.Logf("stream: %d lines, longest gap %s", stream.lines, stream.maxGap.Round(time.Millisecond))
	if stream.readErr != nil || len(stream.anomalies) > 0 {
		t.Errorf("stream broke: %v %v", stream.readErr, first(stream.anomalies, 10))
	}
	stream.mu.Unlock()
	checkNeverBoth(t, obs)
	if got := c.bootID(ip, 10*time.Second); got != boot {
		t.Errorf("boot_id changed: %s -> %s", boot, got)
	}
}

// TestLocalDiskMirrorDestinationAgentKilled: the destination agent is
// killed while the disk is being mirrored (a 96 MiB-allocated image copied
// from an allowed source, mirrored at 8 MiB/s): the migration fails, the
// VM keeps running on h1 with every disk record intact and the same boot,
// and nothing of it (QEMU, tap, disk copy) is left on h2 once its agent is
// back and its orphan reaper removed the arrival.
func TestLocalDiskMirrorDestinationAgentKilled(t *testing.T) {
	images := t.TempDir()
	src := filepath.Join(images, "base.qcow2")
	if out, err := exec.Command("qemu-img", "create", "-q", "-f", "qcow2", src, "1G").CombinedOutput(); err != nil {
		t.Fatalf("qemu-img create: %v\n%s", err, out)
	}
	// Data beyond the writer's records (which start at offset 0).
	if out, err := exec.Command("qemu-io", "-f", "qcow2", "-c", "write -P 0xab 512M 96M", src).CombinedOutput(); err != nil {
		t.Fatalf("qemu-io write: %v\n%s", err, out)
	}
	// The engine gives up on the silent agent and ends the migration; the
	// arrival it could not abort is the restarted agent's to remove (its
	// orphan reaper, after the grace period, shortened here).
	const grace = 6 * time.Second
	t.Setenv(agent.OrphanGraceEnv, grace.String())
	c := upClusterEnv(t, 2, []string{agent.ImageDirsEnv + "=" + images})
	const name, ip = "ldkill", "198.19.0.82"
	boot := c.bootDiskGuest(name, ip, "source: "+src)
	obs := c.startObserver(name)
	t.Cleanup(func() { checkNeverBoth(t, obs) })
	m := c.startMigration(name, "h2", "--bandwidth", "8")
	started := time.Now()
	cur := c.waitMigration(m.Id, 30*time.Second, "mirroring for 3s", func(m *ferryv1.Migration) bool {
		return m.State == "mirroring" && time.Since(started) > 3*time.Second || m.Status != "running"
	})
	if cur.State != "mirroring" || len(cur.Disks) != 1 || cur.Disks[0].State != "mirroring" {
		t.Fatalf("migration %s %s before the kill (disks %v): %s", cur.State, cur.Status, cur.Disks, cur.Error)
	}
	t.Logf("mirroring (not ready) %s after the start: about %d of %d disk bytes sent", time.Since(started).Round(time.Millisecond), cur.DiskBytesTransferred, cur.DiskBytesTotal)
	ag := c.process("agent", "h2")
	c.killProcess(ag, "h2 agent")
	m, _ = c.waitFinal(m.Id, 60*time.Second)
	checkFailed(t, m, "failed")
	t.Logf("events: %s", states(m))
	c.checkOnHost(name, "h1")
	c.verifyDisk(ip, "after the failed migration")
	c.startProcessEnv(ag, "h2 agent", agent.ImageDirsEnv+"="+images, agent.OrphanGraceEnv+"="+grace.String())
	c.waitNoLeftovers("h2", name, grace+20*time.Second)
	c.checkRolledBack(name, ip, boot, obs)
	if got := c.imageFiles("h1", name); len(got) != 1 {
		t.Errorf("the source's image after the rollback: %v, want it kept", got)
	}
	c.verifyDisk(ip, "after h2's agent is back")
}

// TestLocalDiskMirrorLinkCut: h2's link is cut while the disk is being
// mirrored (write-blocking mode: the guest's writes wait on the
// destination once the mirror is ready, and the cancelled job's requests
// hang on the dead NBD connection until it is yanked). The migration fails
// within the stall timeout and the cleanup's bounds, the VM keeps running
// on h1 with its disk writer going and every record intact, and once the
// link is back nothing of it is left on h2.
func TestLocalDiskMirrorLinkCut(t *testing.T) {
	images := t.TempDir()
	src := filepath.Join(images, "base.qcow2")
	if out, err := exec.Command("qemu-img", "create", "-q", "-f", "qcow2", src, "1G").CombinedOutput(); err != nil {
		t.Fatalf("qemu-img create: %v\n%s", err, out)
	}
	if out, err := exec.Command("qemu-io", "-f", "qcow2", "-c", "write -P 0xcd 512M 96M", src).CombinedOutput(); err != nil {
		t.Fatalf("qemu-io write: %v\n%s", err, out)
	}
	c := upClusterEnv(t, 2, []string{agent.ImageDirsEnv + "=" + images})
	const name, ip = "ldcut", "198.19.0.83"
	boot := c.bootDiskGuest(name, ip, "source: "+src)
	obs := c.startObserver(name)
	t.Cleanup(func() { checkNeverBoth(t, obs) })
	m := c.startMigration(name, "h2", "--bandwidth", "8", "--stall-timeout", "3s", "--max-attempts", "1")
	started := time.Now()
	cur := c.waitMigration(m.Id, 30*time.Second, "mirroring for 3s", func(m *ferryv1.Migration) bool {
		return m.State == "mirroring" && time.Since(started) > 3*time.Second || m.Status != "running"
	})
	if cur.State != "mirroring" {
		t.Fatalf("migration %s %s before the cut: %s", cur.State, cur.Status, cur.Error)
	}
	ns := c.hostNS("h2")
	t.Cleanup(func() { _ = setLink(ns, true) })
	if err := setLink(ns, false); err != nil {
		t.Fatal(err)
	}
	cut := time.Now()
	t.Logf("h2's link cut %s after the start, %d of %d disk bytes sent", cut.Sub(started).Round(time.Millisecond), cur.DiskBytesTransferred, cur.DiskBytesTotal)
	m, took := c.waitFinal(m.Id, 90*time.Second)
	checkFailed(t, m, "failed")
	t.Logf("failed %s after the cut: %s; events %s", took.Round(time.Millisecond), m.Error, states(m))
	if took > 30*time.Second {
		t.Errorf("the migration took %s to fail after the link cut with --stall-timeout 3s, want < 30s", took)
	}
	if log, err := os.ReadFile(filepath.Join(c.dir, "logs", "h1-agent.log")); err == nil {
		for _, line := range strings.Split(string(log), "\n") {
			if strings.Contains(line, "yank") || strings.Contains(line, "not cleanly stopped") {
				t.Logf("h1 agent: %s", line)
			}
		}
	}
	c.checkOnHost(name, "h1")
	// The guest's writes go on: a mirror job left hanging on the dead
	// target would hold them.
	st0, err := c.guestStatus(ip, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(2 * time.Second)
	st1, err := c.guestStatus(ip, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if st1["last_seq"].(float64) <= st0["last_seq"].(float64) {
		t.Errorf("the guest's disk writer is stuck on h1 after the rollback: last_seq %v then %v", st0["last_seq"], st1["last_seq"])
	}
	c.verifyDisk(ip, "after the failed migration")
	if err := setLink(ns, true); err != nil {
		t.Fatal(err)
	}
	c.waitNoLeftovers("h2", name, 20*time.Second)
	c.checkRolledBack(name, ip, boot, obs)
	if got := c.imageFiles("h1", name); len(got) != 1 {
		t.Errorf("the source's image after the rollback: %v, want it kept", got)
	}
}
