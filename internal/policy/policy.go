// Package policy holds migration policies as typed data: a cluster-wide
// policy, overrides per VM label and per VM, their validation, and the
// resolver that gives the effective policy of one VM. It is pure: no I/O.
package policy

import (
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/ferryvm/ferry/internal/planner"
)

// ErrInvalid is wrapped by every validation error.
var ErrInvalid = errors.New("invalid migration policy")

// Defaults used when a cluster policy field is zero.
const (
	DefaultMaxParallelCluster   = 8
	DefaultMaxParallelPerSource = 2
	DefaultMaxParallelPerDest   = 2
	// DefaultCompletionTimeoutPerGiB bounds a migration to this much time
	// per GiB of guest RAM.
	DefaultCompletionTimeoutPerGiB = 60 * time.Second
	// DefaultProgressTimeout is how long a migration may make no progress.
	DefaultProgressTimeout = 30 * time.Second
)

// Policy is the cluster-wide migration policy. Zero fields take the
// Default* values (see Effective).
type Policy struct {
	// MaxParallelCluster bounds migrations in flight in the whole cluster.
	MaxParallelCluster int `json:"maxParallelCluster,omitempty"`
	// MaxParallelPerSource bounds migrations in flight out of one host.
	MaxParallelPerSource int `json:"maxParallelPerSource,omitempty"`
	// MaxParallelPerDest bounds migrations in flight into one host.
	MaxParallelPerDest int `json:"maxParallelPerDest,omitempty"`
	// BandwidthPerMigration caps one migration (bytes/s); 0 = no cap.
	BandwidthPerMigration float64 `json:"bandwidthPerMigration,omitempty"`
	// BandwidthPerHost caps the sum of one host's migrations (bytes/s);
	// 0 = no cap.
	BandwidthPerHost float64 `json:"bandwidthPerHost,omitempty"`
	// AllowedStrategies lists the planner strategies that may be used;
	// empty means precopy, converge, postcopy and hybrid (not cold).
	AllowedStrategies []string `json:"allowedStrategies,omitempty"`
	// MaxDowntime is the longest acceptable guest pause; 0 = the
	// planner's default.
	MaxDowntime time.Duration `json:"maxDowntime,omitempty"`
	// CompletionTimeoutPerGiB bounds a migration's total time per GiB of
	// guest RAM.
	CompletionTimeoutPerGiB time.Duration `json:"completionTimeoutPerGiB,omitempty"`
	// ProgressTimeout is how long a migration may go without progress.
	ProgressTimeout time.Duration `json:"progressTimeout,omitempty"`
	// OnDegraded is what the leader does with a host whose health checks
	// report it degraded or failed: evacuate (the default) or none. A
	// host whose agent is unreachable is never evacuated automatically.
	OnDegraded string `json:"onDegraded,omitempty"`
	// Balancer configures the background load balancer.
	Balancer Balancer `json:"balancer,omitempty"`
	// InsecureTransport sends every migration's streams in plaintext
	// (default: TLS). Cluster-wide only; each report names the transport.
	InsecureTransport bool `json:"insecureTransport,omitempty"`
}

// Balancer modes.
const (
	BalancerOff       = "off"
	BalancerRecommend = "recommend"
	BalancerAuto      = "auto"
)

// Balancer configures the background load balancer; zero fields take the
// defaults of internal/rebalance and internal/balance.
type Balancer struct {
	// Mode is off, recommend (the default: plan and list, never migrate)
	// or auto (start the proposals).
	Mode string `json:"mode,omitempty"`
	// Threshold and Hysteresis are the imbalance (0..1) above which the
	// balancer acts and how far below it it goes before resting.
	Threshold  float64 `json:"threshold,omitempty"`
	Hysteresis float64 `json:"hysteresis,omitempty"`
	// Cooldown: a VM moved less than this long ago is not moved again.
	Cooldown time.Duration `json:"cooldown,omitempty"`
	// Period between plans; Window the span of the use figures averaged.
	Period time.Duration `json:"period,omitempty"`
	Window time.Duration `json:"window,omitempty"`
	// MinGainPerCost is the least imbalance reduction per unit of
	// migration cost a move must bring (0: the balancer's default).
	MinGainPerCost float64 `json:"minGainPerCost,omitempty"`
}

// OnDegraded values.
const (
	OnDegradedEvacuate = "evacuate"
	OnDegradedNone     = "none"
)

