package exec

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"connectrpc.com/connect"
	statev1 "github.com/ferryvm/ferry/gen/ferry/state/v1"
	ferryv1 "github.com/ferryvm/ferry/gen/ferry/v1"
	"github.com/ferryvm/ferry/internal/migration/core"
	"github.com/ferryvm/ferry/internal/planner"
	"google.golang.org/protobuf/proto"
)

// ErrNotRunning is returned by Start and Cancel when the engine does not
// run here (the server is stopping, or this replica is not the leader).
var ErrNotRunning = errors.New("the migration engine is not running on this server (not the leader?)")

// ErrHandingOver is returned by Start and Cancel while this replica hands
// its migrations over to the next leader (HandOver): ask again in a moment.
var ErrHandingOver = errors.New("this server is handing its migrations over to the next leader: try again in a moment")

// Records is where migration records are kept (/ferry/migrations/<id>).
type Records interface {
	PutMigration(ctx context.Context, m *statev1.MigrationRecord) error
	ListMigrations(ctx context.Context) ([]*statev1.MigrationRecord, error)
}

// Config is what an Engine runs on.
type Config struct {
	// Store holds the VM records (owner CAS, updates).
	Store VMStore
	// Records holds the migration records.
	Records Records
	// AgentFor returns the agent of a host (by host name).
	AgentFor func(ctx context.Context, host string) (Agent, error)
	// Knobs are the QEMU parameters of a migration, from its report and
	// the VM record (recomputed after a restart from the same inputs).
	Knobs func(m *ferryv1.Migration, vm *ferryv1.VM) Knobs
	// Controller returns the adaptive controller of a migration (nil: none).
	Controller func(m *ferryv1.Migration) *planner.Controller
	// Replan re-plans a migration's report for the strategy the core
	// retries it as (core.SteerReplan): the tuning and the prediction of
	// that strategy, written into m before the new attempt's record (nil:
	// only the report's strategy changes). An error is a failed write: the
	// attempt waits and is re-planned again.
	Replan func(ctx context.Context, m *ferryv1.Migration, strategy string) error
	// Release frees a migration's capacity reservation (nil: none kept).
	Release func(ctx context.Context, id string) error
	// Learn is told what each completed migration teaches the planner
	// (nil: ignored): the live-phase rate of a pre-copy, or of a
	// post-copy's pre-copy phase, and the rates of its stream and disk
	// mirrors when the link was not their limit (see Learned).
	Learn func(from, to string, l Learned)
	// Fenced reports whether a write error means this replica lost the
	// right to write (nil: only errors wrapping ErrFenced).
	Fenced func(error) bool
	// Ended is told the final report of each migration this engine drove to
	// a terminal state, once, after the terminal record was persisted (nil:
	// ignored). A migration another leader finishes is reported by that
	// leader's engine; one whose terminal record was written just before
	// this replica crashed is not reported at all (the count is at most
	// once, never twice: recovery skips terminal records).
	Ended func(m *ferryv1.Migration)
	// Bandwidth is a migration's bandwidth cap now (bytes/s): its share of
	// the policy's per-host bandwidth, which the leader re-shares as
	// migrations start and finish. It is given at the start and on every
	// progress poll; 0 (or a nil func) keeps Knobs.MaxBandwidthBytes.
	Bandwidth func(id string) int64
	Clock     Clock
	Log       *slog.Logger
}

// Engine runs every in-flight migration of this server, one goroutine each.
type Engine struct {
	cfg Config

	mu      sync.Mutex
	ctx     context.Context // set while Run runs
	runs    map[string]*run
	wg      sync.WaitGroup
	running bool
	// recovered is closed once Run launched every recovered record: Start
	// waits for it, so a new record cannot also be found by the recovery's
	// listing and be driven twice.
	recovered chan struct{}
	// handing: HandOver was called (the leader resigns): no new
	// migration, no cancel (handover.go).
	handing bool
}

// run is one migration the engine drives.
type run struct {
	rep  *reporter
	rec0 core.Record // the record it started from (until runner is set)

	mu     sync.Mutex
	runner *Runner[core.Record, core.Observation, core.Action]
}

// current returns the runner (nil while the migration is being set up) and
// the record as of now.
func (rp *run) current() (*Runner[core.Record, core.Observation, core.Action], core.Record) {
	rp.mu.Lock()
	r := rp.runner
	rp.mu.Unlock()
	if r == nil {
		return nil, rp.rec0
	}
	return r, r.Snapshot()
}

