package e2e

import (
	"context"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	ferryv1 "github.com/ferryvm/ferry/gen/ferry/v1"
	"github.com/ferryvm/ferry/internal/devcluster"
	"github.com/ferryvm/ferry/internal/etcdembed"
	"google.golang.org/protobuf/encoding/protojson"
)

// haLeaderTTL is the election lease TTL the HA tests give the servers.
const haLeaderTTL = "3s"

// serverStatus runs `ferry server status -o json` through addrs (every
// server address when empty).
func (c *cluster) serverStatus(addrs string) (*ferryv1.ClusterStatus, error) {
	saved := c.server
	if addrs != "" {
		c.server = addrs
	}
	out, errOut, err := c.ferry("server", "status", "-o", "json")
	c.server = saved
	if err != nil {
		return nil, &cliError{err: err, stderr: errOut}
	}
	st := &ferryv1.ClusterStatus{}
	if err := protojson.Unmarshal([]byte(out), st); err != nil {
		return nil, err
	}
	return st, nil
}

type cliError struct {
	err    error
	stderr string
}

func (e *cliError) Error() string { return e.err.Error() + ": " + strings.TrimSpace(e.stderr) }

// waitLeader polls the status until a leader other than not is reported,
// and returns it with the time it took.
func (c *cluster) waitLeader(not string, timeout time.Duration) (*ferryv1.ClusterStatus, time.Duration) {
	c.t.Helper()
	start := time.Now()
	var last *ferryv1.ClusterStatus
	var lastErr error
	for time.Since(start) < timeout {
		last, lastErr = c.serverStatus("")
		if lastErr == nil && last.Leader != "" && last.Leader != not {
			return last, time.Since(start)
		}
		time.Sleep(100 * time.Millisecond)
	}
	c.t.Fatalf("no leader other than %q within %s: last status %v, err %v", not, timeout, last, lastErr)
	return nil, 0
}

// waitReplicas waits for a leader and for the status to list replicas
// registered servers and members etcd members: a replica registers a moment
// after `dev cluster up` returns, so the first status with a leader may not
// list it yet. It returns the last status, whether or not the counts were
// reached, so that the caller's check reports what was seen.
func (c *cluster) waitReplicas(replicas, members int, timeout time.Duration) *ferryv1.ClusterStatus {
	c.t.Helper()
	st, _ := c.waitLeader("", timeout)
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) && (len(st.Replicas) != replicas || len(st.EtcdMembers) != members) {
		time.Sleep(100 * time.Millisecond)
		if next, err := c.serverStatus(""); err == nil && next.Leader != "" {
			st = next
		}
	}
	return st
}

// serverProcess returns the recorded process of replica name.
func (c *cluster) serverProcess(name string) devcluster.Process {
	c.t.Helper()
	return c.process("server", "--name", name)
}

// serverURL returns the API address of replica name from the status.
func serverURL(st *ferryv1.ClusterStatus, name string) string {
	for _, r := range st.Replicas {
		if r.Name == name {
			return r.Url
		}
	}
	return ""
}

// listPoller runs `ferry vm list` through every address, back to back,
// and records each failure and the slowest answer.
type listPoller struct {
	c      *cluster
	cancel context.CancelFunc
	done   chan struct{}

	mu       sync.Mutex
	runs     int
	failures []string
	slowest  time.Duration
}

func (c *cluster) pollList() *listPoller {
	ctx, cancel := context.WithCancel(context.Background())
	p := &listPoller{c: c, cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(p.done)
		for ctx.Err() == nil {
			start := time.Now()
			_, errOut, err := c.ferry("vm", "list")
			d := time.Since(start)
			p.mu.Lock()
			p.runs++
			if err != nil {
				p.failures = append(p.failures, start.Format("15:04:05.000")+": "+strings.TrimSpace(errOut))
			}
			p.slowest = max(p.slowest, d)
			p.mu.Unlock()
			select {
			case <-ctx.Done():
			case <-time.After(200 * time.Millisecond):
			}
		}
	}()
	c.t.Cleanup(p.stop)
	return p
}

func (p *listPoller) stop() {
	p.cancel()
	<-p.done
}

