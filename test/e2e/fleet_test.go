package e2e

// Fleet operations on real agents and QEMU: maintenance mode drains a
// host with bounded parallelism and every guest alive; a degraded health
// check evacuates its host with no command; an unreachable host's VMs are
// left alone (they may still run: no split brain).

import (
	"fmt"
	"os"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	ferryv1 "github.com/ferryvm/ferry/gen/ferry/v1"
)

// createOn creates a small guest pinned to host (no wait).
func (c *cluster) createOn(name, ip, host string) {
	c.t.Helper()
	c.mustFerry("vm", "create", "-f", c.writeSpec(name, ip, ""), "--host", host)
}

// waitBoot waits until the VM runs on host and its guest answers, and
// returns its boot_id.
func (c *cluster) waitBoot(name, ip, host string) string {
	c.t.Helper()
	vm := c.waitVM(name, 90*time.Second, "running", func(v *ferryv1.VM) bool { return v.State == "running" })
	if vm.Host != host {
		c.t.Fatalf("VM %s on %s, want %s", name, vm.Host, host)
	}
	return c.bootID(ip, 90*time.Second)
}

// evacuation returns the host's evacuation record (nil, err if none).
func (c *cluster) evacuation(host string) (*ferryv1.Evacuation, error) {
	out, errOut, err := c.ferry("host", "maintenance", "status", host, "-o", "json")
	if err != nil {
		return nil, fmt.Errorf("%v: %s", err, errOut)
	}
	e := &ferryv1.Evacuation{}
	if err := jsonIn.Unmarshal([]byte(out), e); err != nil {
		return nil, fmt.Errorf("decode evacuation: %w\n%s", err, out)
	}
	return e, nil
}

// hostRecord returns the host from `ferry host get`.
func (c *cluster) hostRecord(name string) *ferryv1.Host {
	c.t.Helper()
	h := &ferryv1.Host{}
	if err := jsonIn.Unmarshal([]byte(c.mustFerry("host", "get", name)), h); err != nil {
		c.t.Fatal(err)
	}
	return h
}

// inFlightWatch samples the migrations in flight every 200 ms.
type inFlightWatch struct {
	stopc chan struct{}
	done  chan struct{}
	mu    sync.Mutex
	max   int
	seen  map[string]bool
}

func (c *cluster) watchInFlight() *inFlightWatch {
	w := &inFlightWatch{stopc: make(chan struct{}), done: make(chan struct{}), seen: map[string]bool{}}
	go func() {
		defer close(w.done)
		for {
			out, _, err := c.ferry("migration", "list", "-o", "json")
			if err == nil {
				resp := &ferryv1.ListMigrationsResponse{}
				if jsonIn.Unmarshal([]byte(out), resp) == nil {
					n := 0
					w.mu.Lock()
					for _, m := range resp.Migrations {
						w.seen[m.Id] = true
						if m.Status == "running" {
							n++
						}
					}
					w.max = max(w.max, n)
					w.mu.Unlock()
				}
			}
			select {
			case <-w.stopc:
				return
			case <-time.After(200 * time.Millisecond):
			}
		}
	}()
	return w
}

func (w *inFlightWatch) stop() (int, int) {
	close(w.stopc)
	<-w.done
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.max, len(w.seen)
}

