package drain

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	ferryv1 "github.com/ferryvm/ferry/gen/ferry/v1"
	"github.com/ferryvm/ferry/internal/evacuate"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// Sentinel errors callers branch on.
var (
	// ErrNotFound: the host has no evacuation record (not in maintenance).
	ErrNotFound = errors.New("no evacuation record")
	// ErrBusy: the evacuation still runs (cancel it first).
	ErrBusy = errors.New("evacuation still running")
	// ErrWait is wrapped by a Cluster.Migrate refusal that is not the
	// destination's fault and passes by itself (a policy limit reached by
	// other migrations): the item keeps its destination and starts on a
	// later tick; it is not a failed attempt.
	ErrWait = errors.New("not now")
)

// Snapshot is the cluster as one tick sees it.
type Snapshot struct {
	// SourceReachable says the source's agent holds its lease; while it
	// does not, no migration starts (its VMs may be running: nothing is
	// touched).
	SourceReachable bool
	// OnHost names every VM the store places on the host now.
	OnHost []string
	// Unmovable gives, per VM on the host that must not be moved
	// automatically, why (pinned, failed...).
	Unmovable map[string]string
	// Cold names the VMs that are stopped: they move cold.
	Cold map[string]bool
	// OtherInto counts migrations in flight into each host that are not
	// this evacuation's; ClusterFree is how many more migrations the
	// cluster-wide limit allows now.
	OtherInto   map[string]int
	ClusterFree int
}

// Cluster is what the runner acts on (the server implements it).
type Cluster interface {
	// Snapshot returns the cluster as seen for draining host (cheap: every
	// pass calls it).
	Snapshot(ctx context.Context, host string) (Snapshot, error)
	// PlanInput is the planner's input for moving vms off host: every
	// host, those VMs with their measured figures, the policies and the
	// link rates (measured now where none is known). Only a plan calls it.
	PlanInput(ctx context.Context, host string, vms []string) (evacuate.Input, error)
	// VM returns what the store says about a VM.
	VM(ctx context.Context, name string) (VMView, error)
	// Migration returns what the engine says about a migration.
	Migration(ctx context.Context, id string) (Migration, error)
	// Migrate starts a migration of vm to host with strategy and returns
	// its id.
	Migrate(ctx context.Context, vm, to, strategy string) (string, error)
	// Cancel asks a running migration to roll back.
	Cancel(ctx context.Context, id string) error
}

// Records keeps the evacuation records (the server's etcd store).
type Records interface {
	GetEvacuation(ctx context.Context, host string) (*ferryv1.Evacuation, error)
	PutEvacuation(ctx context.Context, e *ferryv1.Evacuation) error
	ListEvacuations(ctx context.Context) ([]*ferryv1.Evacuation, error)
	DeleteEvacuation(ctx context.Context, host string) error
}

// Config configures a Runner.
type Config struct {
	Cluster Cluster
	Records Records
	// IsNotFound says a Records error means no record.
	IsNotFound func(error) bool
	Log        *slog.Logger
	// Tick is how often running evacuations advance (default 500 ms).
	Tick time.Duration
	// MaxAttempts per VM (default DefaultMaxAttempts).
	MaxAttempts int
	// Now is the clock (default time.Now).
	Now func() time.Time
}

// Runner executes the evacuations of a cluster; only the leader runs it.
type Runner struct {
	cfg Config
	mu  sync.Mutex // one pass over the records at a time
}

