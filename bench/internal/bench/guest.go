package bench

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"path/filepath"
	"time"

	"github.com/ferryvm/ferry/bench/internal/report"
	"github.com/ferryvm/ferry/guest/guestapi"
	"github.com/ferryvm/ferry/internal/guestprobe"
	"github.com/ferryvm/ferry/internal/netnsutil"
	"github.com/ferryvm/ferry/internal/qemu"
	"github.com/ferryvm/ferry/internal/spec"
)

// Guest is one benchmark VM: the same image, size and command line for
// every system; only the name, address and MAC differ per system.
type Guest struct {
	Name      string `json:"name"`
	IP        string `json:"ip"`
	MAC       string `json:"mac"`
	MemoryMiB int64  `json:"memoryMiB"`
	Vcpus     int32  `json:"vcpus"`
	Kernel    string `json:"kernel"`
	Initrd    string `json:"initrd"`
	Cmdline   string `json:"cmdline"`
	// DiskSource is the image the guest's local disk is a sparse copy of
	// (disk scenario; "" for none), DiskMiB its virtual size.
	DiskSource string `json:"diskSource,omitempty"`
	DiskMiB    int64  `json:"diskMiB,omitempty"`
}

// guestIPs gives every system its own guest address on the segment.
var guestIPs = map[string]string{"ferry": "198.19.0.21", "qemu": "198.19.0.22", "libvirt": "198.19.0.23", "libvirt-tuned": "198.19.0.24", "libvirt-plain": "198.19.0.25"}

// newGuest describes the guest system runs in scenario sc.
func newGuest(system string, sc Scenario, guestDir string, memMiB int64) Guest {
	name := "bench-" + system
	ip := guestIPs[system]
	return Guest{
		Name:      name,
		IP:        ip,
		MAC:       spec.DefaultMAC(name, 0),
		MemoryMiB: memMiB,
		Vcpus:     1,
		Kernel:    filepath.Join(guestDir, "vmlinuz"),
		Initrd:    filepath.Join(guestDir, "initrd.img"),
		Cmdline: fmt.Sprintf("%s ferry.ip=%s/15 ferry.dirty=%d:%d%s",
			guestapi.BaseCmdline, ip, sc.WSSMiB, sc.DirtyMiBps, diskArg(sc)),
	}
}

// diskArg turns the guest's disk writer on in a scenario with a disk.
func diskArg(sc Scenario) string {
	if sc.DiskMiB == 0 {
		return ""
	}
	return fmt.Sprintf(" ferry.disk=%d", sc.DiskKiBps)
}

// hasDisks reports whether a scenario gives the guest a local disk.
func hasDisks(scs []Scenario) bool {
	for _, sc := range scs {
		if sc.DiskMiB > 0 {
			return true
		}
	}
	return false
}

// migratesDisks reports whether the harness migrates sys's local disks
// (Ferry: mirrored by the engine; libvirt: --copy-storage-all). The plain
// QEMU system would need the NBD and mirror steps driven by hand: skipped.
func migratesDisks(sys System) bool { return sys.Name() != "qemu" }

// diskOnly reports whether the harness runs sys only in scenarios with a
// local disk (libvirt-plain: elsewhere it would repeat libvirt's run).
func diskOnly(sys System) bool { return sys.Name() == "libvirt-plain" }

// makeDiskBase creates dir/disk-base.qcow2: virtMiB virtual, dataMiB of
// pattern data from 1 GiB on (the guest's disk writer writes from 0).
func makeDiskBase(ctx context.Context, dir string, virtMiB, dataMiB int64) (string, error) {
	p := filepath.Join(dir, "disk-base.qcow2")
	if _, err := run(ctx, "", "qemu-img", "create", "-q", "-f", "qcow2", p, fmt.Sprintf("%dM", virtMiB)); err != nil {
		return "", fmt.Errorf("disk scenario: qemu-img create: %w", err)
	}
	if _, err := run(ctx, "", "qemu-io", "-f", "qcow2", "-c", fmt.Sprintf("write -P 0xab 1G %dM", dataMiB), p); err != nil {
		return "", fmt.Errorf("disk scenario: qemu-io write: %w", err)
	}
	return p, nil
}

// verify asks the guest to read every disk record back (GET /verify).
func (p *prober) verify(ctx context.Context, ip string) *report.DiskVerify {
	c := *p.http
	c.Timeout = 60 * time.Second
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+net.JoinHostPort(ip, "8080")+guestapi.VerifyPath, nil)
	if err != nil {
		return &report.DiskVerify{Error: err.Error()}
	}
	resp, err := c.Do(req)
	if err != nil {
		return &report.DiskVerify{Error: err.Error()}
	}
	defer resp.Body.Close()
	var v guestapi.Verify
	if err := json.NewDecoder(resp.Body).Decode(&v); err != nil {
		return &report.DiskVerify{Error: fmt.Sprintf("decode /verify (%s): %v", resp.Status, err)}
	}
	dv := &report.DiskVerify{OK: v.OK, LastSeq: v.LastSeq, Checked: v.Checked}
	if !v.OK {
		dv.Problem = fmt.Sprintf("%+v", v)
	}
	return dv
}

// prober talks to guests from the client namespace.
type prober struct {
	ns   string
	http *http.Client
}

func newProber(clientNS string) *prober {
	c := netnsutil.HTTPClient(clientNS)
	c.Timeout = 3 * time.Second
	return &prober{ns: clientNS, http: c}
}

// status fetches the guest's GET /status.
func (p *prober) status(ctx context.Context, ip string) (guestapi.Status, error) {
	return guestprobe.GetStatus(ctx, p.http, ip)
}

// waitStatus polls status until it answers or timeout passes.
func (p *prober) waitStatus(ctx context.Context, ip string, timeout time.Duration) (guestapi.Status, error) {
	return guestprobe.WaitStatus(ctx, p.http, ip, timeout)
}

// waitDirtying waits until the guest answers and its dirtier is in steady
// state ("running", or "idle" for rate 0), then for warmup more.
func (p *prober) waitDirtying(ctx context.Context, ip string, timeout, warmup time.Duration) (guestapi.Status, error) {
	deadline := time.Now().Add(timeout)
	for {
		st, err := p.waitStatus(ctx, ip, time.Until(deadline))
		if err != nil {
			return st, err
		}
		switch st.DirtyState {
		case "running", "idle", "off":
			select {
			case <-ctx.Done():
				return st, ctx.Err()
			case <-time.After(warmup):
			}
			return p.status(ctx, ip)
		case "error":
			return st, fmt.Errorf("guest %s dirtier failed: %s", ip, st.DirtyError)
		}
		if time.Now().After(deadline) {
			return st, fmt.Errorf("guest %s dirtier still %q after %s", ip, st.DirtyState, timeout)
		}
		select {
		case <-ctx.Done():
			return st, ctx.Err()
		case <-time.After(300 * time.Millisecond):
		}
	}
}

// dial connects to the guest from the client namespace.
func (p *prober) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	return netnsutil.DialContext(ctx, p.ns, network, addr)
}

// countNonZero counts the guest's non-zero memory (see qemu.NonZeroRAM).
func countNonZero(pid int, memMiB int64) (int64, error) {
	return qemu.NonZeroRAM(pid, memMiB<<20)
}