func TestFleetMaintenanceDrainsHost(t *testing.T) {
	c := upCluster(t, 3)
	names := []string{"fm1", "fm2", "fm3", "fm4"}
	ips := map[string]string{"fm1": "198.19.0.101", "fm2": "198.19.0.102", "fm3": "198.19.0.103", "fm4": "198.19.0.104"}
	for _, n := range names {
		c.createOn(n, ips[n], "h1")
	}
	boots := map[string]string{}
	for _, n := range names {
		boots[n] = c.waitBoot(n, ips[n], "h1")
	}
	streams := []*streamWatch{c.watchStream(ips["fm1"]), c.watchStream(ips["fm2"])}
	for _, s := range streams {
		if !s.flowing(5 * time.Second) {
			t.Fatal("a guest's counter stream does not flow")
		}
	}

	plan := c.mustFerry("host", "maintenance", "enter", "h1", "--dry-run")
	t.Logf("dry run:\n%s", plan)
	if !strings.Contains(plan, "drain h1: 4 moves, 0 unplaced, parallel 2") || !strings.Contains(plan, "eta ") {
		t.Fatalf("dry-run plan does not move 4 VMs with parallel 2 and an ETA:\n%s", plan)
	}
	if _, err := c.evacuation("h1"); err == nil {
		t.Fatal("the dry run left an evacuation record")
	}
	if c.hostRecord("h1").Maintenance {
		t.Fatal("the dry run put h1 in maintenance")
	}

	w := c.watchInFlight()
	start := time.Now()
	out, errOut, err := c.ferry("host", "maintenance", "enter", "h1", "-o", "json", "--timeout", "4m")
	took := time.Since(start)
	maxInFlight, migrations := w.stop()
	if err != nil {
		t.Fatalf("maintenance enter: %v\n%s%s", err, out, errOut)
	}
	e := &ferryv1.Evacuation{}
	if err := jsonIn.Unmarshal([]byte(out), e); err != nil {
		t.Fatalf("decode: %v\n%s", err, out)
	}
	t.Logf("evacuation %s in %s (command %s): predicted %d ms, measured %d ms, max in flight %d (record) %d (sampled), %d migrations; %s",
		e.State, time.Duration(e.MeasuredMs)*time.Millisecond, took.Round(time.Millisecond), e.PredictedEtaMs, e.MeasuredMs, e.MaxInFlight, maxInFlight, migrations, e.Message)
	if e.State != "completed" || len(e.Items) != 4 {
		t.Fatalf("evacuation %s with %d items: %s", e.State, len(e.Items), e.Message)
	}
	for _, it := range e.Items {
		t.Logf("  %s -> %s %s: measured %d ms, predicted %d ms, attempts %d", it.Vm, it.To, it.Strategy, it.MeasuredMs, it.PredictedMs, it.Attempts)
		if it.Status != "completed" || it.To == "h1" || it.To == "" || it.MeasuredMs <= 0 || it.PredictedMs <= 0 {
			t.Errorf("item %v", it)
		}
	}
	if e.MaxInFlight > 2 || maxInFlight > 2 || maxInFlight < 1 {
		t.Errorf("in flight: record %d, sampled %d; want at most 2 (and some)", e.MaxInFlight, maxInFlight)
	}
	if e.PredictedEtaMs <= 0 || e.MeasuredMs <= 0 {
		t.Errorf("ETA predicted %d ms, measured %d ms", e.PredictedEtaMs, e.MeasuredMs)
	}

	// h1 is empty and marked; every guest kept running (same boot).
	for _, n := range names {
		vm := c.waitVM(n, 15*time.Second, "running off h1", func(v *ferryv1.VM) bool { return v.State == "running" && v.MigrationId == "" })
		if vm.Host == "h1" {
			t.Errorf("%s still on h1", n)
		}
		if got := c.bootID(ips[n], 30*time.Second); got != boots[n] {
			t.Errorf("%s: boot_id %s, want %s (the guest rebooted)", n, got, boots[n])
		}
	}
	if p := qemuPIDs(t, c.hostNS("h1")); len(p) > 0 {
		t.Errorf("QEMU still running on h1: %v", p)
	}
	if h := c.hostRecord("h1"); !h.Maintenance {
		t.Error("h1 is not marked in maintenance")
	}
	for _, s := range streams {
		c.checkStreamUnbroken("fm1", s)
	}
	// Unschedulable: a VM pinned there is refused.
	if _, errOut, err := c.ferry("vm", "create", "-f", c.writeSpec("fm5", "198.19.0.105", ""), "--host", "h1"); err == nil || !strings.Contains(errOut, "maintenance") {
		t.Errorf("create on h1 in maintenance: err %v, %s", err, errOut)
	}
	c.mustFerry("host", "maintenance", "exit", "h1")
	if h := c.hostRecord("h1"); h.Maintenance {
		t.Error("h1 still in maintenance after exit")
	}
	manualWithinPolicy(t, c, names)
}