// New returns an Engine; it drives nothing until Run.
func New(cfg Config) *Engine {
	if cfg.Clock == nil {
		cfg.Clock = RealClock{}
	}
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	if cfg.Controller == nil {
		cfg.Controller = func(*ferryv1.Migration) *planner.Controller { return nil }
	}
	return &Engine{cfg: cfg, runs: map[string]*run{}}
}

// Run recovers every in-flight migration from its record and drives them,
// and those Start adds, until ctx ends; then it stops acting and waits for
// every migration goroutine to return. A later Run (this replica leads
// again) recovers from the records once more.
func (e *Engine) Run(ctx context.Context) error {
	e.mu.Lock()
	if e.running {
		e.mu.Unlock()
		return errors.New("migration engine: already running")
	}
	e.running, e.ctx, e.handing = true, ctx, false
	recovered := make(chan struct{})
	e.recovered = recovered
	e.mu.Unlock()
	defer func() {
		e.mu.Lock()
		e.running, e.ctx = false, nil
		e.mu.Unlock()
		e.wg.Wait()
	}()
	err := e.recover(ctx)
	close(recovered)
	if err != nil {
		return err
	}
	<-ctx.Done()
	return nil
}

// recover starts a goroutine for every record that has not ended,
// retrying the listing until it works or ctx ends.
func (e *Engine) recover(ctx context.Context) error {
	for {
		lctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		recs, err := e.cfg.Records.ListMigrations(lctx)
		cancel()
		if err == nil {
			for _, pr := range recs {
				rec, err := core.FromProto(pr)
				if err != nil {
					e.cfg.Log.Error("migration record cannot be driven", "id", pr.GetId(), "err", err)
					continue
				}
				if rec.State.Terminal() {
					continue
				}
				e.cfg.Log.Warn("recovering migration", "id", rec.ID, "vm", rec.VM, "state", rec.State)
				report := pr.GetReport()
				if report == nil {
					report = &ferryv1.Migration{Id: rec.ID, Vm: rec.VM, From: rec.From, To: rec.To, Strategy: string(rec.Strategy)}
				}
				if err := e.launch(rec, report, core.ObsLoaded); err != nil {
					e.cfg.Log.Error("recover migration", "id", rec.ID, "err", err)
				}
			}
			return nil
		}
		e.cfg.Log.Error("list migration records to recover; retrying", "err", err)
		select {
		case <-ctx.Done():
			return fmt.Errorf("recover migrations: %w", err)
		case <-time.After(2 * time.Second):
		}
	}
}

// Start writes the record of a new migration (its VM already locked) and
// drives it. A failed write changes nothing; the caller undoes the lock.
func (e *Engine) Start(ctx context.Context, rec core.Record, report *ferryv1.Migration) error {
	e.mu.Lock()
	running, recovered, handing := e.running, e.recovered, e.handing
	e.mu.Unlock()
	if !running {
		return connect.NewError(connect.CodeUnavailable, ErrNotRunning)
	}
	if handing {
		return connect.NewError(connect.CodeUnavailable, ErrHandingOver)
	}
	select {
	case <-recovered:
	case <-ctx.Done():
		return fmt.Errorf("migration %s: wait for the engine to recover the in-flight migrations: %w", rec.ID, ctx.Err())
	}
	rep := newReporter(report, nil)
	pr := core.ToProto(rec)
	pr.Report = rep.render(rec)
	if err := e.cfg.Records.PutMigration(ctx, pr); err != nil {
		return fmt.Errorf("record migration %s: %w", rec.ID, err)
	}
	return e.launch(rec, rep.snapshot(true), core.ObsTick)
}

// launch registers and starts the goroutine of one migration; first is
// the first observation: Loaded for a record recovered from the store,
// Tick for a new migration.
func (e *Engine) launch(rec core.Record, report *ferryv1.Migration, first core.ObsKind) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if !e.running {
		return connect.NewError(connect.CodeUnavailable, ErrNotRunning)
	}
	if _, dup := e.runs[rec.ID]; dup {
		return fmt.Errorf("migration %s is already driven here", rec.ID)
	}
	rp := &run{rep: newReporter(report, e.cfg.Controller(report)), rec0: rec}
	e.runs[rec.ID] = rp
	ctx := e.ctx
	e.wg.Add(1)
	go func() {
		defer e.wg.Done()
		defer func() {
			e.mu.Lock()
			delete(e.runs, rec.ID)
			e.mu.Unlock()
		}()
		e.drive(ctx, rp, rec, first)
	}()
	return nil
}

