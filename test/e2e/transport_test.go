package e2e

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	ferryv1 "github.com/ferryvm/ferry/gen/ferry/v1"
	"github.com/ferryvm/ferry/guest/guestapi"
)

// bootMarkedGuest boots VM name on h1 with the memory marker of a fresh
// seed (ferry.marker=) and ferry.dirty=dirty, and returns the marker.
func (c *cluster) bootMarkedGuest(name, ip, dirty string) []byte {
	c.t.Helper()
	b := make([]byte, 16)
	_, _ = rand.Read(b)
	seed := hex.EncodeToString(b)
	path := c.writeDirtySpec(name, ip, dirty)
	spec, err := os.ReadFile(path)
	if err != nil {
		c.t.Fatal(err)
	}
	old := "ferry.ip=" + ip + "/15"
	spec = []byte(strings.Replace(string(spec), old, old+" ferry.marker="+seed, 1))
	if err := os.WriteFile(path, spec, 0o644); err != nil {
		c.t.Fatal(err)
	}
	c.mustFerry("vm", "create", "-f", path)
	vm := c.waitVM(name, 60*time.Second, "running", func(v *ferryv1.VM) bool { return v.State == "running" })
	if vm.Host != "h1" {
		c.t.Fatalf("VM %s placed on %s, want h1", name, vm.Host)
	}
	deadline := time.Now().Add(90 * time.Second)
	for {
		st, err := c.guestStatus(ip, time.Until(deadline))
		if err != nil {
			c.t.Fatal(err)
		}
		if errs, _ := st["config_errors"].([]any); len(errs) > 0 {
			c.t.Fatalf("guest %s refused its command line (a test guest without ferry.marker=? rebuild it with make guest): %v", name, errs)
		}
		if dirty == "" || st["dirty_state"] == "idle" || st["dirty_state"] == "running" {
			return guestapi.Marker(seed)
		}
		if time.Now().After(deadline) {
			c.t.Fatalf("guest %s: working set not filled after 90s: %v", name, st)
		}
		time.Sleep(300 * time.Millisecond)
	}
}

// noCredentialsLeft fails if a QEMU TLS credentials directory is left in
// the VM's directory on either host.
func (c *cluster) noCredentialsLeft(vm string) {
	c.t.Helper()
	for _, h := range []string{"h1", "h2"} {
		if left, _ := filepath.Glob(filepath.Join(c.vmDir(h, vm), ".tls-*")); len(left) > 0 {
			c.t.Errorf("TLS credentials left on %s: %v", h, left)
		}
	}
}

