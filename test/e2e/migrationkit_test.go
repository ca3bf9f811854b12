package e2e

// Helpers for the migration end-to-end tests (migration_test.go): specs
// with a memory dirtier, the migrate/migration CLI, a QMP observer that
// samples both hosts' QEMUs, a TCP counter-stream watcher, and checks that
// a failed migration left nothing behind.

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"connectrpc.com/connect"
	ferryv1 "github.com/ferryvm/ferry/gen/ferry/v1"
	"github.com/ferryvm/ferry/gen/ferry/v1/ferryv1connect"
	"github.com/ferryvm/ferry/internal/failover"
	"github.com/ferryvm/ferry/internal/netnsutil"
	"github.com/ferryvm/ferry/internal/qmp"
	"github.com/ferryvm/ferry/internal/store"
	"google.golang.org/protobuf/encoding/protojson"
)

var jsonIn = protojson.UnmarshalOptions{DiscardUnknown: true}

// hostNS returns the namespace of host name ("h1").
func (c *cluster) hostNS(name string) string {
	c.t.Helper()
	h, ok := c.c.Host(name)
	if !ok {
		c.t.Fatalf("no host %s in the cluster", name)
	}
	return h.Netns
}

// vmDir is the VM's directory on host.
func (c *cluster) vmDir(host, vm string) string { return filepath.Join(c.dir, host, "vms", vm) }

// observeSock is the VM's observer QMP socket on host.
func (c *cluster) observeSock(host, vm string) string {
	return filepath.Join(c.vmDir(host, vm), "qmp-observe.sock")
}

// writeDirtySpec writes a test-guest spec (256 MiB) whose kernel command
// line also carries ferry.dirty=dirty ("WSS_MiB:RATE_MiBps"); "" for none.
func (c *cluster) writeDirtySpec(name, ip, dirty string) string {
	c.t.Helper()
	path := c.writeSpec(name, ip, "")
	if dirty == "" {
		return path
	}
	b, err := os.ReadFile(path)
	if err != nil {
		c.t.Fatal(err)
	}
	old := "ferry.ip=" + ip + "/15\""
	if !strings.Contains(string(b), old) {
		c.t.Fatalf("spec %s has no %q to extend:\n%s", path, old, b)
	}
	b = []byte(strings.Replace(string(b), old, "ferry.ip="+ip+"/15 ferry.dirty="+dirty+"\"", 1))
	if err := os.WriteFile(path, b, 0o644); err != nil {
		c.t.Fatal(err)
	}
	return path
}

// bootGuest creates the VM, waits until it runs on h1 and its guest answers
// /status (with the dirtier running when dirty has a non-zero rate), and
// returns the guest's boot_id.
func (c *cluster) bootGuest(name, ip, dirty string) string {
	c.t.Helper()
	t := c.t
	start := time.Now()
	c.mustFerry("vm", "create", "-f", c.writeDirtySpec(name, ip, dirty))
	vm := c.waitVM(name, 60*time.Second, "running", func(v *ferryv1.VM) bool { return v.State == "running" })
	if vm.Host != "h1" {
		t.Fatalf("VM %s placed on %s, the migration tests expect h1", name, vm.Host)
	}
	wantDirty := dirty != "" && !strings.HasSuffix(dirty, ":0")
	deadline := time.Now().Add(60 * time.Second)
	for {
		st, err := c.guestStatus(ip, time.Until(deadline))
		if err != nil {
			t.Fatal(err)
		}
		if !wantDirty || st["dirty_state"] == "running" {
			t.Logf("guest %s ready on h1 after %s: boot_id %v dirty_state %v", name, time.Since(start).Round(time.Millisecond), st["boot_id"], st["dirty_state"])
			return st["boot_id"].(string)
		}
		if time.Now().After(deadline) {
			t.Fatalf("guest %s dirtier not running after 60s: %v", name, st)
		}
		time.Sleep(300 * time.Millisecond)
	}
}