// Override changes some per-VM fields of the cluster policy; a nil field
// keeps the value underneath. Parallelism and per-host bandwidth are
// cluster-wide and cannot be overridden.
type Override struct {
	// BandwidthPerMigration, if set, replaces the cluster's.
	BandwidthPerMigration *float64 `json:"bandwidthPerMigration,omitempty"`
	// AllowedStrategies, if non-nil, replaces the cluster's.
	AllowedStrategies []string `json:"allowedStrategies,omitempty"`
	// MaxDowntime, if set, replaces the cluster's.
	MaxDowntime *time.Duration `json:"maxDowntime,omitempty"`
	// CompletionTimeoutPerGiB, if set, replaces the cluster's.
	CompletionTimeoutPerGiB *time.Duration `json:"completionTimeoutPerGiB,omitempty"`
	// ProgressTimeout, if set, replaces the cluster's.
	ProgressTimeout *time.Duration `json:"progressTimeout,omitempty"`
}

// LabelOverride applies to every VM whose label Key equals Value.
type LabelOverride struct {
	Key      string   `json:"key"`
	Value    string   `json:"value"`
	Override Override `json:"override"`
}

// Set is every policy of a cluster: what is stored and resolved.
type Set struct {
	// Cluster is the cluster-wide policy.
	Cluster Policy `json:"cluster"`
	// Labels are applied in the order (Key, Value) sorted, after Cluster.
	Labels []LabelOverride `json:"labels,omitempty"`
	// VMs are per-VM overrides by VM name, applied last.
	VMs map[string]Override `json:"vms,omitempty"`
}

// defaultStrategies is what AllowedStrategies empty means.
var defaultStrategies = []string{planner.StrategyPrecopy, planner.StrategyConverge, planner.StrategyPostcopy, planner.StrategyHybrid}

// Validate checks the whole set; the error names the first bad field and
// how to fix it, and wraps ErrInvalid.
func (s Set) Validate() error {
	if err := s.Cluster.validate("cluster"); err != nil {
		return err
	}
	seen := map[string]bool{}
	for i, l := range s.Labels {
		f := fmt.Sprintf("labels[%d]", i)
		if l.Key == "" {
			return fmt.Errorf("%w: %s.key is empty: give the VM label the override applies to", ErrInvalid, f)
		}
		if seen[l.Key+"="+l.Value] {
			return fmt.Errorf("%w: %s: label %s=%s has two overrides: merge them into one", ErrInvalid, f, l.Key, l.Value)
		}
		seen[l.Key+"="+l.Value] = true
		if err := l.Override.validate(f + ".override"); err != nil {
			return err
		}
	}
	names := make([]string, 0, len(s.VMs))
	for n := range s.VMs {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		if n == "" {
			return fmt.Errorf("%w: vms has an override with an empty VM name", ErrInvalid)
		}
		if err := s.VMs[n].validate("vms[" + n + "]"); err != nil {
			return err
		}
	}
	return nil
}

func (p Policy) validate(f string) error {
	for _, c := range []struct {
		name string
		v    int
	}{{"maxParallelCluster", p.MaxParallelCluster}, {"maxParallelPerSource", p.MaxParallelPerSource}, {"maxParallelPerDest", p.MaxParallelPerDest}} {
		if c.v < 0 {
			return fmt.Errorf("%w: %s.%s = %d: must be at least 1 (or 0 for the default)", ErrInvalid, f, c.name, c.v)
		}
	}
	if p.MaxParallelCluster > 0 && p.MaxParallelPerSource > p.MaxParallelCluster {
		return fmt.Errorf("%w: %s.maxParallelPerSource = %d exceeds maxParallelCluster = %d: lower it or raise the cluster limit", ErrInvalid, f, p.MaxParallelPerSource, p.MaxParallelCluster)
	}
	if p.OnDegraded != "" && p.OnDegraded != OnDegradedEvacuate && p.OnDegraded != OnDegradedNone {
		return fmt.Errorf("%w: %s.onDegraded = %q: use evacuate or none", ErrInvalid, f, p.OnDegraded)
	}
	switch p.Balancer.Mode {
	case "", BalancerOff, BalancerRecommend, BalancerAuto:
	default:
		return fmt.Errorf("%w: %s.balancer.mode = %q: use off, recommend or auto", ErrInvalid, f, p.Balancer.Mode)
	}
	if b := p.Balancer; b.Threshold < 0 || b.Threshold > 1 || b.Hysteresis < 0 || b.MinGainPerCost < 0 || b.Cooldown < 0 || b.Period < 0 || b.Window < 0 {
		return fmt.Errorf("%w: %s.balancer: threshold must be in 0..1 and hysteresis, cooldown, period, window and minGainPerCost must not be negative", ErrInvalid, f)
	}
	if b := p.Balancer; b.Threshold > 0 && b.Hysteresis >= b.Threshold {
		return fmt.Errorf("%w: %s.balancer.hysteresis = %g must be below threshold = %g", ErrInvalid, f, b.Hysteresis, b.Threshold)
	}
	if p.BandwidthPerHost < 0 {
		return fmt.Errorf("%w: %s.bandwidthPerHost = %g: must be positive bytes/s (or 0 for no cap)", ErrInvalid, f, p.BandwidthPerHost)
	}
	if p.BandwidthPerHost > 0 && p.BandwidthPerMigration > p.BandwidthPerHost {
		return fmt.Errorf("%w: %s.bandwidthPerMigration = %g exceeds bandwidthPerHost = %g: one migration cannot use more than its host", ErrInvalid, f, p.BandwidthPerMigration, p.BandwidthPerHost)
	}
	o := Override{BandwidthPerMigration: &p.BandwidthPerMigration, AllowedStrategies: p.AllowedStrategies,
		MaxDowntime: &p.MaxDowntime, CompletionTimeoutPerGiB: &p.CompletionTimeoutPerGiB, ProgressTimeout: &p.ProgressTimeout}
	return o.validate(f)
}