// TestMigrationStreamsAreEncrypted captures the link of h1 while a guest
// that keeps a 64-byte marker in its RAM migrates back and forth: with
// the default transport (TLS), with multifd channels, and with post-copy
// and its preempt channel, the capture holds no copy of the marker; with
// --insecure-transport (post-copy: uncompressed pages) it holds most of
// the copies in RAM (so the capture does see guest memory).
// Every report names its transport, and no credentials stay on disk.
func TestMigrationStreamsAreEncrypted(t *testing.T) {
	c := upCluster(t, 2)
	const name, ip = "secret", "198.19.0.61"
	marker := c.bootMarkedGuest(name, ip, "32:0")
	cp := startCapture(t, c.c.Segment, "h1", marker)

	legs := []struct {
		to, transport string
		args          []string
		// policy is the cluster policy's insecureTransport set (with
		// `ferry policy set --insecure-transport`) before the leg.
		policy string
	}{
		// One stream, so never compressed: zstd, which the planner may
		// choose for a pre-copy that one TLS stream would slow, hides the
		// marker too, and the check must see TLS hide raw pages.
		{"h2", "tls", []string{"--multifd", "1"}, ""},
		// Post-copy sends pages on one stream (QEMU 10.0 does not combine
		// multifd with it) and so never compressed, which would hide the
		// marker too: the plaintext check sees raw pages. Plaintext from
		// the cluster policy insecureTransport: true.
		{"h1", "plain", []string{"--strategy", "postcopy"}, "true"},
		{"h2", "tls", []string{"--multifd", "4"}, "false"},
		{"h1", "tls", []string{"--strategy", "postcopy"}, ""},
	}
	for i, l := range legs {
		if l.policy != "" {
			c.mustFerry("policy", "set", "--insecure-transport="+l.policy)
		}
		cp.reset()
		m, wall := c.mustMigrateWait(name, l.to, l.args...)
		time.Sleep(200 * time.Millisecond) // the capture's last frames
		st := cp.stats()
		logReport(t, fmt.Sprintf("leg %d %v", i+1, l.args), m, wall)
		t.Logf("leg %d → %s %v: transport %q, capture on h1: %s, RAM transferred %.1f MiB, tuning %v",
			i+1, l.to, l.args, m.Transport, st, float64(m.TransferredBytes)/(1<<20), m.GetPlan().GetTuning())
		if m.Status != "completed" || m.Transport != l.transport {
			t.Errorf("leg %d: status %q transport %q, want completed over %s", i+1, m.Status, m.Transport, l.transport)
		}
		// The capture must have seen the stream for its silence to mean
		// anything: at least half of the RAM QEMU sent.
		if st.Bytes < m.TransferredBytes/2 {
			t.Errorf("leg %d: the capture saw %.1f MiB of a %.1f MiB transfer: it is not on the migration's path", i+1,
				float64(st.Bytes)/(1<<20), float64(m.TransferredBytes)/(1<<20))
		}
		switch {
		case l.transport == "tls" && st.Hits != 0:
			t.Errorf("leg %d %v: the guest's marker crossed the link in the clear %d times over TLS", i+1, l.args, st.Hits)
		case l.transport == "plain" && st.Hits < guestapi.MarkerCopies/4:
			t.Errorf("leg %d %v: %d copies of the marker in a plaintext capture, want most of the %d in RAM (the test cannot see guest memory)",
				i+1, l.args, st.Hits, guestapi.MarkerCopies)
		}
		c.noCredentialsLeft(name)
		c.checkOnHost(name, l.to)
	}
	if err := cp.stop(); err != nil {
		t.Errorf("capture: %v", err)
	}
	// Each change of the policy is an event (tls -> plain -> tls).
	events := c.mustFerry("events")
	on, off := strings.Index(events, "tls -> plain"), strings.LastIndex(events, "plain -> tls")
	if on < 0 || off < on {
		t.Errorf("ferry events lacks the policy's changes tls -> plain -> tls:\n%s", events)
	}
}

// qemuCPU samples the CPU time of every QEMU in the hosts' namespaces
// (utime+stime of the whole process, exited threads included) until stop,
// keeping each process's last value: a source QEMU quits at the end of
// its migration, so its final figure is the last sample before it went.
type qemuCPU struct {
	c     *cluster
	stopC chan struct{}
	done  chan struct{}

	mu    sync.Mutex
	first map[int]float64 // seconds at the first sample (0 for QEMUs started later)
	last  map[int]float64
}

func (c *cluster) sampleQEMUCPU() *qemuCPU {
	q := &qemuCPU{c: c, stopC: make(chan struct{}), done: make(chan struct{}), first: map[int]float64{}, last: map[int]float64{}}
	q.sample(true)
	go func() {
		defer close(q.done)
		tk := time.NewTicker(20 * time.Millisecond)
		defer tk.Stop()
		for {
			select {
			case <-q.stopC:
				q.sample(false)
				return
			case <-tk.C:
				q.sample(false)
			}
		}
	}()
	return q
}

func (q *qemuCPU) sample(initial bool) {
	for _, h := range []string{"h1", "h2"} {
		for _, pid := range qemuPIDs(q.c.t, q.c.hostNS(h)) {
			s, ok := cpuSeconds(pid)
			if !ok {
				continue
			}
			q.mu.Lock()
			if _, seen := q.first[pid]; !seen {
				q.first[pid] = 0
				if initial {
					q.first[pid] = s
				}
			}
			q.last[pid] = s
			q.mu.Unlock()
		}
	}
}

