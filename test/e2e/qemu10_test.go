package e2e

import (
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	ferryv1 "github.com/ferryvm/ferry/gen/ferry/v1"
	"github.com/ferryvm/ferry/guest/guestapi"
	"github.com/ferryvm/ferry/internal/netnsutil"
	"google.golang.org/protobuf/encoding/protojson"
)

// TestHostQEMUCapabilitiesAndCompat: `ferry host get` shows the host's
// QEMU 10.0.x with its capabilities; a new VM is pinned to the versioned
// type the host's q35 alias resolves to (and QEMU runs it); a migration (and
// its dry run) of a VM whose machine type the destination lacks is refused
// with the reason before anything starts.
func TestHostQEMUCapabilitiesAndCompat(t *testing.T) {
	c := upCluster(t, 2)
	out := c.mustFerry("host", "get", "h2", "-o", "json")
	h := &ferryv1.Host{}
	if err := protojson.Unmarshal([]byte(out), h); err != nil {
		t.Fatalf("decode host: %v\n%s", err, out)
	}
	q := h.GetQemu()
	t.Logf("h2 QEMU %s (%s), probe %d ms cached=%v: %d machine types, %d CPU models, capabilities %v, parameters %v, devices %v, features %v",
		q.GetVersion(), q.GetPackage(), q.GetProbeMs(), q.GetCached(), len(q.GetMachines()), len(q.GetCpuModels()), q.GetMigrationCapabilities(), q.GetMigrationParameters(), q.GetDevices(), q.GetFeatures())
	if !strings.HasPrefix(q.GetVersion(), "10.0.") || q.GetProbeError() != "" {
		t.Fatalf("h2 reports QEMU %q (probe error %q), want 10.0.x", q.GetVersion(), q.GetProbeError())
	}
	for _, cp := range []string{"postcopy-ram", "pause-before-switchover", "postcopy-preempt", "dirty-limit"} {
		if !slices.Contains(q.GetMigrationCapabilities(), cp) {
			t.Errorf("capability %s missing from the host record", cp)
		}
	}
	for _, p := range []string{"avail-switchover-bandwidth", "zero-page-detection", "max-bandwidth"} {
		if !slices.Contains(q.GetMigrationParameters(), p) {
			t.Errorf("parameter %s missing from the host record", p)
		}
	}
	wantFeatures := []string{"postcopy-preempt", "multifd-zero-page-detection", "avail-switchover-bandwidth", "dirty-limit", "multifd-zstd"}
	if got := q.GetFeatures(); len(got) != len(wantFeatures) {
		t.Errorf("features %v, want %v", got, wantFeatures)
	}
	for _, f := range wantFeatures {
		if !slices.Contains(q.GetFeatures(), f) {
			t.Errorf("feature %s missing from the host record (QEMU 10.0 offers it)", f)
		}
	}
	var q35 string
	for _, m := range q.GetMachines() {
		if m.GetAlias() == "q35" {
			q35 = m.GetName()
		}
	}
	if !strings.HasPrefix(q35, "pc-q35-10.0") {
		t.Fatalf("q35 alias on h2 points at %q", q35)
	}

	const name, ip = "compat", "198.19.0.61"
	boot := c.bootGuest(name, ip, "")
	vm := c.checkOnHost(name, "h1")
	if vm.GetSpec().GetMachineType() != q35 {
		t.Errorf("VM pinned to machine type %q, want %s (q35 on h1)", vm.GetSpec().GetMachineType(), q35)
	}
	pids := qemuPIDs(t, c.hostNS("h1"))
	if len(pids) != 1 {
		t.Fatalf("QEMUs on h1: %v", pids)
	}
	cmdline, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pids[0]))
	if !strings.Contains(string(cmdline), "\x00-machine\x00"+q35+"\x00") {
		t.Errorf("QEMU on h1 does not run -machine %s: %q", q35, strings.ReplaceAll(string(cmdline), "\x00", " "))
	}

	// A VM created on a newer QEMU: its pinned type is one h2 lacks.
	const newer = "pc-q35-99.0"
	if _, err := c.etcdStore().UpdateVM(ctxT(t, 10*time.Second), name, false, func(v *ferryv1.VM) error {
		v.Spec.MachineType = newer
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	want := "machine type " + newer + " is not offered by QEMU " + q.GetVersion() + " on h2"
	for _, args := range [][]string{{"--dry-run"}, {"--wait"}} {
		_, msg, err := c.migrate(name, "h2", args...)
		t.Logf("migrate %v: %v: %s", args, err, strings.TrimSpace(msg))
		if err == nil || !strings.Contains(msg, want) || !strings.Contains(msg, "upgrade the QEMU of h2") {
			t.Errorf("migrate %v: err %v, output %q; want a refusal containing %q and the fix", args, err, msg, want)
		}
	}
	if ms := c.listMigrations(); len(ms) != 0 {
		t.Errorf("refused migration left %d migration records", len(ms))
	}
	if p := qemuPIDs(t, c.hostNS("h2")); len(p) != 0 {
		t.Errorf("refused migration started QEMU on h2: %v", p)
	}
	if tp := taps(t, c.hostNS("h2")); len(tp) != 0 {
		t.Errorf("refused migration left taps on h2: %v", tp)
	}
	after := c.checkOnHost(name, "h1")
	if after.State != "running" || after.Generation != vm.Generation {
		t.Errorf("refused migration changed the VM: %v", after)
	}
	if got := c.bootID(ip, 10*time.Second); got != boot {
		t.Errorf("guest rebooted: %s -> %s", boot, got)
	}
}

// loadedMigrations is how many migrations TestLoadedMigrationsKeepGuestAlive
// does: FERRY_LOADED_MIGRATIONS, default 12 (about 1.5 minutes under TCG).
func loadedMigrations(t *testing.T) int {
	n := 12
	if s := os.Getenv("FERRY_LOADED_MIGRATIONS"); s != "" {
		v, err := strconv.Atoi(s)
		if err != nil || v < 1 {
			t.Fatalf("FERRY_LOADED_MIGRATIONS=%q: want a positive number", s)
		}
		n = v
	}
	return n
}

// TestLoadedMigrationsKeepGuestAlive is the measurement behind dropping
// pti=on (QEMU 7.2's TCG dirty-tracking workaround, see
// guestapi.BaseCmdline): a guest booted WITHOUT pti=on, dirtying memory, is
// live-migrated back and forth N times; after each migration its TCP
// stream and /status must keep answering, with the same boot and a
// continuous counter. Run of record (QEMU 10.0.2, N=30): 30/30 alive.
func TestLoadedMigrationsKeepGuestAlive(t *testing.T) {
	n := loadedMigrations(t)
	c := upCluster(t, 2)
	const name, ip = "loaded", "198.19.0.62"
	path := c.writeDirtySpec(name, ip, "64:24")
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	spec := strings.Replace(string(b), "pti=on", "", 1)
	if err := os.WriteFile(path, []byte(spec), 0o644); err != nil {
		t.Fatal(err)
	}
	c.mustFerry("vm", "create", "-f", path)
	c.waitVM(name, 60*time.Second, "running", func(v *ferryv1.VM) bool { return v.State == "running" })
	var st map[string]any
	deadline := time.Now().Add(60 * time.Second)
	for {
		if st, err = c.guestStatus(ip, time.Until(deadline)); err != nil {
			t.Fatal(err)
		}
		if st["dirty_state"] == "running" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("dirtier not running: %v", st)
		}
		time.Sleep(300 * time.Millisecond)
	}
	if cl, _ := st["cmdline"].(string); strings.Contains(cl, "pti=on") {
		t.Fatalf("guest booted with pti=on: %q", cl)
	}
	boot := st["boot_id"].(string)
	stream := c.watchStream(ip)
	if !stream.flowing(2 * time.Second) {
		t.Fatal("guest stream not flowing before the first migration")
	}
	hosts := []string{"h2", "h1"}
	alive := 0
	for i := range n {
		to := hosts[i%2]
		m, wall := c.mustMigrateWait(name, to)
		if !stream.flowing(2 * time.Second) {
			if crash := c.guestCrash(name); crash != "" {
				t.Fatalf("migration %d/%d to %s (%s): guest kernel crashed; console:\n%s", i+1, n, to, m.GetStatus(), crash)
			}
			t.Fatalf("migration %d/%d to %s reported %s but the guest stream stopped (guest dead after %d good migrations)", i+1, n, to, m.GetStatus(), alive)
		}
		if got := c.bootID(ip, 5*time.Second); got != boot {
			t.Fatalf("migration %d/%d: boot_id %s -> %s", i+1, n, boot, got)
		}
		stream.mu.Lock()
		anomalies := slices.Clone(stream.anomalies)
		stream.mu.Unlock()
		if len(anomalies) > 0 {
			t.Fatalf("migration %d/%d: stream counter irregular: %v", i+1, n, first(anomalies, 10))
		}
		alive++
		t.Logf("migration %d/%d to %s: %s in %v (downtime %d ms), guest alive", i+1, n, to, m.GetStatus(), wall.Round(time.Millisecond), m.GetDowntimeMs())
	}
	stream.stop()
	fmt.Printf("LOADED-MIGRATIONS without pti=on on QEMU 10: %d/%d guests alive (base cmdline %q)\n", alive, n, guestapi.BaseCmdline)
}