// bootID returns the guest's current boot_id.
func (c *cluster) bootID(ip string, timeout time.Duration) string {
	c.t.Helper()
	st, err := c.guestStatus(ip, timeout)
	if err != nil {
		c.t.Fatal(err)
	}
	id, _ := st["boot_id"].(string)
	return id
}

func parseMigration(out string) (*ferryv1.Migration, error) {
	m := &ferryv1.Migration{}
	if err := jsonIn.Unmarshal([]byte(out), m); err != nil {
		return nil, fmt.Errorf("decode migration JSON: %w\n%s", err, out)
	}
	return m, nil
}

// migrate runs `ferry migrate VM --to HOST ARGS... -o json` and decodes the
// printed migration (nil if nothing decodable was printed). Without a
// --strategy in args it migrates with --strategy precopy, so the tests of
// the protocol do not depend on the planner's choice.
func (c *cluster) migrate(vm, to string, args ...string) (*ferryv1.Migration, string, error) {
	argv := append([]string{"migrate", vm, "--to", to}, args...)
	if !slices.Contains(args, "--strategy") {
		argv = append(argv, "--strategy", "precopy")
	}
	argv = append(argv, "-o", "json")
	out, errOut, err := c.ferry(argv...)
	m, perr := parseMigration(out)
	if perr != nil {
		m = nil
	}
	if err == nil && perr != nil {
		err = perr
	}
	return m, out + errOut, err
}

// mustMigrateWait runs a migration with --wait and fails unless it completed.
func (c *cluster) mustMigrateWait(vm, to string, args ...string) (*ferryv1.Migration, time.Duration) {
	c.t.Helper()
	start := time.Now()
	m, out, err := c.migrate(vm, to, append([]string{"--wait"}, args...)...)
	wall := time.Since(start)
	if err != nil || m == nil {
		c.logMigrations()
		c.t.Fatalf("ferry migrate %s --to %s --wait %v: %v after %s\n%s", vm, to, args, err, wall.Round(time.Millisecond), out)
	}
	return m, wall
}

// startMigration runs `ferry migrate` without --wait and returns the
// running migration.
func (c *cluster) startMigration(vm, to string, args ...string) *ferryv1.Migration {
	c.t.Helper()
	m, out, err := c.migrate(vm, to, args...)
	if err != nil || m == nil {
		c.t.Fatalf("ferry migrate %s --to %s %v: %v\n%s", vm, to, args, err, out)
	}
	if m.Id == "" || m.Status != "running" {
		c.t.Fatalf("ferry migrate without --wait returned id %q status %q, want an id and running:\n%s", m.Id, m.Status, out)
	}
	c.t.Logf("migration %s started: %s %s→%s state %s", m.Id, m.Vm, m.From, m.To, m.State)
	return m
}

func (c *cluster) getMigration(id string) (*ferryv1.Migration, error) {
	out, errOut, err := c.ferry("migration", "get", id, "-o", "json")
	if err != nil {
		return nil, fmt.Errorf("ferry migration get %s: %v: %s", id, err, errOut)
	}
	return parseMigration(out)
}

// waitMigration polls `ferry migration get` until cond holds.
func (c *cluster) waitMigration(id string, timeout time.Duration, what string, cond func(*ferryv1.Migration) bool) *ferryv1.Migration {
	c.t.Helper()
	deadline := time.Now().Add(timeout)
	var last *ferryv1.Migration
	var lastErr error
	for time.Now().Before(deadline) {
		m, err := c.getMigration(id)
		lastErr = err
		if err == nil {
			last = m
			if cond(m) {
				return m
			}
		}
		time.Sleep(200 * time.Millisecond)
	}
	c.logMigrations()
	c.t.Fatalf("migration %s not %s within %s: last status %q state %q error %q transferred %d (err %v)", id, what, timeout,
		last.GetStatus(), last.GetState(), last.GetError(), last.GetTransferredBytes(), lastErr)
	return nil
}