// drive sets up a migration's performer and runs it to its end (or until
// ctx ends).
func (e *Engine) drive(ctx context.Context, rp *run, rec core.Record, first core.ObsKind) {
	log := e.cfg.Log.With("id", rec.ID, "vm", rec.VM)
	var src, dst Agent
	var vm *ferryv1.VM
	err := untilDone(ctx, 2*time.Second, func(c context.Context) error {
		var err error
		if src, err = e.cfg.AgentFor(c, rec.From); err != nil {
			return err
		}
		if dst, err = e.cfg.AgentFor(c, rec.To); err != nil {
			return err
		}
		vm, err = e.cfg.Store.GetVM(c, rec.VM)
		return err
	}, func(err error) { log.Warn("migration setup: retrying", "err", err) })
	if err != nil {
		log.Info("migration not driven: the engine stopped", "err", err)
		return
	}
	report := rp.rep.snapshot(false)
	p := &performer{
		id: rec.ID, vm: rec.VM, from: rec.From, to: rec.To, src: src, dst: dst,
		store: e.cfg.Store, clock: e.cfg.Clock, watch: rp.rep, release: e.cfg.Release,
		fill: func(cur *ferryv1.VM, u core.VMUpdate) { rp.rep.fillVM(cur, u, rec.To) }, log: log,
		share: e.cfg.Bandwidth,
	}
	p.setKnobs(e.cfg.Knobs(report, vm))
	persist := &recordWriter{e: e, rep: rp.rep, log: log, revs: &recordRevision{}, beforeFinal: p.waitAlive,
		attempt: rec.Attempt, strategy: rec.Strategy,
		retuned: func(m *ferryv1.Migration) { p.setKnobs(e.cfg.Knobs(m, vm)) }}
	p.record, p.revs = persist.proto, persist.revs
	runner := NewRunner[core.Record, core.Observation, core.Action](machine{e.cfg.Clock}, p, persist, rec, func(r core.Record) core.Record { return r }, log)
	rp.rep.mu.Lock()
	rp.rep.steer = func(s core.Steer, as core.Strategy, why string) {
		runner.Observe(ctx, core.Observation{Kind: core.ObsSteer, Now: e.cfg.Clock.Now(), Steer: s, Strategy: as, SteerWhy: why})
	}
	rp.rep.mu.Unlock()
	rp.mu.Lock()
	rp.runner = runner
	rp.mu.Unlock()
	err = runner.Run(ctx, core.Observation{Kind: first, Now: e.cfg.Clock.Now()})
	switch {
	case err == nil:
		final := runner.Snapshot()
		log.Info("migration ended", "state", final.State, "err", final.Error)
		if l := rp.rep.learned(); !l.Empty() && e.cfg.Learn != nil {
			e.cfg.Learn(rec.From, rec.To, l)
		}
		if e.cfg.Ended != nil && final.State.Terminal() {
			e.cfg.Ended(rp.rep.render(final))
		}
	case errors.Is(err, ErrStopped):
		log.Info("migration left to the next leader", "state", runner.Snapshot().State)
	default:
		log.Error("migration driver stopped", "err", err)
	}
}

// untilDone calls fn until it succeeds or ctx ends, pausing every between
// attempts; each attempt runs under a 10 s deadline.
func untilDone(ctx context.Context, every time.Duration, fn func(context.Context) error, onErr func(error)) error {
	for {
		c, cancel := context.WithTimeout(ctx, 10*time.Second)
		err := fn(c)
		cancel()
		if err == nil {
			return nil
		}
		onErr(err)
		select {
		case <-ctx.Done():
			return err
		case <-time.After(every):
		}
	}
}

// lookup returns the live migration id.
func (e *Engine) lookup(id string) *run {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.runs[id]
}

// Get returns the live report of a migration this engine drives.
func (e *Engine) Get(id string, withSamples bool) (*ferryv1.Migration, bool) {
	rp := e.lookup(id)
	if rp == nil {
		return nil, false
	}
	_, rec := rp.current()
	m := rp.rep.render(rec)
	if !withSamples {
		m.Samples = nil
	}
	return m, true
}

