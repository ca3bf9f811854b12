// Package rebalance runs the load balancer on a real cluster: it keeps the
// per-VM CPU and memory use the agents report in their heartbeats over a
// window (Sampler), plans with the pure internal/balance core every
// period, keeps the last plan as the recommendations, and in auto mode
// starts the proposed migrations. The hysteresis state and the time each
// VM last moved are persisted (Store), so a new leader keeps the cooldown
// and a VM never migrates twice within it.
package rebalance

import (
	"context"
	"fmt"
	"log/slog"
	"sort"
	"sync"
	"time"

	ferryv1 "github.com/ferryvm/ferry/gen/ferry/v1"
	"github.com/ferryvm/ferry/internal/balance"
	"github.com/ferryvm/ferry/internal/policy"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// Defaults for the zero fields of policy.Balancer.
const (
	DefaultPeriod = 30 * time.Second
	DefaultWindow = time.Minute
)

// sample is one heartbeat's figures of one VM.
type sample struct {
	at  time.Time
	cpu float64 // CPU seconds since QEMU started
	rss float64 // MiB
	pid int64
}

// Sampler keeps each VM's recent samples. Safe for concurrent use.
type Sampler struct {
	mu  sync.Mutex
	vms map[string][]sample
}

// NewSampler returns an empty Sampler.
func NewSampler() *Sampler { return &Sampler{vms: map[string][]sample{}} }

// Observe folds one heartbeat's VM reports (at now), keeping what is
// younger than keep.
func (s *Sampler) Observe(vms []*ferryv1.VMStatus, now time.Time, keep time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, v := range vms {
		if v.GetState() != "running" || v.GetPid() == 0 {
			continue
		}
		ss := s.vms[v.Name]
		if n := len(ss); n > 0 && ss[n-1].pid != v.Pid {
			ss = nil // a new QEMU (migrated, restarted): its CPU time restarts
		}
		ss = append(ss, sample{at: now, cpu: v.CpuSeconds, rss: float64(v.RssBytes) / (1 << 20), pid: v.Pid})
		i := 0
		for i < len(ss)-2 && now.Sub(ss[i].at) > keep {
			i++
		}
		s.vms[v.Name] = ss[i:]
	}
}

// Use is a VM's mean CPU use (cores) and RSS (MiB) over the samples of
// the last window before now; ok is false with fewer than two samples.
func (s *Sampler) Use(vm string, now time.Time, window time.Duration) (cpu, rss float64, ok bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	ss := s.vms[vm]
	var in []sample
	for _, x := range ss {
		if now.Sub(x.at) <= window {
			in = append(in, x)
		}
	}
	if len(in) < 2 {
		return 0, 0, false
	}
	a, b := in[0], in[len(in)-1]
	dt := b.at.Sub(a.at).Seconds()
	if dt <= 0 {
		return 0, 0, false
	}
	var sum float64
	for _, x := range in {
		sum += x.rss
	}
	return max(b.cpu-a.cpu, 0) / dt, sum / float64(len(in)), true
}

// State is the balancer's persisted memory.
type State struct {
	// Active is the hysteresis state.
	Active bool `json:"active"`
	// LastMoved is when each VM's last balancer migration started.
	LastMoved map[string]time.Time `json:"lastMoved,omitempty"`
}

// Store keeps the State (the server's etcd).
type Store interface {
	GetBalancerState(ctx context.Context) (State, error)
	PutBalancerState(ctx context.Context, st State) error
}

// Cluster is what the balancer plans from and acts on.
type Cluster interface {
	// Inputs returns the hosts and the VMs the balancer may move
	// (capacity, placement, QEMU caps; no use figures), the policies and
	// the link rates; fixed are the VMs it must not move (pinned,
	// migrating), whose use still counts on their host; inFlight counts
	// migrations in flight out of and into each host.
	Inputs(ctx context.Context) (in balance.Inputs, fixed []balance.VM, inFlight map[string]int, err error)
	// Migrate starts a migration and returns its id.
	Migrate(ctx context.Context, vm, to, strategy string) (string, error)
}

// Config configures a Runner.
type Config struct {
	Cluster Cluster
	Store   Store
	Sampler *Sampler
	Log     *slog.Logger
	Now     func() time.Time
}

// Runner is the background balancer (leader only).
type Runner struct {
	cfg  Config
	mu   sync.Mutex // one plan at a time
	last *ferryv1.BalanceResponse
}

// New returns a Runner.
func New(cfg Config) *Runner {
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	return &Runner{cfg: cfg}
}

// settings are the balancer's policy with defaults.
func settings(p policy.Policy) (policy.Balancer, balance.Config) {
	b := p.WithDefaults().Balancer
	if b.Period == 0 {
		b.Period = DefaultPeriod
	}
	if b.Window == 0 {
		b.Window = DefaultWindow
	}
	return b, balance.Config{Threshold: b.Threshold, Hysteresis: b.Hysteresis, Cooldown: b.Cooldown, MinGainPerCost: b.MinGainPerCost}
}

// Recommendations is the last background plan (nil before the first).
func (r *Runner) Recommendations() *ferryv1.BalanceResponse {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.last
}

// Run plans every period until ctx ends, acting in auto mode.
func (r *Runner) Run(ctx context.Context) {
	next := time.Duration(0)
	for {
		select {
		case <-ctx.Done():
			return
		case <-time.After(next):
		}
		resp, period, err := r.Plan(ctx, false, false)
		if err != nil {
			r.cfg.Log.Warn("balancer", "err", err)
		} else if len(resp.Proposals) > 0 || len(resp.Started) > 0 {
			r.cfg.Log.Info("balancer plan", "mode", resp.Mode, "before", resp.ImbalanceBefore, "after", resp.ImbalanceAfter, "proposals", len(resp.Proposals), "started", resp.Started)
		}
		next = period
	}
}

// Plan plans now; it starts the proposals when act is set (ferry balance)
// or, with background set, when the mode is auto. The plan becomes the
// recommendations unless dry.
func (r *Runner) Plan(ctx context.Context, act, dry bool) (*ferryv1.BalanceResponse, time.Duration, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	pctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	in, fixed, inFlight, err := r.cfg.Cluster.Inputs(pctx)
	if err != nil {
		return nil, DefaultPeriod, fmt.Errorf("balancer inputs: %w", err)
	}
	bset, cfg := settings(in.Policies.Cluster)
	now := r.cfg.Now()
	st, err := r.cfg.Store.GetBalancerState(pctx)
	if err != nil {
		return nil, bset.Period, fmt.Errorf("balancer state: %w", err)
	}
	in.Config, in.State = cfg, balance.State{Now: now, LastMoved: st.LastMoved, Active: st.Active}
	r.fillUse(&in, fixed, now, bset.Window)
	res, err := balance.Propose(in)
	if err != nil {
		return nil, bset.Period, err
	}
	resp := &ferryv1.BalanceResponse{Mode: bset.Mode, ImbalanceBefore: res.Before, ImbalanceAfter: res.After, Why: res.Why,
		Cooling: res.Cooling, PlannedAt: timestamppb.New(now), Active: res.Active}
	for _, p := range res.Proposals {
		resp.Proposals = append(resp.Proposals, &ferryv1.BalanceProposal{Vm: p.VM, From: p.From, To: p.To, Strategy: p.Strategy,
			Gain: p.Gain, Cost: p.Cost, Reason: p.Reason, PredictedMs: p.Prediction.Total.Milliseconds(), PredictedDowntimeMs: p.Prediction.Downtime.Milliseconds()})
	}
	if dry {
		return resp, bset.Period, nil
	}
	if act || bset.Mode == policy.BalancerAuto {
		r.start(pctx, resp, in.Policies.Cluster.WithDefaults(), inFlight, &st, now)
	}
	st.Active = res.Active
	if err := r.cfg.Store.PutBalancerState(pctx, st); err != nil {
		return resp, bset.Period, fmt.Errorf("balancer state: %w", err)
	}
	if bset.Mode != policy.BalancerOff || act {
		r.last = resp
	}
	return resp, bset.Period, nil
}

// start runs the proposals in order within the per-host parallelism left
// (a proposal whose hosts are busy waits for the next plan), recording
// each start in the cooldown before the next.
func (r *Runner) start(ctx context.Context, resp *ferryv1.BalanceResponse, p policy.Policy, inFlight map[string]int, st *State, now time.Time) {
	if st.LastMoved == nil {
		st.LastMoved = map[string]time.Time{}
	}
	busy := map[string]int{}
	for h, n := range inFlight {
		busy[h] = n
	}
	total := 0
	for _, n := range inFlight {
		total += n
	}
	total /= 2 // each migration counts at its source and its destination
	for _, pr := range resp.Proposals {
		if total >= p.MaxParallelCluster || busy[pr.From] >= p.MaxParallelPerSource || busy[pr.To] >= p.MaxParallelPerDest {
			continue
		}
		id, err := r.cfg.Cluster.Migrate(ctx, pr.Vm, pr.To, pr.Strategy)
		if err != nil {
			r.cfg.Log.Warn("balancer: migration refused", "vm", pr.Vm, "to", pr.To, "err", err)
			continue
		}
		st.LastMoved[pr.Vm] = now
		busy[pr.From]++
		busy[pr.To]++
		total++
		resp.Started = append(resp.Started, id)
	}
}

// fillUse puts the sampled use into the inputs: each VM's CPU and RSS,
// and each host's sums (VMs without two samples count their RAM as RSS
// and no CPU).
func (r *Runner) fillUse(in *balance.Inputs, fixed []balance.VM, now time.Time, window time.Duration) {
	byHost := map[string]int{}
	for i, h := range in.Hosts {
		byHost[h.Name] = i
		in.Hosts[i].CPUUsed, in.Hosts[i].MemUsedMiB = 0, 0
	}
	n := len(in.VMs)
	all := append(in.VMs, fixed...)
	for i := range all {
		v := &all[i]
		if cpu, rss, ok := r.cfg.Sampler.Use(v.Name, now, window); ok {
			v.CPUUsed, v.RSSMiB = cpu, rss
		} else {
			v.RSSMiB = float64(v.MemoryMiB)
		}
		if j, ok := byHost[v.Host]; ok {
			in.Hosts[j].CPUUsed += v.CPUUsed
			in.Hosts[j].MemUsedMiB += v.RSSMiB
		}
	}
	in.VMs = all[:n]
	sort.SliceStable(in.VMs, func(a, b int) bool { return in.VMs[a].Name < in.VMs[b].Name })
}