// New returns a Runner.
func New(cfg Config) *Runner {
	if cfg.Tick == 0 {
		cfg.Tick = 500 * time.Millisecond
	}
	if cfg.MaxAttempts == 0 {
		cfg.MaxAttempts = DefaultMaxAttempts
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	if cfg.IsNotFound == nil {
		cfg.IsNotFound = func(error) bool { return false }
	}
	return &Runner{cfg: cfg}
}

// get returns the host's record, ErrNotFound if none.
func (r *Runner) get(ctx context.Context, host string) (*ferryv1.Evacuation, error) {
	e, err := r.cfg.Records.GetEvacuation(ctx, host)
	if err != nil {
		if r.cfg.IsNotFound(err) {
			return nil, fmt.Errorf("host %s: %w", host, ErrNotFound)
		}
		return nil, fmt.Errorf("read the evacuation of %s: %w", host, err)
	}
	return e, nil
}

// Get returns the host's record (ErrNotFound: not in maintenance).
func (r *Runner) Get(ctx context.Context, host string) (*ferryv1.Evacuation, error) {
	return r.get(ctx, host)
}

// DryRun plans the drain of host and returns the plan as a record in
// state planned; nothing is stored or started.
func (r *Runner) DryRun(ctx context.Context, host string) (*ferryv1.Evacuation, evacuate.Plan, error) {
	snap, err := r.cfg.Cluster.Snapshot(ctx, host)
	if err != nil {
		return nil, evacuate.Plan{}, err
	}
	rec := &ferryv1.Evacuation{Host: host, Reason: ReasonManual, State: StatePlanned}
	AddItems(rec, snap.OnHost)
	plan, err := r.plan(ctx, rec, snap)
	if err != nil {
		return nil, evacuate.Plan{}, err
	}
	return rec, plan, nil
}

// Enter puts host in maintenance: the record is written at once (the host
// is unschedulable from then on), then the first pass plans and starts
// the drain. A host already in maintenance returns its record (a
// finished one starts again: VMs may have come back).
func (r *Runner) Enter(ctx context.Context, host, reason string) (*ferryv1.Evacuation, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	rec, err := r.get(ctx, host)
	switch {
	case err == nil && !Terminal(rec.State):
		return rec, nil
	case err == nil || errors.Is(err, ErrNotFound):
		rec = &ferryv1.Evacuation{Host: host, Reason: reason, State: StateRunning, StartedAt: timestamppb.New(r.cfg.Now()), Generation: rec.GetGeneration()}
	default:
		return nil, err
	}
	if err := r.cfg.Records.PutEvacuation(ctx, rec); err != nil {
		return nil, fmt.Errorf("put host %s in maintenance: %w", host, err)
	}
	rec.Generation++
	r.cfg.Log.Info("host entered maintenance", "host", host, "reason", reason)
	if err := r.advance(ctx, rec); err != nil {
		r.cfg.Log.Warn("evacuation: first pass", "host", host, "err", err)
	}
	return rec, nil
}

// Exit takes host out of maintenance (ErrBusy while its evacuation runs).
func (r *Runner) Exit(ctx context.Context, host string) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	rec, err := r.get(ctx, host)
	if err != nil {
		return err
	}
	if !Terminal(rec.State) {
		return fmt.Errorf("host %s: evacuation is %s: %w (ferry host maintenance cancel %s)", host, rec.State, ErrBusy, host)
	}
	if err := r.cfg.Records.DeleteEvacuation(ctx, host); err != nil {
		return fmt.Errorf("take host %s out of maintenance: %w", host, err)
	}
	r.cfg.Log.Info("host left maintenance", "host", host)
	return nil
}

// Cancel stops the host's evacuation: no more starts, migrations in
// flight are asked to roll back; the host stays in maintenance.
func (r *Runner) Cancel(ctx context.Context, host string) (*ferryv1.Evacuation, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	rec, err := r.get(ctx, host)
	if err != nil {
		return nil, err
	}
	if Terminal(rec.State) || rec.State == StateCancelling {
		return rec, nil
	}
	rec.State = StateCancelling
	for _, it := range rec.Items {
		if it.Status == ItemMigrating {
			if err := r.cfg.Cluster.Cancel(ctx, it.MigrationId); err != nil {
				r.cfg.Log.Warn("evacuation cancel: migration", "host", host, "vm", it.Vm, "migration", it.MigrationId, "err", err)
			}
		}
	}
	if err := r.put(ctx, rec); err != nil {
		return nil, err
	}
	return rec, r.advance(ctx, rec)
}