// waitTransferring waits until the migration sends RAM.
func (c *cluster) waitTransferring(id string) *ferryv1.Migration {
	c.t.Helper()
	m := c.waitMigration(id, 30*time.Second, "transferring with bytes sent", func(m *ferryv1.Migration) bool {
		return m.State == "transferring" && m.TransferredBytes > 0 || m.Status != "running"
	})
	if m.Status != "running" {
		c.logMigrations()
		c.t.Fatalf("migration %s ended (%s: %s) before the fault could be injected", id, m.Status, m.Error)
	}
	c.t.Logf("migration %s transferring: %d bytes sent, %d remaining", id, m.TransferredBytes, m.RemainingBytes)
	return m
}

// waitFinal waits until the migration is no longer running.
func (c *cluster) waitFinal(id string, timeout time.Duration) (*ferryv1.Migration, time.Duration) {
	c.t.Helper()
	start := time.Now()
	m := c.waitMigration(id, timeout, "finished", func(m *ferryv1.Migration) bool { return m.Status != "running" })
	d := time.Since(start)
	c.t.Logf("migration %s ended %s (state %s) %s after the fault; error: %s", id, m.Status, m.State, d.Round(time.Millisecond), m.Error)
	return m, d
}

// logMigrations logs `ferry migration list -o json` (for failure diagnosis).
func (c *cluster) logMigrations() {
	out, errOut, err := c.ferry("migration", "list", "-o", "json")
	if len(out) > 6000 {
		out = out[:6000] + "\n...(truncated)"
	}
	c.t.Logf("ferry migration list -o json (err %v):\n%s%s", err, out, errOut)
}

func (c *cluster) listMigrations() []*ferryv1.Migration {
	c.t.Helper()
	out := c.mustFerry("migration", "list", "-o", "json")
	resp := &ferryv1.ListMigrationsResponse{}
	if err := jsonIn.Unmarshal([]byte(out), resp); err != nil {
		c.t.Fatalf("decode migration list: %v\n%s", err, out)
	}
	return resp.Migrations
}

// logReport logs a migration's figures.
func logReport(t *testing.T, label string, m *ferryv1.Migration, wall time.Duration) {
	t.Helper()
	p := m.GetDowntimePhases()
	var maxDirty, maxRate float64
	for _, s := range m.Samples {
		maxDirty, maxRate = max(maxDirty, s.DirtyRateMibps), max(maxRate, s.RateMibps)
	}
	t.Logf("%s: %s %s %s→%s status %s in %s (CLI wall %s): totalMs %d setupMs %d downtimeMs %d "+
		"phases{stop %d, finalRound %d (%.1f MiB), switchover %d, deviceState %d, resume %d, total %d} "+
		"transferred %.1f MiB rounds %d bandwidth %.1f MiB/s dirtyRate %.1f MiB/s samples %d (max rate %.1f MiB/s, max dirty rate %.1f MiB/s)",
		label, m.Id, m.Strategy, m.From, m.To, m.Status, time.Duration(m.TotalMs)*time.Millisecond, wall.Round(time.Millisecond),
		m.TotalMs, m.SetupMs, m.DowntimeMs,
		p.GetStopMs(), p.GetFinalRoundMs(), float64(p.GetFinalRoundBytes())/(1<<20), p.GetSwitchoverMs(), p.GetDeviceStateMs(), p.GetResumeMs(), p.GetTotalMs(),
		float64(m.TransferredBytes)/(1<<20), m.Rounds, m.BandwidthMibps, m.DirtyRateMibps, len(m.Samples), maxRate, maxDirty)
}