// TestMigrationOverEmulatedLink: the guest's own traffic (tap, bridge,
// uplink with offloads off) and a live migration both cross the link
// emulator: with h1's link at 10 ms each way and 48 MiB/s, the guest's
// stream to the client keeps flowing through it, a migration h1→h2
// completes at no more than the link's rate, and the guest survives with
// the same boot.
func TestMigrationOverEmulatedLink(t *testing.T) {
	c := upCluster(t, 2)
	const name, ip = "wan", "198.19.0.63"
	boot := c.bootGuest(name, ip, "64:8")
	// The guest's own TCP handshake time under TCG is part of every
	// sample, and it varies with the machine's load: the emulator's delay
	// is the difference of the fastest handshakes with and without it.
	base := connectRTT(t, c.c.Client, ip+":8080", 10)
	c.mustFerry("dev", "cluster", "link", "h1", "--dir", c.dir, "--delay", "10ms", "--rate", "48MiB")
	stream := c.watchStream(ip)
	if !stream.flowing(2 * time.Second) {
		t.Fatal("guest stream does not flow through the emulated link")
	}
	rtt := connectRTT(t, c.c.Client, ip+":8080", 10)
	added := rtt - base
	t.Logf("client→guest on h1 round trip: fastest %v through the emulator, %v without: %v added", rtt, base, added)
	if added < 18*time.Millisecond || added > 26*time.Millisecond {
		t.Errorf("the emulator added %v to the round trip to the guest (%v with, %v without), want ≈20 ms (10 ms each way)", added, rtt, base)
	}
	m, wall := c.mustMigrateWait(name, "h2")
	logReport(t, "over the emulated link", m, wall)
	if !stream.flowing(2 * time.Second) {
		if crash := c.guestCrash(name); crash != "" {
			t.Fatalf("guest crashed after the migration:\n%s", crash)
		}
		t.Fatal("guest stream stopped after the migration")
	}
	c.checkOnHost(name, "h2")
	if got := c.bootID(ip, 5*time.Second); got != boot {
		t.Errorf("boot_id %s -> %s", boot, got)
	}
	var sent int64
	for _, s := range m.GetSamples() {
		sent = max(sent, s.GetTransferredBytes())
	}
	if ms := m.GetTotalMs(); ms > 0 && sent > 0 {
		rate := float64(sent) / (float64(ms) / 1000) / (1 << 20)
		t.Logf("migration moved %d MiB in %d ms: %.1f MiB/s average over a 48 MiB/s link", sent>>20, ms, rate)
		if rate > 48*1.1 {
			t.Errorf("migration averaged %.1f MiB/s, more than the emulated link's 48 MiB/s", rate)
		}
	}
	stream.mu.Lock()
	anomalies := slices.Clone(stream.anomalies)
	stream.mu.Unlock()
	if len(anomalies) > 0 {
		t.Errorf("stream counter irregular: %v", first(anomalies, 10))
	}
}

// connectRTT is the fastest of n TCP handshakes (one round trip each)
// from namespace ns to addr.
func connectRTT(t *testing.T, ns, addr string, n int) time.Duration {
	t.Helper()
	var ds []time.Duration
	for range n {
		start := time.Now()
		conn, err := netnsutil.DialContext(ctxT(t, 5*time.Second), ns, "tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		ds = append(ds, time.Since(start))
		conn.Close()
		time.Sleep(20 * time.Millisecond)
	}
	return slices.Min(ds)
}
