package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	ferryv1 "github.com/ferryvm/ferry/gen/ferry/v1"
	"github.com/ferryvm/ferry/guest/guestapi"
	"github.com/ferryvm/ferry/internal/agent"
	"github.com/ferryvm/ferry/internal/failpoint"
)

// diskWriterState is what the guest's disk writer reported: its boot and
// the last record it had made durable.
type diskWriterState struct {
	boot    string
	lastSeq uint64
}

func (c *cluster) diskWriter(ip string) diskWriterState {
	c.t.Helper()
	st, err := c.guestStatus(ip, 10*time.Second)
	if err != nil {
		c.t.Fatal(err)
	}
	return diskWriterState{boot: st["boot_id"].(string), lastSeq: uint64(st["last_seq"].(float64))}
}

// imageRecordCheck reads the VM's local disk image on host (from outside
// the guest: qemu-img convert -U to a sparse raw file) and checks every
// record slot 1..w.lastSeq: each must hold an intact record of its
// sequence number, written by w's boot — or, below the slots a later boot
// of the guest has rewritten since, by that boot. It returns how many of
// w's records it found and the highest of their sequence numbers.
func (c *cluster) imageRecordCheck(host, vm string, w diskWriterState) (found int, maxSeq uint64) {
	c.t.Helper()
	imgs := c.imageFiles(host, vm)
	if len(imgs) != 1 {
		c.t.Fatalf("images of %s on %s: %v, want one", vm, host, imgs)
	}
	raw := filepath.Join(c.t.TempDir(), "disk.raw")
	if out, err := exec.Command("qemu-img", "convert", "-U", "-O", "raw", imgs[0], raw).CombinedOutput(); err != nil {
		c.t.Fatalf("qemu-img convert %s: %v\n%s", imgs[0], err, out)
	}
	f, err := os.Open(raw)
	if err != nil {
		c.t.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, guestapi.RecordSize)
	var later []string
	for seq := uint64(1); seq <= w.lastSeq; seq++ {
		if _, err := f.ReadAt(buf, int64(seq-1)*guestapi.RecordSize); err != nil {
			c.t.Fatalf("read record slot %d: %v", seq, err)
		}
		r, err := guestapi.DecodeRecord(buf)
		switch {
		case err != nil:
			c.t.Errorf("%s on %s: record %d of %d: %v", vm, host, seq, w.lastSeq, err)
			return found, maxSeq
		case r.BootIDHex() == w.boot && r.Seq == seq:
			found++
			maxSeq = seq
		case r.BootIDHex() != w.boot && r.Seq == seq && found == 0:
			if len(later) == 0 || later[len(later)-1] != r.BootIDHex() {
				later = append(later, r.BootIDHex())
			}
		default:
			c.t.Errorf("%s on %s: slot %d holds seq %d of boot %s (want seq %d of boot %s%s)", vm, host, seq, r.Seq, r.BootIDHex(), seq, w.boot,
				map[bool]string{true: " after its own records began", false: ""}[found > 0])
			return found, maxSeq
		}
	}
	c.t.Logf("%s's image on %s: records %d..%d of boot %s intact (%d below them rewritten by the later boot(s) %v)",
		vm, host, w.lastSeq-uint64(found)+1, maxSeq, w.boot[:8], w.lastSeq-uint64(found), later)
	return found, maxSeq
}

// checkColdDiskReport checks a cold copy's disk figures: the disk was
// copied and verified, the bytes sent are about its allocation (at least
// the records the guest wrote, at most its allocated bytes plus 4 MiB the guest may write until it is stopped),
// far below its virtual size.
func checkColdDiskReport(t *testing.T, m *ferryv1.Migration, virt int64, written int64) {
	t.Helper()
	if len(m.Disks) != 1 {
		t.Fatalf("report disks = %v, want one", m.Disks)
	}
	d := m.Disks[0]
	t.Logf("report disk %s: %s virtual %d allocated %d sent %d (total sent %d of %d allocated), copied in %d ms; events %s",
		d.Name, d.State, d.VirtualSizeBytes, d.AllocatedBytes, d.BytesTransferred, m.DiskBytesTransferred, m.DiskBytesTotal, d.CompleteMs, states(m))
	switch {
	case d.State != "completed":
		t.Errorf("disk %s copy state %q, want completed", d.Name, d.State)
	case d.VirtualSizeBytes != virt:
		t.Errorf("disk virtual size %d, want %d", d.VirtualSizeBytes, virt)
	case d.AllocatedBytes <= 0 || m.DiskBytesTotal <= 0:
		t.Errorf("allocated %d, diskBytesTotal %d: want > 0", d.AllocatedBytes, m.DiskBytesTotal)
	case m.DiskBytesTransferred < written:
		t.Errorf("diskBytesTransferred %d < the %d bytes of records the guest wrote", m.DiskBytesTransferred, written)
	case m.DiskBytesTransferred > d.AllocatedBytes+(4<<20):
		t.Errorf("diskBytesTransferred %d > the disk's allocated bytes %d + 4 MiB: not a sparse copy", m.DiskBytesTransferred, d.AllocatedBytes)
	case m.DiskBytesTransferred > virt/20:
		t.Errorf("diskBytesTransferred %d not far below the virtual size %d", m.DiskBytesTransferred, virt)
	case d.CompleteMs <= 0:
		t.Errorf("copy time %d ms", d.CompleteMs)
	}
	if !strings.Contains(states(m), "copying") {
		t.Errorf("the migration never was in state copying: %s", states(m))
	}
}