// Cancel asks a migration to roll back. Past the owner switch it is too
// late: FailedPrecondition says so and nothing changes.
func (e *Engine) Cancel(ctx context.Context, id string) (*ferryv1.Migration, error) {
	rp := e.lookup(id)
	if rp == nil {
		return nil, connect.NewError(connect.CodeUnavailable, fmt.Errorf("migration %s: %w", id, ErrNotRunning))
	}
	runner, rec := rp.current()
	switch {
	case rec.State.Terminal():
		return nil, connect.NewError(connect.CodeFailedPrecondition, fmt.Errorf("migration %s is %s: nothing to cancel", id, rec.State.Status()))
	case rec.Facts.OwnerSwitched || rec.State == core.Unswitching:
		return nil, connect.NewError(connect.CodeFailedPrecondition, fmt.Errorf("migration %s is past the switchover (%s): the VM already belongs to %s; it cannot be cancelled", id, rec.State, rec.To))
	case runner == nil:
		return nil, connect.NewError(connect.CodeUnavailable, fmt.Errorf("migration %s is still being set up; try again", id))
	case e.handingOver():
		return nil, connect.NewError(connect.CodeUnavailable, fmt.Errorf("cancel migration %s: %w", id, ErrHandingOver))
	}
	if !runner.Observe(ctx, core.Observation{Kind: core.ObsCancel, Now: e.cfg.Clock.Now()}) {
		return nil, fmt.Errorf("cancel migration %s: %w", id, ctx.Err())
	}
	m, _ := e.Get(id, false)
	m.CancelRequested = true
	return m, nil
}

// Render is the public report of a stored record (a migration not driven
// here, or ended).
func Render(pr *statev1.MigrationRecord) *ferryv1.Migration {
	report := pr.GetReport()
	if report == nil {
		report = &ferryv1.Migration{Id: pr.GetId(), Vm: pr.GetVm(), From: pr.GetFrom(), To: pr.GetTo(), Strategy: pr.GetStrategy()}
	}
	rec, err := core.FromProto(pr)
	if err != nil {
		m := proto.Clone(report).(*ferryv1.Migration)
		m.Error = fmt.Sprintf("unreadable migration record: %v", err)
		return m
	}
	return newReporter(proto.Clone(report).(*ferryv1.Migration), nil).render(rec)
}

// machine adapts the core to the runner.
type machine struct{ clock Clock }

// Step implements Machine.
func (machine) Step(rec core.Record, obs core.Observation) (core.Record, Persist, []core.Action) {
	next, ready := core.Step(rec, obs)
	return next, Persist(ready.Persist), ready.Actions
}

// Done implements Machine.
func (machine) Done(rec core.Record) bool { return rec.State.Terminal() }

// PersistFailed implements Machine.
func (m machine) PersistFailed(err error) core.Observation {
	return core.Observation{Kind: core.ObsPersistFailed, Now: m.clock.Now(), ErrMsg: err.Error()}
}

// recordWriter persists a migration's record with its report.
type recordWriter struct {
	e     *Engine
	rep   *reporter
	log   *slog.Logger
	state core.State
	revs  *recordRevision // the revision of the latest write (when the store tells it)
	// beforeFinal runs before a final record (rec) is rendered: the
	// guest-alive check's answer belongs in it (nil: nothing to wait for).
	beforeFinal func(ctx context.Context, rec core.Record)
	// attempt and strategy are those of the last record written (or
	// loaded); retuned is told the report of a re-planned attempt, whose
	// knobs the next steps use (replan.go).
	attempt  int32
	strategy core.Strategy
	retuned  func(m *ferryv1.Migration)
}

// revisionPutter is a Records that tells the revision of a write (the
// guard of the owner switch's transaction).
type revisionPutter interface {
	PutMigrationRevision(ctx context.Context, m *statev1.MigrationRecord) (int64, error)
}

// proto renders rec as the store keeps it, with its report.
func (w *recordWriter) proto(rec core.Record) *statev1.MigrationRecord {
	pr := core.ToProto(rec)
	pr.Report = w.rep.render(rec)
	if !rec.State.Terminal() {
		pr.Report.Samples = nil // the series is written with the final record only
	}
	return pr
}

// Put implements Persister.
func (w *recordWriter) Put(ctx context.Context, rec core.Record) error {
	if rec.State.Terminal() && w.beforeFinal != nil {
		w.beforeFinal(ctx, rec)
	}
	if err := w.newAttempt(ctx, rec); err != nil {
		return err
	}
	pr := w.proto(rec)
	var err error
	if rp, ok := w.e.cfg.Records.(revisionPutter); ok {
		var rev int64
		rev, err = rp.PutMigrationRevision(ctx, pr)
		w.revs.rev.Store(rev) // 0 after an error: written or not, the revision is not known

	} else {
		err = w.e.cfg.Records.PutMigration(ctx, pr)
		w.revs.rev.Store(0) // not known: the owner switch is guarded by the VM record only
	}
	if err != nil {
		if w.e.cfg.Fenced != nil && w.e.cfg.Fenced(err) {
			return fmt.Errorf("%w: %w", ErrFenced, err)
		}
		return err
	}
	if rec.State != w.state {
		w.state = rec.State
		msg := ""
		if n := len(rec.History); n > 0 {
			msg = rec.History[n-1].Message
		}
		w.log.Info("migration step", "state", rec.State, "msg", msg)
	}
	return nil
}