// checkRunsOnceWhereRecorded: the record names one host, the VM runs there
// and not on the other, as the observer samples both QEMUs.
func checkRunsOnceWhereRecorded(t *testing.T, c *cluster, name string, obs *observer) *ferryv1.VM {
	t.Helper()
	vm := c.waitVM(name, 30*time.Second, "running with no migration", func(v *ferryv1.VM) bool {
		return v.State == "running" && v.MigrationId == ""
	})
	s, ok := obs.sampleAfter(time.Now(), 5*time.Second)
	if !ok {
		t.Fatalf("no observer sample after the migration ended")
	}
	idx := map[string]int{"h1": 0, "h2": 1}[vm.Host]
	if !s.running[idx] || s.running[1-idx] {
		t.Errorf("record says %s runs on %s, observer sampled %v: want running there only", name, vm.Host, s)
	}
	return vm
}

// TestHALeaderKilledMidMigration: three servers on a three-member embedded
// etcd; a live migration of a loaded guest is under way when the leading
// server is SIGKILLed. Another replica leads within 10 s, takes the
// migration over from its record (it completes or rolls back), the VM runs
// exactly once on the host its record names, never on both, and `ferry vm
// list` answers through the remaining addresses the whole time.
func TestHALeaderKilledMidMigration(t *testing.T) {
	c := upClusterWith(t, 2, "--servers", "3", "--leader-ttl", haLeaderTTL)
	if n := len(strings.Split(c.server, ",")); n != 3 {
		t.Fatalf("FERRY_SERVER lists %d addresses (%s), want 3", n, c.server)
	}
	st := c.waitReplicas(3, 3, 30*time.Second)
	if len(st.Replicas) != 3 || len(st.EtcdMembers) != 3 {
		t.Fatalf("status: %d replicas, %d etcd members; want 3 and 3: %v", len(st.Replicas), len(st.EtcdMembers), st)
	}
	for _, m := range st.EtcdMembers {
		if !m.Healthy {
			t.Fatalf("etcd member %s unhealthy: %s", m.Name, m.Error)
		}
	}
	old := st.Leader
	t.Logf("leader %s; replicas %d; etcd members %d", old, len(st.Replicas), len(st.EtcdMembers))

	const name, ip = "hakill", "198.19.0.61"
	boot := c.bootGuest(name, ip, "96:0")
	obs := c.startObserver(name)
	t.Cleanup(func() { checkNeverBoth(t, obs) })
	// A guest that converges (96 MiB filled, not dirtied, at 2 MiB/s): the
	// new leader adopts the migration and completes it (or, should it not,
	// rolls it back).
	m := c.startMigration(name, "h2", "--bandwidth", "2")
	c.waitTransferring(m.Id)

	lp := c.pollList()
	c.waitRaftLeaderElsewhere(old)
	victim := c.serverProcess(old)
	if err := syscall.Kill(victim.PID, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	killed := time.Now()
	waitGone(t, victim.PID, 10*time.Second)
	t.Logf("SIGKILLed leader %s (pid %d) mid-transfer", old, victim.PID)

	st, took := c.waitLeader(old, 20*time.Second)
	sinceKill := time.Since(killed)
	t.Logf("MEASURED: new leader %s reported %s after the SIGKILL (status poll took %s)", st.Leader, sinceKill.Round(time.Millisecond), took.Round(time.Millisecond))
	if sinceKill > 10*time.Second {
		t.Errorf("new leader after %s, want within 10s", sinceKill.Round(time.Millisecond))
	}
	unhealthy := 0
	for _, mem := range st.EtcdMembers {
		if !mem.Healthy {
			unhealthy++
		}
	}
	if unhealthy != 1 {
		t.Errorf("etcd members unhealthy after the kill = %d, want 1 (the killed replica's): %v", unhealthy, st.EtcdMembers)
	}

	if at, ok := electedAt(c, st.Leader); ok {
		t.Logf("MEASURED: %s logged its election %s after the SIGKILL", st.Leader, at.Sub(killed).Round(time.Millisecond))
	}
	final, _ := c.waitFinal(m.Id, 2*time.Minute)
	t.Logf("MEASURED: migration %s ended %s %s after the SIGKILL", m.Id, final.Status, time.Since(killed).Round(time.Millisecond))
	lp.stop()
	switch final.Status {
	case "completed":
		vm := checkRunsOnceWhereRecorded(t, c, name, obs)
		if vm.Host != "h2" {
			t.Errorf("completed migration, VM record on %s, want h2", vm.Host)
		}
	case "failed", "cancelled":
		c.checkRolledBack(name, ip, boot, obs)
		checkRunsOnceWhereRecorded(t, c, name, obs)
	default:
		t.Fatalf("migration ended %s", final.Status)
	}
	lp.mu.Lock()
	t.Logf("vm list: %d runs during the failover, %d failures, slowest %s", lp.runs, len(lp.failures), lp.slowest.Round(time.Millisecond))
	if len(lp.failures) > 0 {
		t.Errorf("vm list failed %d times during the failover, first: %s", len(lp.failures), lp.failures[0])
	}
	lp.mu.Unlock()
	// The new leader's log shows it took the migration over.
	b, _ := os.ReadFile(serverLogOf(c, st.Leader))
	if !strings.Contains(string(b), m.Id) {
		t.Errorf("new leader %s's log never mentions migration %s", st.Leader, m.Id)
	}
}

var electedRE = regexp.MustCompile(`time=(\S+) level=INFO msg="elected leader"`)

// electedAt returns when replica name last logged its election.
func electedAt(c *cluster, name string) (time.Time, bool) {
	b, _ := os.ReadFile(serverLogOf(c, name))
	ms := electedRE.FindAllStringSubmatch(string(b), -1)
	if len(ms) == 0 {
		return time.Time{}, false
	}
	at, err := time.Parse(time.RFC3339Nano, ms[len(ms)-1][1])
	return at, err == nil
}

// serverLogOf returns replica name's log path.
func serverLogOf(c *cluster, name string) string {
	return c.serverProcess(name).Log
}

// drivingRE matches the log lines of a replica driving a migration.
var drivingRE = regexp.MustCompile(`msg="(migration step|migration started|recovering migration)".* id=(\S+)`)

// drivenIn returns the ids of the migrations replica name's log shows it
// driving.
func drivenIn(t *testing.T, c *cluster, name string) []string {
	t.Helper()
	b, err := os.ReadFile(serverLogOf(c, name))
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, m := range drivingRE.FindAllStringSubmatch(string(b), -1) {
		if !slices.Contains(ids, m[2]) {
			ids = append(ids, m[2])
		}
	}
	return ids
}

// TestHATwoServersOneEtcd: two servers started on one single-member etcd
// (a standalone etcd run by the test) act as replicas: one leads, a
// migration requested through the follower is forwarded and driven by the
// leader only (one engine, never two — in the status and in the logs), and
// killing the leader hands the engine, and the migration, to the other.
func TestHATwoServersOneEtcd(t *testing.T) {
	e, err := etcdembed.Start(context.Background(), filepath.Join(t.TempDir(), "etcd"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.Close)
	c := upClusterWith(t, 2, "--servers", "2", "--etcd-endpoints", e.Endpoint, "--leader-ttl", haLeaderTTL)
	st := c.waitReplicas(2, 1, 30*time.Second)
	if len(st.Replicas) != 2 || len(st.EtcdMembers) != 1 {
		t.Fatalf("status: %d replicas, %d etcd members; want 2 and 1: %v", len(st.Replicas), len(st.EtcdMembers), st)
	}
	leaders := 0
	var follower string
	for _, r := range st.Replicas {
		switch r.Role {
		case "leader":
			leaders++
		case "follower":
			follower = r.Name
		}
	}
	if leaders != 1 || follower == "" {
		t.Fatalf("status roles: %d leaders, follower %q; want exactly one of each: %v", leaders, follower, st.Replicas)
	}
	lead := st.Leader
	t.Logf("leader %s, follower %s", lead, follower)

	const name, ip = "haone", "198.19.0.62"
	boot := c.bootGuest(name, ip, "96:0")
	obs := c.startObserver(name)
	t.Cleanup(func() { checkNeverBoth(t, obs) })
	// Through the follower's address only: it forwards to the leader.
	all := c.server
	c.server = serverURL(st, follower)
	m := c.startMigration(name, "h2", "--bandwidth", "2")
	c.waitTransferring(m.Id)
	c.server = all
	if ids := drivenIn(t, c, follower); len(ids) > 0 {
		t.Errorf("follower %s logs driving migrations %v while %s leads", follower, ids, lead)
	}
	if ids := drivenIn(t, c, lead); !slices.Contains(ids, m.Id) {
		t.Errorf("leader %s's log does not show it driving %s (it shows %v)", lead, m.Id, ids)
	}
	for _, n := range []string{lead, follower} {
		b, _ := os.ReadFile(serverLogOf(c, n))
		engines := strings.Count(string(b), `msg="leading: starting the engine"`)
		if want := map[bool]int{true: 1, false: 0}[n == lead]; engines != want {
			t.Errorf("replica %s started the engine %d times, want %d", n, engines, want)
		}
	}

	victim := c.serverProcess(lead)
	if err := syscall.Kill(victim.PID, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	killed := time.Now()
	waitGone(t, victim.PID, 10*time.Second)
	st, _ = c.waitLeader(lead, 20*time.Second)
	t.Logf("MEASURED: %s leads %s after the SIGKILL of %s", st.Leader, time.Since(killed).Round(time.Millisecond), lead)
	if at, ok := electedAt(c, st.Leader); ok {
		t.Logf("MEASURED: %s logged its election %s after the SIGKILL", st.Leader, at.Sub(killed).Round(time.Millisecond))
	}
	if st.Leader != follower {
		t.Fatalf("new leader %s, want the follower %s", st.Leader, follower)
	}
	final, _ := c.waitFinal(m.Id, 2*time.Minute)
	t.Logf("MEASURED: migration %s ended %s %s after the SIGKILL", m.Id, final.Status, time.Since(killed).Round(time.Millisecond))
	if ids := drivenIn(t, c, follower); !slices.Contains(ids, m.Id) {
		t.Errorf("the new leader %s never drove %s (log shows %v)", follower, m.Id, ids)
	}
	switch final.Status {
	case "completed":
		checkRunsOnceWhereRecorded(t, c, name, obs)
	default:
		c.checkRolledBack(name, ip, boot, obs)
		checkRunsOnceWhereRecorded(t, c, name, obs)
	}
	// The engine now runs on the new leader: a new migration completes.
	done, _ := c.mustMigrateWait(name, map[string]string{"h1": "h2", "h2": "h1"}[c.checkOnHostAny(name)])
	if done.Status != "completed" {
		t.Errorf("migration after the hand-over: %s (%s)", done.Status, done.Error)
	}
}

// checkOnHostAny returns the host the VM's record names.
func (c *cluster) checkOnHostAny(name string) string {
	c.t.Helper()
	vm, err := c.getVM(name)
	if err != nil {
		c.t.Fatal(err)
	}
	return vm.Host
}

// haWaitFailpoint waits until the failpoint log names point.
func haWaitFailpoint(t *testing.T, log, point string, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if b, err := os.ReadFile(log); err == nil && strings.Contains(string(b), point) {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("failpoint %s did not fire within %s (log %s)", point, timeout, log)
}

// TestHALeaderKilledAfterOwnerSwitch: three servers on a three-member
// embedded etcd; the leader is SIGKILLed right after the owner CAS of a live
// migration (held there by a failpoint). Another replica leads, finds the
// owner already moved in the record and drives the migration forward: it
// completes, the VM runs exactly once on h2 with the same boot, never on
// both, and the client's TCP stream to the guest survives.
func TestHALeaderKilledAfterOwnerSwitch(t *testing.T) {
	fpLog := filepath.Join(t.TempDir(), "failpoints.log")
	c := upClusterEnv(t, 2, []string{"FERRY_FAILPOINTS=engine/after-owner-cas=sleep(60s)*1", "FERRY_FAILPOINTS_LOG=" + fpLog},
		"--servers", "3", "--leader-ttl", haLeaderTTL)
	st, _ := c.waitLeader("", 30*time.Second)
	old := st.Leader
	const name, ip = "haswitch", "198.19.0.63"
	boot := c.bootGuest(name, ip, "64:16")
	obs := c.startObserver(name)
	t.Cleanup(func() { checkNeverBoth(t, obs) })
	stream := c.watchStream(ip)
	c.waitRaftLeaderElsewhere(old)
	m := c.startMigration(name, "h2")
	haWaitFailpoint(t, fpLog, "engine/after-owner-cas", 90*time.Second)
	victim := c.serverProcess(old)
	if err := syscall.Kill(victim.PID, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	killed := time.Now()
	waitGone(t, victim.PID, 10*time.Second)
	t.Logf("SIGKILLed leader %s (pid %d) right after the owner CAS", old, victim.PID)
	st, _ = c.waitLeader(old, 20*time.Second)
	if at, ok := electedAt(c, st.Leader); ok {
		t.Logf("MEASURED: %s logged its election %s after the SIGKILL", st.Leader, at.Sub(killed).Round(time.Millisecond))
		if at.Sub(killed) > 10*time.Second {
			t.Errorf("new leader after %s, want within 10s", at.Sub(killed).Round(time.Millisecond))
		}
	}
	final, _ := c.waitFinal(m.Id, 2*time.Minute)
	t.Logf("MEASURED: migration %s ended %s %s after the SIGKILL", m.Id, final.Status, time.Since(killed).Round(time.Millisecond))
	if final.Status != "completed" {
		t.Fatalf("migration past the owner switch ended %s (%s), want completed", final.Status, final.Error)
	}
	vm := checkRunsOnceWhereRecorded(t, c, name, obs)
	if vm.Host != "h2" {
		t.Errorf("VM record on %s, want h2", vm.Host)
	}
	if got := c.bootID(ip, 30*time.Second); got != boot {
		t.Errorf("boot_id = %s, want %s (the guest rebooted)", got, boot)
	}
	c.waitNoLeftovers("h1", name, 30*time.Second)
	time.Sleep(time.Second)
	stream.stop()
	stream.mu.Lock()
	defer stream.mu.Unlock()
	t.Logf("stream: %d lines, longest gap %s", stream.lines, stream.maxGap.Round(time.Millisecond))
	if stream.readErr != nil {
		t.Errorf("the client's TCP connection broke: %v", stream.readErr)
	}
	if len(stream.anomalies) > 0 {
		t.Errorf("the stream lost or repeated counters: %v", first(stream.anomalies, 10))
	}
}

// TestHAFrozenLeaderIsDeposed: the leader is frozen (SIGSTOP) longer than
// its lease; another replica is elected. Once thawed, the old leader learns
// it lost the term — its log says so and its engine stopped — and it serves
// as a follower: the status lists exactly one leader, the new one.
func TestHAFrozenLeaderIsDeposed(t *testing.T) {
	c := upClusterWith(t, 1, "--servers", "3", "--leader-ttl", haLeaderTTL)
	st, _ := c.waitLeader("", 30*time.Second)
	old := st.Leader
	var others []string
	for _, r := range st.Replicas {
		if r.Name != old {
			others = append(others, r.Url)
		}
	}
	victim := c.serverProcess(old)
	if err := syscall.Kill(victim.PID, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	frozen := time.Now()
	thawed := false
	thaw := func() {
		if !thawed {
			thawed = true
			_ = syscall.Kill(victim.PID, syscall.SIGCONT)
		}
	}
	t.Cleanup(thaw)
	// A frozen server accepts connections but never answers: ask the others.
	var nst *ferryv1.ClusterStatus
	deadline := time.Now().Add(20 * time.Second)
	for {
		s, err := c.serverStatus(strings.Join(others, ","))
		if err == nil && s.Leader != "" && s.Leader != old {
			nst = s
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no new leader 20s after freezing %s: %v %v", old, s, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Logf("MEASURED: %s leads %s after %s was frozen", nst.Leader, time.Since(frozen).Round(time.Millisecond), old)
	time.Sleep(time.Second)
	thaw()
	deadline = time.Now().Add(15 * time.Second)
	for {
		b, _ := os.ReadFile(serverLogOf(c, old))
		if strings.Contains(string(b), `msg="leadership ended: writes fenced off, engine cancelled"`) &&
			strings.Contains(string(b), `msg="engine stopped"`) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("thawed %s never logged the end of its term:\n%s", old, b)
		}
		time.Sleep(100 * time.Millisecond)
	}
	deadline = time.Now().Add(15 * time.Second)
	for {
		s, err := c.serverStatus(c.serverURLOf(old))
		if err == nil {
			leaders, oldRole := 0, ""
			for _, r := range s.Replicas {
				if r.Role == "leader" {
					leaders++
				}
				if r.Name == old {
					oldRole = r.Role
				}
			}
			if s.Leader == nst.Leader && leaders == 1 && oldRole == "follower" {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("after the thaw, status through %s = %v, %v; want leader %s, %s a follower", old, s, err, nst.Leader, old)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// waitRaftLeaderElsewhere waits until etcd's raft leader is a member other
// than the leading replica's own (the replica moves it away, so that its
// death costs no raft election on top of the lease).
func (c *cluster) waitRaftLeaderElsewhere(replica string) {
	c.t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		st, err := c.serverStatus("")
		if err == nil {
			for _, m := range st.EtcdMembers {
				if m.IsLeader && m.Name != replica {
					c.t.Logf("etcd raft leader %s, Ferry leader %s", m.Name, replica)
					return
				}
			}
		}
		if time.Now().After(deadline) {
			c.t.Fatalf("etcd raft leadership still on the leading replica %s after 15s: %v %v", replica, st, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// serverURLOf returns replica name's API address from its process.
func (c *cluster) serverURLOf(name string) string {
	c.t.Helper()
	p := c.serverProcess(name)
	i := slices.Index(p.Argv, "--listen")
	if i < 0 || i+1 >= len(p.Argv) {
		c.t.Fatalf("replica %s has no --listen: %v", name, p.Argv)
	}
	return p.Argv[i+1]
}