func (o Override) validate(f string) error {
	if o.BandwidthPerMigration != nil && *o.BandwidthPerMigration < 0 {
		return fmt.Errorf("%w: %s.bandwidthPerMigration = %g: must be positive bytes/s (or 0 for no cap)", ErrInvalid, f, *o.BandwidthPerMigration)
	}
	if o.AllowedStrategies != nil && len(o.AllowedStrategies) == 0 {
		return fmt.Errorf("%w: %s.allowedStrategies is empty: list at least one of %s", ErrInvalid, f, strings.Join(planner.Strategies, ", "))
	}
	for _, s := range o.AllowedStrategies {
		if !slices.Contains(planner.Strategies, s) {
			return fmt.Errorf("%w: %s.allowedStrategies: unknown strategy %q: use %s", ErrInvalid, f, s, strings.Join(planner.Strategies, ", "))
		}
	}
	if o.MaxDowntime != nil && *o.MaxDowntime != 0 && (*o.MaxDowntime < time.Millisecond || *o.MaxDowntime > time.Minute) {
		return fmt.Errorf("%w: %s.maxDowntime = %v: must be between 1ms and 1m (0 for the default)", ErrInvalid, f, *o.MaxDowntime)
	}
	if o.CompletionTimeoutPerGiB != nil && *o.CompletionTimeoutPerGiB < 0 {
		return fmt.Errorf("%w: %s.completionTimeoutPerGiB = %v: must be positive (0 for the default %v)", ErrInvalid, f, *o.CompletionTimeoutPerGiB, DefaultCompletionTimeoutPerGiB)
	}
	if o.ProgressTimeout != nil && *o.ProgressTimeout < 0 {
		return fmt.Errorf("%w: %s.progressTimeout = %v: must be positive (0 for the default %v)", ErrInvalid, f, *o.ProgressTimeout, DefaultProgressTimeout)
	}
	return nil
}

// Effective is the resolved policy of one VM, every default applied.
type Effective struct {
	Policy
	// Sources names what set each field, e.g. "cluster", "label tier=gold",
	// "vm web-1", for explanations.
	Sources []string
}

// Resolve returns the effective policy of VM name with labels: the cluster
// policy, then every matching label override in (Key, Value) order, then
// the VM's own override, then defaults for what is still zero.
func (s Set) Resolve(name string, labels map[string]string) Effective {
	e := s.resolve(name, labels)
	e.Policy = e.Policy.withDefaults()
	return e
}

// resolve is Resolve without the defaults.
func (s Set) resolve(name string, labels map[string]string) Effective {
	e := Effective{Policy: s.Cluster, Sources: []string{"cluster"}}
	e.AllowedStrategies = slices.Clone(e.AllowedStrategies)
	ls := slices.Clone(s.Labels)
	sort.SliceStable(ls, func(i, j int) bool {
		if ls[i].Key != ls[j].Key {
			return ls[i].Key < ls[j].Key
		}
		return ls[i].Value < ls[j].Value
	})
	for _, l := range ls {
		if v, ok := labels[l.Key]; ok && v == l.Value {
			e.apply(l.Override)
			e.Sources = append(e.Sources, "label "+l.Key+"="+l.Value)
		}
	}
	if o, ok := s.VMs[name]; ok {
		e.apply(o)
		e.Sources = append(e.Sources, "vm "+name)
	}
	return e
}