// checkLiveReport checks a completed live migration's report.
func checkLiveReport(t *testing.T, m *ferryv1.Migration, vm, from, to string) {
	t.Helper()
	if m.Status != "completed" || m.Vm != vm || m.From != from || m.To != to {
		t.Errorf("report: vm %q %s→%s status %q; want %s %s→%s completed", m.Vm, m.From, m.To, m.Status, vm, from, to)
	}
	if m.Strategy != "" && m.Strategy != "precopy" {
		t.Errorf("report strategy %q, want precopy", m.Strategy)
	}
	if m.TotalMs <= 0 || m.GetDowntimePhases().GetTotalMs() <= 0 || m.TransferredBytes <= 0 || m.Rounds < 1 || len(m.Samples) < 1 {
		t.Errorf("report not sane: totalMs %d downtimePhases.totalMs %d transferredBytes %d rounds %d samples %d; want all > 0 (rounds, samples >= 1)",
			m.TotalMs, m.GetDowntimePhases().GetTotalMs(), m.TransferredBytes, m.Rounds, len(m.Samples))
	}
}

// checkOnHost checks the VM record: owned by host, running, no migration.
func (c *cluster) checkOnHost(name, host string) *ferryv1.VM {
	c.t.Helper()
	vm := c.waitVM(name, 15*time.Second, "running on "+host, func(v *ferryv1.VM) bool {
		return v.Host == host && v.State == "running" && v.MigrationId == ""
	})
	return vm
}

// leftovers describes what of VM is still on host: QEMUs, taps, directory.
func (c *cluster) leftovers(host, vm string) string {
	ns := c.hostNS(host)
	var parts []string
	if p := qemuPIDs(c.t, ns); len(p) > 0 {
		parts = append(parts, fmt.Sprintf("QEMU pids %v", p))
	}
	if tp := taps(c.t, ns); len(tp) > 0 {
		parts = append(parts, fmt.Sprintf("taps %v", tp))
	}
	if _, err := os.Stat(c.vmDir(host, vm)); !os.IsNotExist(err) {
		entries, _ := os.ReadDir(c.vmDir(host, vm))
		var names []string
		for _, e := range entries {
			names = append(names, e.Name())
		}
		parts = append(parts, fmt.Sprintf("directory %s %v (stat err %v)", c.vmDir(host, vm), names, err))
	}
	return strings.Join(parts, "; ")
}

// waitNoLeftovers polls up to timeout until host has no QEMU, tap or VM
// directory left.
func (c *cluster) waitNoLeftovers(host, vm string, timeout time.Duration) {
	c.t.Helper()
	start := time.Now()
	var left string
	for {
		left = c.leftovers(host, vm)
		if left == "" {
			c.t.Logf("nothing left on %s (%s after the check started)", host, time.Since(start).Round(time.Millisecond))
			return
		}
		if time.Since(start) > timeout {
			break
		}
		time.Sleep(250 * time.Millisecond)
	}
	c.t.Errorf("left on %s after %s: %s", host, timeout, left)
}

// checkRolledBack checks the state after a failed or cancelled migration:
// the VM runs on h1 with the same boot, and h2 holds nothing of it. obs,
// if not nil, is the observer holding the observer sockets.
func (c *cluster) checkRolledBack(name, ip, bootID string, obs *observer) {
	c.t.Helper()
	c.checkOnHost(name, "h1")
	if obs != nil {
		if s, ok := obs.sampleAfter(time.Now(), 5*time.Second); !ok || !s.running[0] {
			c.t.Errorf("source QEMU on h1 after rollback: %v (sampled %v); want running", s, ok)
		}
	} else if st, err := observeOnce(c.observeSock("h1", name)); err != nil || !st.Running {
		c.t.Errorf("source QEMU on h1: status %+v err %v; want running", st, err)
	}
	if got := c.bootID(ip, 20*time.Second); got != bootID {
		c.t.Errorf("boot_id after rollback = %s, want %s (the guest rebooted)", got, bootID)
	}
	c.waitNoLeftovers("h2", name, 15*time.Second)
}

// observeOnce queries a QEMU's status through its observer socket.
func observeOnce(sock string) (qmp.StatusInfo, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	m, err := qmp.Connect(ctx, sock, qmp.WithHandshakeTimeout(3*time.Second))
	if err != nil {
		return qmp.StatusInfo{}, err
	}
	defer m.Close()
	return m.QueryStatus(ctx)
}