// stop ends the sampling and returns the QEMUs' CPU seconds since start.
func (q *qemuCPU) stop() float64 {
	close(q.stopC)
	<-q.done
	q.mu.Lock()
	defer q.mu.Unlock()
	var sum float64
	for pid, l := range q.last {
		sum += l - q.first[pid]
	}
	return sum
}

// cpuSeconds reads utime+stime of a process (clock ticks of 1/100 s).
func cpuSeconds(pid int) (float64, bool) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, false
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0, false
	}
	f := strings.Fields(s[i+1:]) // f[0] is field 3 (state)
	if len(f) < 13 {
		return 0, false
	}
	ut, err1 := strconv.ParseFloat(f[11], 64)
	st, err2 := strconv.ParseFloat(f[12], 64)
	if err1 != nil || err2 != nil {
		return 0, false
	}
	return (ut + st) / 100, true
}

func median(v []float64) float64 {
	s := slices.Clone(v)
	sort.Float64s(s)
	if len(s) == 0 {
		return 0
	}
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// TestMigrationTLSCost measures what encrypting the migration stream
// costs (a measurement, not a check: it runs only when asked). Each run
// migrates a guest with a 160 MiB filled working set (post-copy: the same
// plan both ways, one uncompressed stream plus the preempt channel, where
// pre-copy's multifd and compression choices follow the link rate learned
// and differ) once over TLS and once in plaintext (alternating directions, same cluster), recording QEMU's
// migration time, the throughput and the QEMUs' CPU seconds, and prints
// the medians side by side:
//
//	FERRY_TLS_COST_RUNS=3 go test ./test/e2e -run TestMigrationTLSCost -v
func TestMigrationTLSCost(t *testing.T) {
	runs, _ := strconv.Atoi(os.Getenv("FERRY_TLS_COST_RUNS"))
	if runs <= 0 {
		t.Skip("a measurement: set FERRY_TLS_COST_RUNS=N (N pairs of migrations) to run it")
	}
	c := upCluster(t, 2)
	const name, ip = "cost", "198.19.0.62"
	c.bootMarkedGuest(name, ip, "160:0")
	type fig struct{ ms, cpu, mibps, mib []float64 }
	figs := map[string]*fig{"tls": {}, "plain": {}}
	at := "h1"
	for range runs {
		for _, mode := range []string{"tls", "plain"} {
			to := map[string]string{"h1": "h2", "h2": "h1"}[at]
			args := []string{"--strategy", "postcopy"} // the same plan both ways: one stream, no compression
			if mode == "plain" {
				args = append(args, "--insecure-transport")
			}
			cpu := c.sampleQEMUCPU()
			m, wall := c.mustMigrateWait(name, to, args...)
			sec := cpu.stop()
			if m.Transport != mode {
				t.Fatalf("transport %q, want %s", m.Transport, mode)
			}
			f := figs[mode]
			mib := float64(m.TransferredBytes) / (1 << 20)
			f.ms = append(f.ms, float64(m.TotalMs))
			f.cpu = append(f.cpu, sec)
			f.mib = append(f.mib, mib)
			f.mibps = append(f.mibps, mib/(float64(m.TotalMs)/1000))
			t.Logf("%s %s→%s: total %d ms (wall %s), %.1f MiB, %.1f MiB/s, QEMU CPU %.2f s, downtime %d ms",
				mode, at, to, m.TotalMs, wall.Round(time.Millisecond), mib, mib/(float64(m.TotalMs)/1000), sec, m.DowntimeMs)
			at = to
		}
	}
	for _, mode := range []string{"tls", "plain"} {
		f := figs[mode]
		fmt.Printf("TLS-COST %-5s n=%d median total %.0f ms, %.1f MiB/s, QEMU CPU %.2f s, %.1f MiB (runs: ms %v cpu %v)\n",
			mode, len(f.ms), median(f.ms), median(f.mibps), median(f.cpu), median(f.mib), f.ms, f.cpu)
	}
}