// manualWithinPolicy: a manual ferry migrate counts against the policy's
// limits and gets its share of bandwidthPerHost. With one migration per
// source and 16 MiB/s per host, a second migration out of the same host
// is refused naming the limit and how to wait or override, and with
// --wait-limits it starts once the first has ended.
func manualWithinPolicy(t *testing.T, c *cluster, names []string) {
	pol := c.dir + "/limits.json"
	if err := os.WriteFile(pol, []byte(`{"cluster": {"maxParallelPerSource": 1, "bandwidthPerHost": 16777216}}`), 0o644); err != nil {
		t.Fatal(err)
	}
	c.mustFerry("policy", "set", "-f", pol)
	on := map[string][]string{}
	for _, n := range names {
		vm, err := c.getVM(n)
		if err != nil {
			t.Fatal(err)
		}
		on[vm.Host] = append(on[vm.Host], n)
	}
	var pair []string
	for _, vms := range on {
		if len(vms) >= 2 {
			pair = vms[:2]
		}
	}
	if pair == nil {
		t.Fatalf("no host holds two of the VMs: %v", on)
	}
	first := c.startMigration(pair[0], "h1", "--strategy", "precopy")
	m := c.waitMigration(first.Id, 30*time.Second, "a bandwidth share", func(m *ferryv1.Migration) bool { return m.BandwidthShareBytes > 0 || m.Status != "running" })
	if m.Status == "running" && m.BandwidthShareBytes != 16<<20 {
		t.Errorf("%s alone on its hosts has a share of %d B/s, want all of bandwidthPerHost (16 MiB/s)", m.Id, m.BandwidthShareBytes)
	}
	if m.Status != "running" {
		t.Fatalf("%s ended (%s) before the second start: it should take seconds at 16 MiB/s", m.Id, m.Status)
	}
	_, errOut, err := c.ferry("migrate", pair[1], "--to", "h1", "--strategy", "precopy")
	for _, want := range []string{"migration limit reached", "maxParallelPerSource = 1", first.Id, "--wait-limits", "--ignore-limits"} {
		if err == nil || !strings.Contains(errOut, want) {
			t.Errorf("second migration out of the same host: err %v, stderr %q; want a refusal saying %q", err, errOut, want)
		}
	}
	began := time.Now()
	out, errOut, err := c.ferry("migrate", pair[1], "--to", "h1", "--strategy", "precopy", "--wait-limits", "90s", "--wait", "-o", "json")
	if err != nil {
		t.Fatalf("migrate --wait-limits: %v\n%s%s", err, out, errOut)
	}
	second, err := parseMigration(out)
	if err != nil {
		t.Fatal(err)
	}
	done, err := c.getMigration(first.Id)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("first %s %s in %d ms (share 16 MiB/s); second waited %s for the slot (%q), %s", done.Id, done.Status, done.TotalMs,
		second.StartedAt.AsTime().Sub(began).Round(time.Millisecond), strings.TrimSpace(errOut), second.Status)
	if done.Status != "completed" || second.Status != "completed" || second.StartedAt.AsTime().Before(done.FinishedAt.AsTime()) {
		t.Errorf("first %s (finished %v), second %s (started %v): want both completed, the second started after the first ended",
			done.Status, done.FinishedAt.AsTime(), second.Status, second.StartedAt.AsTime())
	}
	if !strings.Contains(errOut, "waiting up to 1m30s for a migration slot") {
		t.Errorf("--wait-limits did not say it waits: %q", errOut)
	}
}