// Run advances every running evacuation each Tick until ctx ends.
func (r *Runner) Run(ctx context.Context) {
	t := time.NewTicker(r.cfg.Tick)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		r.Pass(ctx)
	}
}

// Pass advances every evacuation that has not ended, once.
func (r *Runner) Pass(ctx context.Context) {
	r.mu.Lock()
	defer r.mu.Unlock()
	pctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	recs, err := r.cfg.Records.ListEvacuations(pctx)
	if err != nil {
		r.cfg.Log.Warn("evacuations: list", "err", err)
		return
	}
	for _, rec := range recs {
		if Terminal(rec.State) {
			continue
		}
		if err := r.advance(pctx, rec); err != nil {
			r.cfg.Log.Warn("evacuation pass", "host", rec.Host, "err", err)
		}
	}
}

// put writes the record and counts the write in the caller's copy.
func (r *Runner) put(ctx context.Context, rec *ferryv1.Evacuation) error {
	if err := r.cfg.Records.PutEvacuation(ctx, rec); err != nil {
		return fmt.Errorf("write the evacuation of %s: %w", rec.Host, err)
	}
	rec.Generation++
	return nil
}

// advance is one step of one evacuation: observe, fold, plan what needs
// a destination, start what the limits admit, finish; the record is
// written whenever it changed (a start is written right after it, so a
// restart finds it or adopts it from the VM's lock).
func (r *Runner) advance(ctx context.Context, rec *ferryv1.Evacuation) error {
	before := proto.Clone(rec)
	snap, err := r.cfg.Cluster.Snapshot(ctx, rec.Host)
	if err != nil {
		return err
	}
	now := r.cfg.Now()
	if rec.State == StateRunning {
		AddItems(rec, snap.OnHost)
	}
	obs := Observed{Migrations: map[string]Migration{}, VMs: map[string]VMView{}, Now: now}
	for _, it := range rec.Items {
		if itemDone(it.Status) {
			continue
		}
		v, err := r.cfg.Cluster.VM(ctx, it.Vm)
		if err != nil {
			return err
		}
		obs.VMs[it.Vm] = v
		if it.Status == ItemMigrating && it.MigrationId != "" {
			m, err := r.cfg.Cluster.Migration(ctx, it.MigrationId)
			if err != nil {
				return err
			}
			obs.Migrations[it.MigrationId] = m
		}
	}
	needPlan := Fold(rec, obs, r.cfg.MaxAttempts)
	if RetryUnplaced(rec, now) {
		needPlan = true
	}
	for _, it := range rec.Items {
		if why, ok := snap.Unmovable[it.Vm]; ok && it.Status == ItemPending {
			it.Status, it.Error, it.Plans = ItemUnplaced, why, MaxPlans
		}
	}
	if (needPlan || len(rec.Plan) == 0) && rec.State == StateRunning {
		if _, err := r.plan(ctx, rec, snap); err != nil {
			return err
		}
	}
	if rec.State == StateRunning && !snap.SourceReachable {
		rec.Message = fmt.Sprintf("host %s is unreachable: no migration starts until its agent is back (its VMs may still run there)", rec.Host)
	} else if rec.State == StateRunning {
		if rec.Message != "" && !Terminal(rec.State) {
			rec.Message = ""
		}
		starts := Admit(rec, snap.OtherInto, snap.ClusterFree)
		if len(starts) > 0 && !proto.Equal(before, rec) {
			// The items and the plan are stored before any start, so a
			// VM that starts moving is always in the stored record.
			if err := r.put(ctx, rec); err != nil {
				return err
			}
		}
		for _, it := range starts {
			strategy := it.Strategy
			if snap.Cold[it.Vm] {
				strategy = "cold"
			}
			id, err := r.cfg.Cluster.Migrate(ctx, it.Vm, it.To, strategy)
			if errors.Is(err, ErrWait) {
				rec.Message = fmt.Sprintf("%s waits: %v", it.Vm, err)
				r.cfg.Log.Info("evacuation: start deferred", "host", rec.Host, "vm", it.Vm, "to", it.To, "err", err)
				continue
			}
			it.Attempts++
			it.StartedAt = timestamppb.New(now)
			if err != nil {
				failAttempt(rec, it, fmt.Sprintf("start to %s: %v", it.To, err), r.cfg.MaxAttempts, true)
				r.cfg.Log.Warn("evacuation: migration refused", "host", rec.Host, "vm", it.Vm, "to", it.To, "err", err)
				continue
			}
			it.Status, it.MigrationId = ItemMigrating, id
			rec.MaxInFlight = max(rec.MaxInFlight, int32(InFlight(rec)))
			r.cfg.Log.Info("evacuation: migration started", "host", rec.Host, "vm", it.Vm, "to", it.To, "migration", id, "in_flight", InFlight(rec))
			if err := r.put(ctx, rec); err != nil {
				return err
			}
		}
	}
	left := slices.DeleteFunc(slices.Clone(snap.OnHost), func(n string) bool {
		for _, it := range rec.Items {
			if it.Vm == n && it.Status == ItemMigrating {
				return true // on its way: the record still names the source
			}
		}
		return false
	})
	if Finish(rec, left, now) {
		r.cfg.Log.Info("evacuation ended", "host", rec.Host, "state", rec.State, "message", rec.Message)
	}
	if rec.StartedAt != nil && !Terminal(rec.State) {
		rec.MeasuredMs = now.Sub(rec.StartedAt.AsTime()).Milliseconds()
	}
	if proto.Equal(before, rec) {
		return nil
	}
	return r.put(ctx, rec)
}