// setLink sets a host namespace's uplink up or down.
func setLink(ns string, up bool) error {
	state := "down"
	if up {
		state = "up"
	}
	out, err := exec.Command("ip", "-n", ns, "link", "set", "uplink", state).CombinedOutput()
	if err != nil {
		return fmt.Errorf("ip -n %s link set uplink %s: %v: %s", ns, state, err, out)
	}
	return nil
}

// etcdStore connects to the server's embedded etcd.
func (c *cluster) etcdStore() *store.Etcd {
	c.t.Helper()
	b, err := os.ReadFile(filepath.Join(c.dir, "server", "etcd", "ports.json"))
	if err != nil {
		c.t.Fatal(err)
	}
	var ports struct {
		Client int `json:"client"`
	}
	if err := json.Unmarshal(b, &ports); err != nil || ports.Client == 0 {
		c.t.Fatalf("parse etcd ports.json %q: %v", b, err)
	}
	s, err := store.NewEtcd(ctxT(c.t, 30*time.Second), []string{fmt.Sprintf("http://127.0.0.1:%d", ports.Client)})
	if err != nil {
		c.t.Fatal(err)
	}
	c.t.Cleanup(func() { _ = s.Close() })
	return s
}

// migrationClient is the server's MigrationService over its socket, for
// polling faster than the CLI can.
func (c *cluster) migrationClient() ferryv1connect.MigrationServiceClient {
	hc, base := failover.Client(c.server)
	return ferryv1connect.NewMigrationServiceClient(hc, base)
}

// waitStateRPC polls GetMigration every 10 ms until the state is want or
// the migration ended.
func (c *cluster) waitStateRPC(id, want string, timeout time.Duration) *ferryv1.Migration {
	c.t.Helper()
	mc := c.migrationClient()
	deadline := time.Now().Add(timeout)
	var last *ferryv1.Migration
	for time.Now().Before(deadline) {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		resp, err := mc.GetMigration(ctx, connect.NewRequest(&ferryv1.GetMigrationRequest{Id: id, WithoutSamples: true}))
		cancel()
		if err == nil {
			last = resp.Msg.Migration
			if last.State == want || last.Status != "running" {
				return last
			}
		}
		time.Sleep(10 * time.Millisecond)
	}
	c.t.Fatalf("migration %s not %s within %s: last %v", id, want, timeout, last)
	return nil
}

// ---- QMP observer ----

// qmpSample is one sample of both hosts' QEMU of a VM ("" = no QEMU).
type qmpSample struct {
	at      time.Time
	status  [2]string
	running [2]bool
}

func (s qmpSample) String() string {
	f := func(x string) string {
		if x == "" {
			return "-"
		}
		return x
	}
	return fmt.Sprintf("h1=%s h2=%s", f(s.status[0]), f(s.status[1]))
}

// observer samples the run state of the VM's QEMU on h1 and h2 every
// 20 ms through their observer QMP sockets: both at once until one runs
// alone, then the other one first (see run).
type observer struct {
	paths [2]string
	mons  [2]*qmp.Monitor
	inos  [2]uint64

	mu          sync.Mutex
	samples     []qmpSample
	bothRunning []qmpSample
	changes     []string // the sequence of distinct sample states

	stopOnce sync.Once
	cancel   context.CancelFunc
	done     chan struct{}
}

func (c *cluster) startObserver(vm string) *observer {
	ctx, cancel := context.WithCancel(context.Background())
	o := &observer{paths: [2]string{c.observeSock("h1", vm), c.observeSock("h2", vm)}, cancel: cancel, done: make(chan struct{})}
	go o.run(ctx)
	c.t.Cleanup(o.stop)
	return o
}

