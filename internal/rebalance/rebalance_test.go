package rebalance

import (
	"context"
	"fmt"
	"testing"
	"time"

	ferryv1 "github.com/ferryvm/ferry/gen/ferry/v1"
	"github.com/ferryvm/ferry/internal/balance"
	"github.com/ferryvm/ferry/internal/placement"
	"github.com/ferryvm/ferry/internal/policy"
)

func TestSamplerUseOverTheWindow(t *testing.T) {
	s := NewSampler()
	t0 := time.Unix(1000, 0)
	for i := 0; i <= 10; i++ {
		s.Observe([]*ferryv1.VMStatus{{Name: "a", State: "running", Pid: 7, CpuSeconds: float64(i) * 0.5, RssBytes: 100 << 20}}, t0.Add(time.Duration(i)*time.Second), time.Minute)
	}
	cpu, rss, ok := s.Use("a", t0.Add(10*time.Second), time.Minute)
	if !ok || cpu != 0.5 || rss != 100 {
		t.Fatalf("use = %v cores, %v MiB, %v; want 0.5, 100", cpu, rss, ok)
	}
	// A new QEMU (a migration) restarts the CPU count: no negative use.
	s.Observe([]*ferryv1.VMStatus{{Name: "a", State: "running", Pid: 8, CpuSeconds: 0.1, RssBytes: 100 << 20}}, t0.Add(11*time.Second), time.Minute)
	if _, _, ok := s.Use("a", t0.Add(11*time.Second), time.Minute); ok {
		t.Fatal("one sample of the new QEMU gave a figure")
	}
	if _, _, ok := s.Use("nobody", t0, time.Minute); ok {
		t.Fatal("an unknown VM has a figure")
	}
}

type fakeBW struct{}

func (fakeBW) Estimate(string, string) (float64, bool) { return 1 << 30, true }

// fakeCluster is three hosts with every VM on h1, each using 0.5 core.
type fakeCluster struct {
	vmHost  map[string]string
	policy  policy.Set
	started []string
}

func (c *fakeCluster) Inputs(context.Context) (balance.Inputs, []balance.VM, map[string]int, error) {
	in := balance.Inputs{Policies: c.policy, Bandwidth: fakeBW{}}
	for _, h := range []string{"h1", "h2", "h3"} {
		ph := placement.Host{Name: h, Ready: true, CPUs: 2, MemoryMiB: 4096}
		for _, at := range c.vmHost {
			if at == h {
				ph.Place(placement.Request{VCPUs: 1, MemoryMiB: 256})
			}
		}
		in.Hosts = append(in.Hosts, balance.Host{Host: ph})
	}
	for v, h := range c.vmHost {
		in.VMs = append(in.VMs, balance.VM{Name: v, Host: h, VCPUs: 1, MemoryMiB: 256, NonZeroBytes: 64 << 20})
	}
	return in, nil, map[string]int{}, nil
}

func (c *fakeCluster) Migrate(_ context.Context, vm, to, _ string) (string, error) {
	c.vmHost[vm] = to // instantly
	c.started = append(c.started, vm)
	return "mig-" + vm, nil
}

type memStore struct{ st State }

func (m *memStore) GetBalancerState(context.Context) (State, error) { return m.st, nil }
func (m *memStore) PutBalancerState(_ context.Context, st State) error {
	m.st = st
	return nil
}

func TestAutoSpreadsThenStopsAndRespectsTheCooldown(t *testing.T) {
	c := &fakeCluster{vmHost: map[string]string{}}
	c.policy.Cluster.Balancer = policy.Balancer{Mode: policy.BalancerAuto, Cooldown: time.Hour}
	c.policy.Cluster.MaxParallelPerSource = 2
	sm := NewSampler()
	now := time.Unix(5000, 0)
	t0 := now
	feed := func() { // two heartbeats of VMs using 0.5 core each
		for i := 0; i < 2; i++ {
			at := now.Add(time.Duration(i) * 10 * time.Second)
			var sts []*ferryv1.VMStatus
			for v := range c.vmHost {
				sts = append(sts, &ferryv1.VMStatus{Name: v, State: "running", Pid: 1, CpuSeconds: at.Sub(t0).Seconds() * 0.5, RssBytes: 200 << 20})
			}
			sm.Observe(sts, at, time.Hour)
		}
	}
	for i := 1; i <= 6; i++ {
		c.vmHost[fmt.Sprintf("vm%d", i)] = "h1"
	}
	st := &memStore{}
	r := New(Config{Cluster: c, Store: st, Sampler: sm, Now: func() time.Time { return now.Add(10 * time.Second) }})
	for pass := 0; pass < 6; pass++ {
		feed()
		resp, _, err := r.Plan(context.Background(), false, false)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("pass %d: %.3f -> %.3f, %d proposals, started %v: %s", pass, resp.ImbalanceBefore, resp.ImbalanceAfter, len(resp.Proposals), resp.Started, resp.Why)
		now = now.Add(time.Minute)
	}
	per := map[string]int{}
	for _, h := range c.vmHost {
		per[h]++
	}
	if per["h1"] > 3 || per["h2"] == 0 || per["h3"] == 0 {
		t.Fatalf("load did not spread: %v (started %v)", per, c.started)
	}
	seen := map[string]bool{}
	for _, v := range c.started {
		if seen[v] {
			t.Errorf("%s migrated twice within the cooldown (started %v)", v, c.started)
		}
		seen[v] = true
	}
	n := len(c.started)
	for pass := 0; pass < 3; pass++ { // balanced: it rests
		feed()
		if _, _, err := r.Plan(context.Background(), false, false); err != nil {
			t.Fatal(err)
		}
	}
	if len(c.started) != n {
		t.Errorf("kept migrating once balanced: %v", c.started[n:])
	}
	if st.st.Active || len(st.st.LastMoved) != n {
		t.Errorf("state: active %v, last moved %v", st.st.Active, st.st.LastMoved)
	}
}

func TestRecommendModeNeverMigrates(t *testing.T) {
	c := &fakeCluster{vmHost: map[string]string{"a": "h1", "b": "h1", "c": "h1", "d": "h1"}}
	sm := NewSampler()
	now := time.Unix(5000, 0)
	for i := 0; i < 2; i++ {
		var sts []*ferryv1.VMStatus
		for v := range c.vmHost {
			sts = append(sts, &ferryv1.VMStatus{Name: v, State: "running", Pid: 1, CpuSeconds: float64(i) * 5, RssBytes: 200 << 20})
		}
		sm.Observe(sts, now.Add(time.Duration(i)*10*time.Second), time.Hour)
	}
	r := New(Config{Cluster: c, Store: &memStore{}, Sampler: sm, Now: func() time.Time { return now.Add(10 * time.Second) }})
	resp, _, err := r.Plan(context.Background(), false, false)
	if err != nil {
		t.Fatal(err)
	}
	if resp.Mode != policy.BalancerRecommend || len(resp.Proposals) == 0 || len(c.started) != 0 {
		t.Fatalf("mode %s, %d proposals, started %v", resp.Mode, len(resp.Proposals), c.started)
	}
	if r.Recommendations() != resp {
		t.Error("the plan is not the recommendations")
	}
	for _, p := range resp.Proposals {
		if p.Reason == "" || p.From != "h1" {
			t.Errorf("proposal %v", p)
		}
	}
}