func TestFleetHealthDrivenEvacuation(t *testing.T) {
	c := upCluster(t, 3)
	c.createOn("fh1", "198.19.0.111", "h2")
	c.createOn("fh2", "198.19.0.112", "h3")
	boot1 := c.waitBoot("fh1", "198.19.0.111", "h2")
	boot2 := c.waitBoot("fh2", "198.19.0.112", "h3")

	// A degraded health check on h2 evacuates it with no command.
	start := time.Now()
	if err := os.WriteFile(c.c.HealthMarker("h2"), []byte("disk errors\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	var e *ferryv1.Evacuation
	deadline := time.Now().Add(2 * time.Minute)
	for {
		var err error
		e, err = c.evacuation("h2")
		if err == nil && (e.State == "completed" || e.State == "incomplete") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("h2 not evacuated within 2m of its marker: %v %v", e, err)
		}
		time.Sleep(500 * time.Millisecond)
	}
	t.Logf("degraded h2 evacuated in %s from the marker: %s (%s)", time.Since(start).Round(time.Millisecond), e.State, e.Message)
	if e.Reason != "degraded" || e.State != "completed" {
		t.Fatalf("evacuation reason %s state %s: %s", e.Reason, e.State, e.Message)
	}
	vm := c.waitVM("fh1", 15*time.Second, "running", func(v *ferryv1.VM) bool { return v.State == "running" && v.MigrationId == "" })
	if vm.Host == "h2" {
		t.Fatal("fh1 still on h2")
	}
	if got := c.bootID("198.19.0.111", 30*time.Second); got != boot1 {
		t.Errorf("fh1 boot_id %s, want %s", got, boot1)
	}
	if h := c.hostRecord("h2"); h.Health != "degraded" || !h.Maintenance {
		t.Errorf("h2: health %q maintenance %v", h.Health, h.Maintenance)
	}

	// h3's agent dies: h3 is unreachable, its VM may still run there, so
	// nothing touches it.
	agent := c.process("agent", "h3")
	pids := qemuPIDs(t, c.hostNS("h3"))
	if len(pids) != 1 {
		t.Fatalf("QEMUs on h3: %v", pids)
	}
	c.killProcess(agent, "h3 agent")
	deadline = time.Now().Add(40 * time.Second)
	for c.hostRecord("h3").State != "unreachable" {
		if time.Now().After(deadline) {
			t.Fatal("h3 not unreachable 40s after its agent died")
		}
		time.Sleep(500 * time.Millisecond)
	}
	time.Sleep(5 * time.Second) // a few passes of the leader's loops
	if e, err := c.evacuation("h3"); err == nil {
		t.Errorf("unreachable h3 got an evacuation: %v", e)
	}
	vm2, err := c.getVM("fh2")
	if err != nil {
		t.Fatal(err)
	}
	if vm2.Host != "h3" || vm2.MigrationId != "" {
		t.Errorf("fh2 of unreachable h3 was touched: host %s migration %q state %s", vm2.Host, vm2.MigrationId, vm2.State)
	}
	if !alive(pids[0]) {
		t.Error("fh2's QEMU on h3 is gone")
	}
	if got := c.bootID("198.19.0.112", 20*time.Second); got != boot2 {
		t.Errorf("fh2 boot_id %s, want %s", got, boot2)
	}
	out := c.mustFerry("migration", "list", "-o", "json")
	if strings.Contains(out, `"vm": "fh2"`) || strings.Contains(out, `"vm":"fh2"`) {
		t.Errorf("a migration of fh2 was started: %s", out)
	}
	// Its agent is back: the VM is reported running where it was.
	c.startProcessEnv(agent, "h3 agent")
	c.waitVM("fh2", 30*time.Second, "running on h3", func(v *ferryv1.VM) bool { return v.Host == "h3" && v.State == "running" })
	if got := c.bootID("198.19.0.112", 20*time.Second); got != boot2 {
		t.Errorf("fh2 boot_id %s after the agent came back, want %s", got, boot2)
	}
}

func TestFleetEvacuationRetriesElsewhere(t *testing.T) {
	c := upCluster(t, 3)
	// 24 MiB/s per migration: long enough to kill a destination
	// mid-transfer; pre-copy only, so the failed attempt rolls back (a
	// post-copy past its switchover must wait for its destination).
	pol := c.dir + "/policies.json"
	if err := os.WriteFile(pol, []byte(`{"cluster": {"bandwidthPerMigration": 25165824, "allowedStrategies": ["precopy", "converge"]}}`), 0o644); err != nil {
		t.Fatal(err)
	}
	c.mustFerry("policy", "set", "-f", pol)
	ips := map[string]string{"fr1": "198.19.0.121", "fr2": "198.19.0.122"}
	for _, n := range []string{"fr1", "fr2"} {
		c.createOn(n, ips[n], "h1")
	}
	boots := map[string]string{}
	for _, n := range []string{"fr1", "fr2"} {
		boots[n] = c.waitBoot(n, ips[n], "h1")
	}
	out := c.mustFerry("host", "maintenance", "enter", "h1", "--detach")
	t.Logf("started:\n%s", out)
	// Wait until the VM going to h2 is transferring, then kill h2's agent.
	var victim string
	deadline := time.Now().Add(60 * time.Second)
	for victim == "" {
		e, err := c.evacuation("h1")
		if err == nil {
			for _, it := range e.Items {
				if it.To == "h2" && it.Status == "migrating" && it.Progress > 0.05 {
					victim = it.Vm
				}
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no VM transferring to h2 within 60s: %v %v", e, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
	// h2 dies: its agent and the incoming QEMU. (The agent alone is not
	// enough: the destination is armed at the start, so the transfer and
	// the owner switch go on without it and the engine waits in resuming
	// for the agent to come back, the VM running on h2.)
	incoming := qemuPIDs(t, c.hostNS("h2"))
	agent := c.process("agent", "h2")
	c.killProcess(agent, "h2 agent (destination of "+victim+")")
	for _, pid := range incoming {
		if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		waitGone(t, pid, 10*time.Second)
	}
	t.Logf("killed the incoming QEMU(s) %v on h2", incoming)
	var e *ferryv1.Evacuation
	deadline = time.Now().Add(3 * time.Minute)
	for {
		var err error
		e, err = c.evacuation("h1")
		if err == nil && (e.State == "completed" || e.State == "incomplete") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("evacuation not ended within 3m: %v %v", e, err)
		}
		time.Sleep(500 * time.Millisecond)
	}
	t.Logf("evacuation %s: predicted %d ms, measured %d ms: %s", e.State, e.PredictedEtaMs, e.MeasuredMs, e.Message)
	if e.State != "completed" {
		t.Fatalf("evacuation %s: %s", e.State, e.Message)
	}
	for _, it := range e.Items {
		t.Logf("  %s -> %s: attempts %d, failures %v", it.Vm, it.To, it.Attempts, it.Failures)
		if it.Vm == victim && (it.To != "h3" || it.Attempts != 2 || len(it.Failures) != 1 || !strings.Contains(it.Failures[0], "h2")) {
			t.Errorf("%s was not retried on h3 after h2 failed: %v", victim, it)
		}
	}
	for n, ip := range ips {
		vm := c.waitVM(n, 15*time.Second, "running", func(v *ferryv1.VM) bool { return v.State == "running" && v.MigrationId == "" })
		if vm.Host != "h3" {
			t.Errorf("%s on %s, want h3", n, vm.Host)
		}
		if got := c.bootID(ip, 30*time.Second); got != boots[n] {
			t.Errorf("%s boot_id %s, want %s", n, got, boots[n])
		}
	}
	// h2's agent back: nothing of the failed attempt is left there.
	c.startProcessEnv(agent, "h2 agent")
	c.waitNoLeftovers("h2", victim, 60*time.Second)
}

// migrationsByVM lists the migrations per VM from `ferry migration list`.
func (c *cluster) migrationsByVM() (map[string]int, int) {
	c.t.Helper()
	resp := &ferryv1.ListMigrationsResponse{}
	if err := jsonIn.Unmarshal([]byte(c.mustFerry("migration", "list", "-o", "json")), resp); err != nil {
		c.t.Fatal(err)
	}
	out, running := map[string]int{}, 0
	for _, m := range resp.Migrations {
		out[m.Vm]++
		if m.Status == "running" {
			running++
		}
	}
	return out, running
}

func TestFleetBalancerSpreadsThenStops(t *testing.T) {
	c := upCluster(t, 3)
	pol := c.dir + "/policies.json"
	setPolicy := func(mode string) {
		// Small guests on a 24-GiB machine: a low threshold and gain per
		// cost so their RSS and CPU count; 5 s period, 10 s window.
		js := fmt.Sprintf(`{"cluster": {"balancer": {"mode": %q, "threshold": 0.01, "hysteresis": 0.005, "period": 5000000000, "window": 10000000000, "cooldown": 600000000000, "minGainPerCost": 1e-9}}}`, mode)
		if err := os.WriteFile(pol, []byte(js), 0o644); err != nil {
			t.Fatal(err)
		}
		c.mustFerry("policy", "set", "-f", pol)
	}
	setPolicy("off")
	names := []string{"fb1", "fb2", "fb3", "fb4"}
	ips := map[string]string{"fb1": "198.19.0.131", "fb2": "198.19.0.132", "fb3": "198.19.0.133", "fb4": "198.19.0.134"}
	for _, n := range names {
		c.createOn(n, ips[n], "h1")
	}
	boots := map[string]string{}
	for _, n := range names {
		boots[n] = c.waitBoot(n, ips[n], "h1")
	}
	t.Logf("dry run:\n%s", c.mustFerry("balance", "--dry-run"))
	if by, _ := c.migrationsByVM(); len(by) != 0 {
		t.Fatalf("migrations before auto: %v", by)
	}
	start := time.Now()
	setPolicy("auto")
	perHost := func() map[string]int {
		out := map[string]int{}
		for _, n := range names {
			vm, err := c.getVM(n)
			if err != nil {
				t.Fatal(err)
			}
			out[vm.Host]++
		}
		return out
	}
	// It spreads, then rests: the same migrations for three periods.
	var spread map[string]int
	var by map[string]int
	total := func(m map[string]int) int {
		n := 0
		for _, k := range m {
			n += k
		}
		return n
	}
	last, lastChange := -1, time.Now()
	deadline := time.Now().Add(2 * time.Minute)
	for {
		spread = perHost()
		var running int
		by, running = c.migrationsByVM()
		if n := total(by); n != last || running > 0 {
			last, lastChange = n, time.Now()
		}
		if time.Since(lastChange) > 16*time.Second && spread["h1"] <= 2 && spread["h2"] >= 1 && spread["h3"] >= 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("load did not spread and rest within 2m: %v, migrations %v\n%s", spread, by, c.mustFerry("balance", "recommendations"))
		}
		time.Sleep(time.Second)
	}
	t.Logf("spread %v, at rest %s after auto with %d migrations %v", spread, time.Since(start).Round(time.Millisecond), total(by), by)
	t.Logf("recommendations at rest:\n%s", c.mustFerry("balance", "recommendations"))
	for vm, k := range by {
		if k > 1 {
			t.Errorf("%s migrated %d times within the cooldown", vm, k)
		}
	}
	if total(by) < 2 {
		t.Errorf("%d migrations spread 4 VMs over 3 hosts?", total(by))
	}
	for _, nm := range names {
		if got := c.bootID(ips[nm], 30*time.Second); got != boots[nm] {
			t.Errorf("%s boot_id %s, want %s", nm, got, boots[nm])
		}
	}
}

func TestFleetEvacuationSurvivesServerRestart(t *testing.T) {
	c := upCluster(t, 3)
	pol := c.dir + "/policies.json"
	if err := os.WriteFile(pol, []byte(`{"cluster": {"bandwidthPerMigration": 25165824, "allowedStrategies": ["precopy", "converge"]}}`), 0o644); err != nil {
		t.Fatal(err)
	}
	c.mustFerry("policy", "set", "-f", pol)
	ips := map[string]string{"fs1": "198.19.0.141", "fs2": "198.19.0.142"}
	for _, n := range []string{"fs1", "fs2"} {
		c.createOn(n, ips[n], "h1")
	}
	boots := map[string]string{}
	for _, n := range []string{"fs1", "fs2"} {
		boots[n] = c.waitBoot(n, ips[n], "h1")
	}
	c.mustFerry("host", "maintenance", "enter", "h1", "--detach")
	deadline := time.Now().Add(60 * time.Second)
	for {
		e, err := c.evacuation("h1")
		if err == nil && len(e.Items) > 0 && e.Items[0].Status == "migrating" && e.Items[0].Progress > 0.05 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no migration under way within 60s: %v %v", e, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
	p := c.process("server")
	c.killProcess(p, "server")
	c.startProcessEnv(p, "server")
	var e *ferryv1.Evacuation
	deadline = time.Now().Add(3 * time.Minute)
	for {
		var err error
		e, err = c.evacuation("h1")
		if err == nil && (e.State == "completed" || e.State == "incomplete") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("evacuation not ended within 3m of the restart: %v %v", e, err)
		}
		time.Sleep(500 * time.Millisecond)
	}
	t.Logf("after the server restart: %s, predicted %d ms, measured %d ms, max in flight %d: %s", e.State, e.PredictedEtaMs, e.MeasuredMs, e.MaxInFlight, e.Message)
	for _, it := range e.Items {
		t.Logf("  %s -> %s: attempts %d, failures %v, avoid %v", it.Vm, it.To, it.Attempts, it.Failures, it.Avoid)
		// A rollback by the restart is not its destination's fault.
		for _, f := range it.Failures {
			if strings.Contains(f, "control plane restarted") && len(it.Avoid) > 0 {
				t.Errorf("%s avoids %v after a failure the restart caused (%s)", it.Vm, it.Avoid, f)
			}
		}
	}
	if e.State != "completed" || e.MaxInFlight > 2 {
		t.Fatalf("evacuation %s (max in flight %d): %s", e.State, e.MaxInFlight, e.Message)
	}
	for n, ip := range ips {
		vm := c.waitVM(n, 15*time.Second, "running", func(v *ferryv1.VM) bool { return v.State == "running" && v.MigrationId == "" })
		if vm.Host == "h1" {
			t.Errorf("%s still on h1", n)
		}
		if got := c.bootID(ip, 30*time.Second); got != boots[n] {
			t.Errorf("%s boot_id %s, want %s", n, got, boots[n])
		}
	}
	if p := qemuPIDs(t, c.hostNS("h1")); len(p) > 0 {
		t.Errorf("QEMU still on h1: %v", p)
	}
}