// plan places every pending item without a destination and records the
// plan's lines the first time.
func (r *Runner) plan(ctx context.Context, rec *ferryv1.Evacuation, snap Snapshot) (evacuate.Plan, error) {
	avoid := map[string][]string{}
	want := map[string]bool{}
	var names []string
	for _, it := range rec.Items {
		if it.Status == ItemPending && it.To == "" {
			want[it.Vm] = true
			names = append(names, it.Vm)
			avoid[it.Vm] = slices.Clone(it.Avoid)
		}
	}
	in, err := r.cfg.Cluster.PlanInput(ctx, rec.Host, names)
	if err != nil {
		return evacuate.Plan{}, fmt.Errorf("gather the plan's input for %s: %w", rec.Host, err)
	}
	in.Source, in.Avoid = rec.Host, avoid
	in.VMs = slices.DeleteFunc(slices.Clone(in.VMs), func(v evacuate.VM) bool { return !want[v.Name] })
	plan, err := evacuate.PlanDrain(in)
	if err != nil {
		return evacuate.Plan{}, fmt.Errorf("plan the drain of %s: %w", rec.Host, err)
	}
	placed := map[string]bool{}
	for _, m := range plan.Moves {
		placed[m.VM] = true
	}
	for _, u := range plan.Unplaced {
		placed[u.VM] = true
	}
	for _, it := range rec.Items { // pending VMs the planner was not given (not running, gone)
		if want[it.Vm] && !placed[it.Vm] {
			why := "the planner has no figures for it (not on the host any more, or not running)"
			if w, ok := snap.Unmovable[it.Vm]; ok {
				why = w
			}
			plan.Unplaced = append(plan.Unplaced, evacuate.Unplaced{VM: it.Vm, Reason: "not-movable", Detail: why, Help: "start it, or move it by hand"})
		}
	}
	ApplyPlan(rec, plan)
	rec.PlannedAt = timestamppb.New(r.cfg.Now())
	if len(rec.Plan) == 0 {
		rec.Plan = plan.Lines()
	}
	return plan, nil
}