func (o *observer) run(ctx context.Context) {
	defer close(o.done)
	defer func() {
		for i := range o.mons {
			o.closeMon(i)
		}
	}()
	start := time.Now()
	var prev string
	sole := -1 // the QEMU last seen running alone: the source of a switchover
	for ctx.Err() == nil {
		var s qmpSample
		if sole < 0 {
			var wg sync.WaitGroup
			for i := range 2 {
				wg.Go(func() { s.status[i], s.running[i] = o.poll(ctx, i) })
			}
			wg.Wait()
		} else {
			// The other QEMU first, then the one that ran alone: "both
			// running" then means the source ran after the destination
			// did, a real second copy. Polled the other way round, a
			// pause shorter than one poll (13 ms) would fall between the
			// two answers and look like an overlap.
			s.status[1-sole], s.running[1-sole] = o.poll(ctx, 1-sole)
			s.status[sole], s.running[sole] = o.poll(ctx, sole)
		}
		if ctx.Err() != nil {
			break // the polls were cut short: not a sample
		}
		s.at = time.Now()
		o.mu.Lock()
		o.samples = append(o.samples, s)
		if s.running[0] && s.running[1] {
			o.bothRunning = append(o.bothRunning, s)
		}
		if s.running[0] != s.running[1] {
			sole = 0
			if s.running[1] {
				sole = 1
			}
		}
		if str := s.String(); str != prev {
			o.changes = append(o.changes, fmt.Sprintf("+%.3fs %s", s.at.Sub(start).Seconds(), str))
			prev = str
		}
		o.mu.Unlock()
		select {
		case <-ctx.Done():
		case <-time.After(20 * time.Millisecond):
		}
	}
}

func (o *observer) closeMon(i int) {
	if o.mons[i] != nil {
		_ = o.mons[i].Close()
		o.mons[i] = nil
	}
}

// poll returns the status of QEMU i, "" when there is none.
func (o *observer) poll(ctx context.Context, i int) (string, bool) {
	fi, err := os.Stat(o.paths[i])
	if err != nil {
		o.closeMon(i)
		return "", false
	}
	var ino uint64
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		ino = st.Ino
	}
	if m := o.mons[i]; m != nil {
		select {
		case <-m.Done():
			o.closeMon(i)
		default:
			if o.inos[i] != ino {
				o.closeMon(i) // a new QEMU made a new socket
			}
		}
	}
	if o.mons[i] == nil {
		cctx, cancel := context.WithTimeout(ctx, time.Second)
		m, err := qmp.Connect(cctx, o.paths[i], qmp.WithHandshakeTimeout(time.Second), qmp.WithEventBuffer(4))
		cancel()
		if err != nil {
			return "", false // stale socket of a dead QEMU, or not listening yet
		}
		o.mons[i], o.inos[i] = m, ino
	}
	qctx, cancel := context.WithTimeout(ctx, time.Second)
	st, err := o.mons[i].QueryStatus(qctx)
	cancel()
	if err != nil {
		o.closeMon(i)
		return "", false
	}
	return string(st.Status), st.Running
}

func (o *observer) stop() {
	o.stopOnce.Do(func() {
		o.cancel()
		<-o.done
	})
}

// sampleAfter waits up to timeout for a sample taken after t.
func (o *observer) sampleAfter(t time.Time, timeout time.Duration) (qmpSample, bool) {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		o.mu.Lock()
		n := len(o.samples)
		var s qmpSample
		if n > 0 {
			s = o.samples[n-1]
		}
		o.mu.Unlock()
		if n > 0 && s.at.After(t) {
			return s, true
		}
		time.Sleep(20 * time.Millisecond)
	}
	return qmpSample{}, false
}

// bothPresent counts samples in [from, to] where both hosts had a QEMU.
func (o *observer) bothPresent(from, to time.Time) int {
	o.mu.Lock()
	defer o.mu.Unlock()
	n := 0
	for _, s := range o.samples {
		if !s.at.Before(from) && !s.at.After(to) && s.status[0] != "" && s.status[1] != "" {
			n++
		}
	}
	return n
}

// ---- TCP counter stream watcher ----