// checkColdPrediction checks a cold migration's report carries the
// planner's cold prediction (the disks' data over the link plus the fixed
// parts) and logs it against the actual figures.
func checkColdPrediction(t *testing.T, m *ferryv1.Migration) {
	t.Helper()
	p := m.GetPredicted()
	if p == nil || p.Strategy != "cold" || p.TotalMs <= 0 {
		t.Errorf("cold migration report: predicted %v, want the planner's cold prediction (plan reason %q)", p, m.GetPlan().GetReason())
		return
	}
	var alloc int64
	for _, d := range m.Disks {
		alloc += d.AllocatedBytes
	}
	if p.Bytes != alloc {
		t.Errorf("cold prediction bytes %d, want the disks' allocated %d", p.Bytes, alloc)
	}
	t.Logf("cold prediction: total %d ms vs actual %d ms (%+.0f%%), downtime %d ms vs %d ms; %s",
		p.TotalMs, m.TotalMs, 100*float64(p.TotalMs-m.TotalMs)/float64(max(1, m.TotalMs)), p.DowntimeMs, m.DowntimeMs, p.Reason)
}

// waitDiskWriter waits until the guest at ip runs its disk writer in a
// boot other than notBoot.
func (c *cluster) waitDiskWriter(ip, notBoot string, timeout time.Duration) diskWriterState {
	c.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		st, err := c.guestStatus(ip, time.Until(deadline))
		if err == nil && st["boot_id"] != notBoot && st["disk_state"] == "running" && st["last_seq"].(float64) > 0 {
			return diskWriterState{boot: st["boot_id"].(string), lastSeq: uint64(st["last_seq"].(float64))}
		}
		if time.Now().After(deadline) {
			c.t.Fatalf("guest %s: no disk writer of a new boot within %s: %v %v", ip, timeout, st, err)
		}
		time.Sleep(300 * time.Millisecond)
	}
}

// TestColdLocalDiskMigration: a guest with a 1 GiB local qcow2 disk whose
// writer has made records durable is cold-migrated h1→h2: the disk is
// copied with its allocated extents only and verified by checksum on h2;
// there every record the source had acknowledged before the shutdown is
// on the disk (read from outside the guest), the guest boots on it and
// its /verify is clean, and nothing of the VM is left on h1.
func TestColdLocalDiskMigration(t *testing.T) {
	c := upCluster(t, 2)
	const name, ip = "colddisk", "198.19.0.83"
	const virt = 1 << 30
	c.bootDiskGuest(name, ip, "size: 1GiB")
	time.Sleep(8 * time.Second) // about a thousand records
	c.verifyDisk(ip, "before")
	ack := c.diskWriter(ip)
	t.Logf("acknowledged before the migration: last_seq %d of boot %s", ack.lastSeq, ack.boot)
	m, wall := c.mustMigrateWait(name, "h2", "--strategy", "cold")
	logReport(t, "cold local-disk migration h1→h2", m, wall)
	if m.Status != "completed" {
		t.Fatalf("cold migration %s: %s", m.Status, m.Error)
	}
	c.checkOnHost(name, "h2")
	found, maxSeq := c.imageRecordCheck("h2", name, ack)
	if found == 0 || maxSeq < ack.lastSeq {
		t.Errorf("the copy on h2 holds records of the old boot up to %d, behind the %d acknowledged before the shutdown", maxSeq, ack.lastSeq)
	}
	checkColdDiskReport(t, m, virt, int64(ack.lastSeq)*guestapi.RecordSize)
	checkColdPrediction(t, m)
	c.waitNoLeftovers("h1", name, 15*time.Second)
	now := c.waitDiskWriter(ip, ack.boot, 90*time.Second)
	time.Sleep(time.Second)
	v := c.verifyDisk(ip, "after the cold migration")
	if v.LastSeq < now.lastSeq {
		t.Errorf("/verify last_seq %d behind the new boot's %d", v.LastSeq, now.lastSeq)
	}
	fmt.Printf("COLD-DISK migration h1→h2: wall %s, disk virtual %d, allocated %d, sent %d bytes (%.1f%% of allocated, %.3f%% of virtual), copy %d ms, old-boot records up to %d kept (acknowledged %d)\n",
		wall.Round(time.Millisecond), m.Disks[0].VirtualSizeBytes, m.Disks[0].AllocatedBytes, m.DiskBytesTransferred,
		100*float64(m.DiskBytesTransferred)/float64(max(1, m.Disks[0].AllocatedBytes)), 100*float64(m.DiskBytesTransferred)/float64(virt),
		m.Disks[0].CompleteMs, maxSeq, ack.lastSeq)
}