func (e *Effective) apply(o Override) {
	if o.BandwidthPerMigration != nil {
		e.BandwidthPerMigration = *o.BandwidthPerMigration
	}
	if o.AllowedStrategies != nil {
		e.AllowedStrategies = slices.Clone(o.AllowedStrategies)
	}
	if o.MaxDowntime != nil {
		e.MaxDowntime = *o.MaxDowntime
	}
	if o.CompletionTimeoutPerGiB != nil {
		e.CompletionTimeoutPerGiB = *o.CompletionTimeoutPerGiB
	}
	if o.ProgressTimeout != nil {
		e.ProgressTimeout = *o.ProgressTimeout
	}
}

// WithDefaults returns the cluster policy with every zero field replaced
// by its default.
func (p Policy) WithDefaults() Policy { return p.withDefaults() }

func (p Policy) withDefaults() Policy {
	if p.MaxParallelCluster == 0 {
		p.MaxParallelCluster = DefaultMaxParallelCluster
	}
	if p.MaxParallelPerSource == 0 {
		p.MaxParallelPerSource = min(DefaultMaxParallelPerSource, p.MaxParallelCluster)
	}
	if p.MaxParallelPerDest == 0 {
		p.MaxParallelPerDest = DefaultMaxParallelPerDest
	}
	if len(p.AllowedStrategies) == 0 {
		p.AllowedStrategies = slices.Clone(defaultStrategies)
	}
	if p.MaxDowntime == 0 {
		p.MaxDowntime = planner.DefaultMaxDowntime
	}
	if p.CompletionTimeoutPerGiB == 0 {
		p.CompletionTimeoutPerGiB = DefaultCompletionTimeoutPerGiB
	}
	if p.ProgressTimeout == 0 {
		p.ProgressTimeout = DefaultProgressTimeout
	}
	if p.OnDegraded == "" {
		p.OnDegraded = OnDegradedEvacuate
	}
	if p.Balancer.Mode == "" {
		p.Balancer.Mode = BalancerRecommend
	}
	return p
}

// PlannerPolicy is the planner.Policy the effective policy allows for a
// VM with memoryBytes of RAM (MaxTotal from the completion timeout).
func (e Effective) PlannerPolicy(memoryBytes int64) planner.Policy {
	p := planner.Policy{
		AllowPrecopy:  slices.Contains(e.AllowedStrategies, planner.StrategyPrecopy),
		AllowConverge: slices.Contains(e.AllowedStrategies, planner.StrategyConverge),
		AllowPostcopy: slices.Contains(e.AllowedStrategies, planner.StrategyPostcopy) || slices.Contains(e.AllowedStrategies, planner.StrategyHybrid),
		AllowCold:     slices.Contains(e.AllowedStrategies, planner.StrategyCold),
	}
	gib := max(float64(memoryBytes)/(1<<30), 1)
	p.MaxTotal = time.Duration(gib * float64(e.CompletionTimeoutPerGiB))
	return p
}

// Bandwidth is the rate one migration of this VM may use on a link of
// link bytes/s while parallel migrations share its source host.
func (e Effective) Bandwidth(link float64, parallel int) float64 {
	b := link
	if e.BandwidthPerMigration > 0 {
		b = min(b, e.BandwidthPerMigration)
	}
	if e.BandwidthPerHost > 0 && parallel > 0 {
		b = min(b, e.BandwidthPerHost/float64(parallel))
	}
	return b
}

// Timeouts are the completion timeout per GiB and the progress timeout
// the policies set for VM name with labels (resolved like Resolve), 0
// for each one no policy sets: the migration engine then keeps its own
// defaults (its progress timeout is shorter than DefaultProgressTimeout,
// and its flat 10-minute bound is not per GiB).
func (s Set) Timeouts(name string, labels map[string]string) (completionPerGiB, progress time.Duration) {
	raw := s
	raw.Cluster = Policy{CompletionTimeoutPerGiB: s.Cluster.CompletionTimeoutPerGiB, ProgressTimeout: s.Cluster.ProgressTimeout}
	e := raw.resolve(name, labels)
	return e.CompletionTimeoutPerGiB, e.ProgressTimeout
}