// streamWatch reads the guest's TCP 7000 counter stream and records every
// irregularity and the longest gap between two consecutive lines.
type streamWatch struct {
	conn     net.Conn
	stopping atomic.Bool
	done     chan struct{}

	mu         sync.Mutex
	lines      int
	last       int
	lastAt     time.Time
	maxGap     time.Duration
	maxGapAt   time.Time
	maxGapLine int
	bigGaps    []string // gaps over 100 ms
	gaps       []gapAt  // the same gaps, as data
	anomalies  []string
	readErr    error
}

// gapAt is one silence of the stream: it ended at end and lasted d.
type gapAt struct {
	end time.Time
	d   time.Duration
}

func (c *cluster) watchStream(ip string) *streamWatch {
	c.t.Helper()
	conn, err := netnsutil.DialContext(ctxT(c.t, 10*time.Second), c.c.Client, "tcp", ip+":7000")
	if err != nil {
		c.t.Fatal(err)
	}
	w := &streamWatch{conn: conn, last: -1, done: make(chan struct{})}
	c.t.Cleanup(w.stop)
	go w.run()
	return w
}

func (w *streamWatch) run() {
	defer close(w.done)
	br := bufio.NewReader(w.conn)
	for {
		line, err := br.ReadString('\n')
		now := time.Now()
		if err != nil {
			if !w.stopping.Load() {
				w.mu.Lock()
				w.readErr = fmt.Errorf("after line %d: %w", w.last, err)
				w.mu.Unlock()
			}
			return
		}
		w.mu.Lock()
		n, perr := strconv.Atoi(strings.TrimSuffix(line, "\n"))
		switch {
		case perr != nil:
			w.anomalies = append(w.anomalies, fmt.Sprintf("garbled line %q after %d", line, w.last))
		case w.last >= 0 && n != w.last+1:
			w.anomalies = append(w.anomalies, fmt.Sprintf("got %d after %d", n, w.last))
		case w.last < 0 && n != 0:
			w.anomalies = append(w.anomalies, fmt.Sprintf("first line %d, want 0", n))
		}
		if perr == nil {
			w.last = n
		}
		if !w.lastAt.IsZero() {
			gap := now.Sub(w.lastAt)
			if gap > w.maxGap {
				w.maxGap, w.maxGapAt, w.maxGapLine = gap, now, n
			}
			if gap > 100*time.Millisecond {
				w.bigGaps = append(w.bigGaps, fmt.Sprintf("%s before line %d at %s", gap.Round(time.Millisecond), n, now.Format("15:04:05.000")))
				w.gaps = append(w.gaps, gapAt{end: now, d: gap})
			}
		}
		w.lastAt = now
		w.lines++
		w.mu.Unlock()
	}
}

func (w *streamWatch) stop() {
	if w.stopping.CompareAndSwap(false, true) {
		_ = w.conn.Close()
	}
	<-w.done
}

// flowing waits up to d for a line newer than the call.
func (w *streamWatch) flowing(d time.Duration) bool {
	n0, _ := w.snapshot()
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		if n, _ := w.snapshot(); n > n0 {
			return true
		}
		time.Sleep(10 * time.Millisecond)
	}
	return false
}

// guestCrash returns the guest console from its first kernel crash line
// ("Kernel panic", "Oops", "BUG:") on, or "" if there is none.
func (c *cluster) guestCrash(name string) string {
	out, _, _ := c.ferry("vm", "console", name)
	i := -1
	for _, sig := range []string{"BUG:", "Oops", "general protection fault", "Kernel panic"} {
		if j := strings.Index(out, sig); j >= 0 && (i < 0 || j < i) {
			i = j
		}
	}
	if i < 0 {
		return ""
	}
	if j := strings.LastIndexByte(out[:i], '\n'); j >= 0 {
		i = j + 1
	}
	out = out[i:]
	if len(out) > 1500 {
		out = out[:1500] + "..."
	}
	return out
}

// snapshot returns the line count and the time of the last line.
func (w *streamWatch) snapshot() (int, time.Time) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.lines, w.lastAt
}