// coldFaultGuest boots a guest whose local disk is a copy of a 96 MiB-
// allocated image (so that its copy at 8 MiB/s takes about 12 s), with
// the disk writer on, and returns what the writer acknowledged.
func coldFaultGuest(t *testing.T, env []string, name, ip string) (*cluster, diskWriterState, string) {
	t.Helper()
	images := t.TempDir()
	src := filepath.Join(images, "base.qcow2")
	if out, err := exec.Command("qemu-img", "create", "-q", "-f", "qcow2", src, "1G").CombinedOutput(); err != nil {
		t.Fatalf("qemu-img create: %v\n%s", err, out)
	}
	if out, err := exec.Command("qemu-io", "-f", "qcow2", "-c", "write -P 0xab 512M 96M", src).CombinedOutput(); err != nil {
		t.Fatalf("qemu-io write: %v\n%s", err, out)
	}
	c := upClusterEnv(t, 2, append([]string{agent.ImageDirsEnv + "=" + images}, env...))
	c.bootDiskGuest(name, ip, "source: "+src)
	time.Sleep(6 * time.Second) // more records than the guest's next boot writes before the checks
	ack := c.diskWriter(ip)
	t.Logf("acknowledged before the migration: last_seq %d of boot %s", ack.lastSeq, ack.boot)
	return c, ack, images
}

// checkSourceAuthoritative: after a failed cold copy the VM is on h1 and
// boots there again on its own disk (every record of the old boot that
// the new one has not rewritten is intact), /verify is clean, and the
// image is still on h1.
func (c *cluster) checkSourceAuthoritative(name, ip string, ack diskWriterState) {
	c.t.Helper()
	c.checkOnHost(name, "h1")
	now := c.waitDiskWriter(ip, ack.boot, 90*time.Second)
	c.t.Logf("the guest booted again on h1 (boot %s, last_seq %d)", now.boot[:8], now.lastSeq)
	if found, maxSeq := c.imageRecordCheck("h1", name, ack); found == 0 || maxSeq != ack.lastSeq {
		c.t.Errorf("h1's image: old-boot records found %d, up to %d, want up to %d", found, maxSeq, ack.lastSeq)
	}
	c.verifyDisk(ip, "on h1 after the failed cold migration")
}

// TestColdDiskCopyDestinationAgentKilled: h2's agent is SIGKILLed while
// the disk is being copied: the migration fails, the VM boots again on h1
// on its untouched disk, and once h2's agent is back it has removed the
// unverified copy (nothing of the VM left on h2).
func TestColdDiskCopyDestinationAgentKilled(t *testing.T) {
	const name, ip = "coldkill", "198.19.0.84"
	c, ack, images := coldFaultGuest(t, nil, name, ip)
	m := c.startMigration(name, "h2", "--strategy", "cold", "--bandwidth", "8")
	var copying time.Time
	cur := c.waitMigration(m.Id, 60*time.Second, "copying for 3s", func(m *ferryv1.Migration) bool {
		if m.State == "copying" && copying.IsZero() {
			copying = time.Now()
		}
		return !copying.IsZero() && time.Since(copying) > 3*time.Second || m.Status != "running"
	})
	if cur.State != "copying" {
		t.Fatalf("migration %s %s before the kill: %s", cur.State, cur.Status, cur.Error)
	}
	t.Logf("copying for %s: %d of %d disk bytes sent", time.Since(copying).Round(time.Millisecond), cur.DiskBytesTransferred, cur.DiskBytesTotal)
	ag := c.process("agent", "h2")
	c.killProcess(ag, "h2 agent")
	m, took := c.waitFinal(m.Id, 90*time.Second)
	checkFailed(t, m, "failed")
	t.Logf("failed %s after the kill: %s; events %s", took.Round(time.Millisecond), m.Error, states(m))
	c.checkSourceAuthoritative(name, ip, ack)
	c.startProcessEnv(ag, "h2 agent", agent.ImageDirsEnv+"="+images)
	c.waitNoLeftovers("h2", name, 30*time.Second)
}

// TestColdDiskCopyCorrupted: the source agent flips a byte of the copy on
// its way (failpoint agent/disk-copy-corrupt): h2's checksum differs, the
// migration fails naming the mismatch, h2 removes its copy, and the VM
// boots again on h1 on its untouched disk.
func TestColdDiskCopyCorrupted(t *testing.T) {
	fp := agent.CorruptDiskCopy + "=error(corrupt)*1"
	if err := failpoint.Validate(fp); err != nil {
		t.Fatal(err)
	}
	const name, ip = "coldbad", "198.19.0.85"
	c, ack, _ := coldFaultGuest(t, []string{failpoint.Env + "=" + fp}, name, ip)
	m := c.startMigration(name, "h2", "--strategy", "cold")
	m, took := c.waitFinal(m.Id, 90*time.Second)
	checkFailed(t, m, "failed")
	t.Logf("failed after %s: %s; events %s", took.Round(time.Millisecond), m.Error, states(m))
	if !strings.Contains(m.Error, "checksum mismatch") {
		t.Errorf("error %q does not name the checksum mismatch", m.Error)
	}
	c.checkSourceAuthoritative(name, ip, ack)
	c.waitNoLeftovers("h2", name, 15*time.Second)
}
