package exec

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"connectrpc.com/connect"
	agentv1 "github.com/ferryvm/ferry/gen/ferry/agent/v1"
	statev1 "github.com/ferryvm/ferry/gen/ferry/state/v1"
	ferryv1 "github.com/ferryvm/ferry/gen/ferry/v1"
	"github.com/ferryvm/ferry/internal/failpoint"
	"github.com/ferryvm/ferry/internal/migration/core"
	"github.com/ferryvm/ferry/internal/store"
)

// AfterOwnerCAS is the failpoint between a successful owner CAS and its
// result reaching the core (before the destination is armed): an e2e test
// kills the server there.
const AfterOwnerCAS = "engine/after-owner-cas"

// VMStore is the part of the store the executor writes VM records through.
type VMStore interface {
	GetVM(ctx context.Context, name string) (*ferryv1.VM, error)
	UpdateVM(ctx context.Context, name string, bump bool, fn func(*ferryv1.VM) error) (*ferryv1.VM, error)
	SwapVM(ctx context.Context, vm *ferryv1.VM, expectGeneration int64) error
	// GetVMRevision is GetVM with the revision the record was written at.
	GetVMRevision(ctx context.Context, name string) (*ferryv1.VM, int64, error)
	// SwitchOwner writes vm (generation expectGeneration+1) and the
	// migration record m in one transaction, guarded by the VM record's
	// revision vmRev and (migRev > 0) the migration record's; it returns
	// the revision written (store.Etcd.SwitchOwner).
	SwitchOwner(ctx context.Context, vm *ferryv1.VM, vmRev, expectGeneration int64, m *statev1.MigrationRecord, migRev int64) (int64, error)
}

// Clock is the executor's time: real in production, fake in tests.
type Clock interface {
	Now() time.Time
	After(d time.Duration) <-chan time.Time
}

// RealClock is the wall clock.
type RealClock struct{}

// Now implements Clock.
func (RealClock) Now() time.Time { return time.Now() }

// After implements Clock.
func (RealClock) After(d time.Duration) <-chan time.Time { return time.After(d) }

// Knobs are the QEMU parameters of one migration's outgoing side and the
// destination's setup, fixed when the migration began.
type Knobs struct {
	// Spec is the VM's spec as the destination must start it (accel pinned).
	Spec *ferryv1.VMSpec
	// Tuning are the planner's further QEMU capabilities and parameters
	// (planner.Tune), sent to both sides; nil sets none.
	Tuning                    *agentv1.MigrationTuning
	MaxBandwidthBytes         int64
	DowntimeLimitMs           int64
	MultifdChannels           int32
	MaxPostcopyBandwidthBytes int64
	ThrottleInitial           int32
	ThrottleIncrement         int32
	// NoThrottle forbids QEMU's auto-converge whatever the strategy.
	NoThrottle bool
	// LocalDisks are the VM's local disks: the destination creates and
	// exports them, the source mirrors them before RAM (issue 8).
	LocalDisks []*agentv1.LocalDisk
	// GuestAliveTimeout bounds the check after FinishIncoming that the guest
	// shows a sign of life (0: DefaultGuestAliveTimeout).
	GuestAliveTimeout time.Duration
	// InsecureTransport sends the streams in plaintext (the migration's
	// explicit option); false: TLS, each side verifying the other host.
	InsecureTransport bool
}

// Watcher sees every agent reply a performer gets, for the report (figures,
// samples, event times) and the adaptive controller. Calls come from the
// performing goroutines, concurrently.
type Watcher interface {
	Outgoing(act core.ActionKind, st *agentv1.OutgoingStatus)
	Incoming(act core.ActionKind, st *agentv1.IncomingStatus)
	VM(side core.Side, act core.ActionKind, st *ferryv1.VMStatus)
}

// downtimeTarget is a Watcher that also steers QEMU's downtime-limit (the
// reporter, which runs the adaptive controller): 0 means the knob's.
type downtimeTarget interface {
	DowntimeLimitMs() int64
}

// downtimeLimitMs is the downtime-limit to give QEMU now: the controller's
// stepped target, else the knob.
func (p *performer) downtimeLimitMs() int64 {
	if d, ok := p.watch.(downtimeTarget); ok {
		if ms := d.DowntimeLimitMs(); ms > 0 {
			return ms
		}
	}
	return p.k().DowntimeLimitMs
}

// performer carries out the actions of one migration.
type performer struct {
	id, vm   string
	from, to string
	src, dst Agent
	store    VMStore
	clock    Clock
	// knobs are the QEMU parameters of the strategy that runs (k, setKnobs):
	// a re-planned attempt gets its own (Config.Replan).
	knobs atomic.Pointer[Knobs]
	watch Watcher
	// release frees the destination's capacity reservation (nil: none kept).
	release func(ctx context.Context, id string) error
	// fill adds what is known of the destination QEMU (pid, ...) to a VM
	// record an update moves there (nil: nothing).
	fill func(cur *ferryv1.VM, u core.VMUpdate)
	log  *slog.Logger
	// record renders a migration record for the store (with its report),
	// and revs tracks the revision of its latest write: the owner switch
	// writes the switched record in the CAS's transaction.
	record func(core.Record) *statev1.MigrationRecord
	revs   *recordRevision

	mu           sync.Mutex
	stopTimer    context.CancelFunc    // cancels the pending timer
	owner        *ownerRead            // the VM record read before the pause (prefetch)
	aliveChecked bool                  // the guest-alive check ran (once per performer)
	aliveDone    chan struct{}         // closed when that check ended (nil: not started)
	aliveAgain   func(context.Context) // checks once more (set by a check that saw no sign of life; nil: none)
	// share is the migration's live bandwidth cap (Config.Bandwidth; nil
	// or 0: the knob's).
	share func(id string) int64
}

// k returns the knobs of the strategy that runs (zero before setKnobs).
func (p *performer) k() *Knobs {
	if k := p.knobs.Load(); k != nil {
		return k
	}
	return &Knobs{}
}

// setKnobs sets the knobs the next steps use.
func (p *performer) setKnobs(k Knobs) { p.knobs.Store(&k) }

// bandwidth is the max-bandwidth to give QEMU now: the live share when
// one is set and below the knob, else the knob. live reports a share.
func (p *performer) bandwidth() (b int64, live bool) {
	if p.share != nil {
		if s := p.share(p.id); s > 0 && s < p.k().MaxBandwidthBytes {
			return s, true
		}
	}
	return p.k().MaxBandwidthBytes, false
}

// ownerRead is the VM record as read before the switchover, with the
// revision the owner switch's transaction is guarded by.
type ownerRead struct {
	vm  *ferryv1.VM
	rev int64
}

func (p *performer) agent(s core.Side) Agent {
	if s == core.Src {
		return p.src
	}
	return p.dst
}

func (p *performer) stepReq() *agentv1.MigrationStepRequest {
	return &agentv1.MigrationStepRequest{Name: p.vm, MigrationId: p.id}
}

// classify turns an agent or store error into the core's error class.
func classify(err error) core.ErrClass {
	switch {
	case err == nil:
		return core.OK
	case errors.Is(err, errRefused), errors.Is(err, store.ErrConflict):
		return core.Refused
	case errors.Is(err, store.ErrNotFound):
		return core.NotFound
	}
	switch Code(err) {
	case connect.CodeNotFound:
		return core.NotFound
	case connect.CodeFailedPrecondition, connect.CodeInvalidArgument, connect.CodeAlreadyExists, connect.CodeResourceExhausted:
		return core.Refused
	}
	return core.Transient
}

// errRefused marks a store write the migration's lock forbids.
var errRefused = errors.New("refused")

func outgoing(st *agentv1.OutgoingStatus) *core.Outgoing {
	if st == nil {
		return nil
	}
	// The disks' mirrors count as progress too (the stall timer): QEMU's
	// job offsets grow as long as a mirror works.
	tr := st.TransferredBytes
	for _, d := range st.Disks {
		tr += d.JobOffset
	}
	return &core.Outgoing{Status: st.Status, QEMUStatus: st.QemuStatus, Transferred: tr, Rounds: st.DirtySyncCount, Error: st.Error,
		Remaining: st.RemainingBytes, Total: st.TotalBytes, RAMTransferred: st.TransferredBytes}
}

func incoming(st *agentv1.IncomingStatus) *core.Incoming {
	if st == nil {
		return nil
	}
	return &core.Incoming{State: st.State, QEMUStatus: st.QemuStatus, Ran: st.Ran, PID: st.GetVm().GetPid(), Error: st.Error}
}

func vmInfo(st *ferryv1.VMStatus) *core.VMInfo {
	if st == nil {
		return nil
	}
	return &core.VMInfo{State: st.State, PID: st.Pid}
}

func storeVM(vm *ferryv1.VM) *core.StoreVM {
	if vm == nil {
		return nil
	}
	return &core.StoreVM{Host: vm.Host, Generation: vm.Generation, MigrationID: vm.MigrationId, State: vm.State}
}

// Perform implements Performer: every action yields exactly one result,
// except a timer cut short by the runner's end.
func (p *performer) Perform(ctx context.Context, a core.Action) (core.Observation, bool) {
	if a.Kind == core.ActSetTimer {
		return p.timer(ctx, a.At)
	}
	o := core.Observation{Kind: core.ObsResult, Action: a.Kind, Side: a.Side}
	err := p.do(ctx, a, &o)
	if ctx.Err() != nil && err != nil {
		return core.Observation{}, false // stopping: the next leader asks again
	}
	o.Now = p.clock.Now()
	o.Err = classify(err)
	if err != nil {
		o.ErrMsg = err.Error()
		if p.log != nil {
			p.log.Info("migration step failed", "action", a.String(), "class", o.Err.String(), "err", err)
		}
	}
	return o, true
}

// timer waits until at and reports a tick. The core asks for a new timer
// only when it must wake earlier than the pending one (or that one has
// fired), so a new timer supersedes the previous one.
func (p *performer) timer(ctx context.Context, at time.Time) (core.Observation, bool) {
	tctx, cancel := context.WithCancel(ctx)
	p.mu.Lock()
	if p.stopTimer != nil {
		p.stopTimer()
	}
	p.stopTimer = cancel
	p.mu.Unlock()
	defer cancel()
	if d := at.Sub(p.clock.Now()); d > 0 {
		select {
		case <-tctx.Done():
			return core.Observation{}, false
		case <-p.clock.After(d):
		}
	}
	return core.Observation{Kind: core.ObsTick, Now: p.clock.Now()}, true
}

// do performs a and fills o's data.
func (p *performer) do(ctx context.Context, a core.Action, o *core.Observation) error {
	ag := p.attempt(p.agent(a.Side), a)
	switch a.Kind {
	case core.ActPrepareIncoming:
		r, err := ag.PrepareIncoming(ctx, &agentv1.PrepareIncomingRequest{
			Spec: p.k().Spec, MigrationId: p.id, MultifdChannels: p.k().MultifdChannels, Postcopy: a.Postcopy,
			Tuning:     p.k().Tuning,
			LocalDisks: p.k().LocalDisks,
			SourceHost: p.from, InsecureTransport: p.k().InsecureTransport,
		})
		if err == nil && !p.k().InsecureTransport && r.Transport != "tls" {
			// An agent that would listen in plaintext (an older one): never
			// send the guest's memory in the clear unasked.
			return connect.NewError(connect.CodeFailedPrecondition, fmt.Errorf("destination host %s does not listen on TLS for migration streams: upgrade its agent (or migrate with insecureTransport)", p.to))
		}
		if err == nil && len(p.k().LocalDisks) > 0 && r.NbdAddress == "" {
			// An agent that does not export the disks (an older one): never
			// send RAM to a destination whose disks would stay empty.
			return connect.NewError(connect.CodeFailedPrecondition, fmt.Errorf("destination host %s does not export the VM's %d local disks over NBD: upgrade its agent", p.to, len(p.k().LocalDisks)))
		}
		if err == nil {
			o.URI, o.DiskURI = r.Uri, r.NbdAddress
		}
		return err
	case core.ActQueryIncoming, core.ActArmResume, core.ActFinishIncoming:
		fn := map[core.ActionKind]func(context.Context, *agentv1.MigrationStepRequest) (*agentv1.IncomingStatus, error){
			core.ActQueryIncoming: ag.QueryIncoming, core.ActArmResume: ag.ArmResume, core.ActFinishIncoming: ag.FinishIncoming,
		}[a.Kind]
		st, err := fn(ctx, p.stepReq())
		if err == nil {
			o.In = incoming(st)
			p.watch.Incoming(a.Kind, st)
			if a.Kind == core.ActFinishIncoming && st.GetRan() {
				// The destination runs: see that the guest does too, beside
				// the cleanup (the final record waits for the answer).
				p.startAlive(ctx, a)
			}
		}
		return err
	case core.ActAbortIncoming:
		return ag.AbortIncoming(ctx, p.stepReq())
	case core.ActStartOutgoing:
		bw, _ := p.bandwidth()
		st, err := ag.StartOutgoing(ctx, &agentv1.StartOutgoingRequest{
			Name: p.vm, MigrationId: p.id, Uri: a.URI,
			MaxBandwidthBytes: bw, DowntimeLimitMs: p.downtimeLimitMs(), MultifdChannels: p.k().MultifdChannels,
			Postcopy: a.Postcopy, AutoConverge: a.AutoConverge && !p.k().NoThrottle, ThrottleInitial: p.k().ThrottleInitial, ThrottleIncrement: p.k().ThrottleIncrement,
			MaxPostcopyBandwidthBytes: min(p.k().MaxPostcopyBandwidthBytes, bw), Tuning: p.k().Tuning,
			NbdAddress: a.DiskURI, MirrorDisks: mirrorNames(a.DiskURI, p.k().LocalDisks),
			DestHost: p.to, InsecureTransport: p.k().InsecureTransport,
		})
		if err == nil {
			p.prefetchOwner(ctx)
		}
		return p.out(a.Kind, st, err, o)
	case core.ActQueryOutgoing:
		req := p.stepReq()
		req.WaitMs, req.KnownStatus = a.Wait.Milliseconds(), a.KnownStatus
		req.DowntimeLimitMs = p.downtimeLimitMs() // the stepped target rides on the poll
		if bw, live := p.bandwidth(); live || p.share != nil {
			req.MaxBandwidthBytes = bw // the re-shared cap too (the knob's when the share is above it)
		}
		st, err := ag.QueryOutgoing(ctx, req)
		return p.out(a.Kind, st, err, o)
	case core.ActStartPostcopy:
		st, err := ag.StartPostcopy(ctx, p.stepReq())
		return p.out(a.Kind, st, err, o)
	case core.ActContinueOutgoing:
		st, err := ag.ContinueOutgoing(ctx, p.stepReq())
		return p.out(a.Kind, st, err, o)
	case core.ActCancelOutgoing:
		req := p.stepReq()
		req.ResumeCompleted = a.ResumeCompleted
		st, err := ag.CancelOutgoingVM(ctx, req)
		if err == nil {
			o.VM = vmInfo(st)
		}
		return err
	case core.ActFinishOutgoing:
		return ag.FinishOutgoing(ctx, p.stepReq())
	case core.ActPauseMigration:
		return ag.PauseMigration(ctx, p.stepReq())
	case core.ActRecoverIncoming:
		uri, err := ag.RecoverIncoming(ctx, p.stepReq())
		o.URI = uri
		return err
	case core.ActResumeOutgoing:
		st, err := ag.ResumeOutgoing(ctx, &agentv1.ResumeOutgoingRequest{Name: p.vm, MigrationId: p.id, Uri: a.URI})
		return p.out(a.Kind, st, err, o)
	case core.ActStartVM, core.ActStopVM, core.ActGetVM:
		var st *ferryv1.VMStatus
		var err error
		switch a.Kind {
		case core.ActStartVM:
			st, err = ag.StartVM(ctx, p.k().Spec)
		case core.ActStopVM:
			st, err = ag.StopVM(ctx, p.vm, a.Force)
		default:
			st, err = ag.GetVM(ctx, p.vm)
		}
		if err == nil {
			o.VM = vmInfo(st)
			p.watch.VM(a.Side, a.Kind, st)
		}
		return err
	case core.ActDeleteVM:
		id := ""
		if a.Side == core.Src || a.RemoveDisks {
			// A cold migration's source (the destination holds the VM), or
			// the destination's disk copies of this migration.
			id = p.id
		}
		return ag.DeleteVM(ctx, p.vm, id, a.RemoveDisks)
	case core.ActPrepareDisks:
		if len(p.k().LocalDisks) == 0 {
			return connect.NewError(connect.CodeFailedPrecondition, fmt.Errorf("the migration copies local disks but knows none of VM %s", p.vm))
		}
		r, err := ag.PrepareDiskCopy(ctx, &agentv1.PrepareDiskCopyRequest{Name: p.vm, MigrationId: p.id, Disks: p.k().LocalDisks,
			SourceHost: p.from, InsecureTransport: p.k().InsecureTransport})
		if err != nil {
			return err
		}
		if !p.k().InsecureTransport && r.GetTransport() != "tls" {
			// An older agent receives the copy in plaintext: never send
			// the disks (nor the copy's token) in the clear unasked.
			return connect.NewError(connect.CodeFailedPrecondition, fmt.Errorf("destination host %s does not receive disk copies on TLS: upgrade its agent (or migrate with insecureTransport)", p.to))
		}
		o.DiskURI = r.GetAddress()
		return nil
	case core.ActCopyDisks:
		st, err := ag.CopyDisks(ctx, &agentv1.CopyDisksRequest{Name: p.vm, MigrationId: p.id, Address: a.DiskURI,
			MaxBandwidthBytes: p.k().MaxBandwidthBytes, WaitMs: a.Wait.Milliseconds(), KnownStatus: a.KnownStatus,
			DestHost: p.to, InsecureTransport: p.k().InsecureTransport})
		return p.out(a.Kind, st, err, o)
	case core.ActCASOwner:
		return p.casOwner(ctx, a, o)
	case core.ActUpdateVM:
		return p.updateVM(ctx, a, o)
	case core.ActReleaseReservation:
		if p.release == nil {
			return nil
		}
		return p.release(ctx, p.id)
	}
	return fmt.Errorf("action %s: %w", a.Kind, errRefused)
}

func (p *performer) out(k core.ActionKind, st *agentv1.OutgoingStatus, err error, o *core.Observation) error {
	if err == nil {
		o.Out = outgoing(st)
		p.watch.Outgoing(k, st)
	}
	return err
}

// casOwner moves the VM record's owner with a compare-and-swap on the
// generation the core expects; a moved generation is Refused with the
// record as found. With the switched migration record (a live switchover)
// both are written in one transaction.
func (p *performer) casOwner(ctx context.Context, a core.Action, o *core.Observation) error {
	sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if a.Record != nil && p.record != nil {
		return p.switchOwner(sctx, a, o)
	}
	cur, err := p.store.GetVM(sctx, p.vm)
	if err != nil {
		return fmt.Errorf("read VM %s for the owner CAS: %w", p.vm, err)
	}
	o.StoreVM = storeVM(cur)
	if cur.Generation != a.Generation {
		return fmt.Errorf("VM %s generation is %d, the migration expects %d (the record changed): %w", p.vm, cur.Generation, a.Generation, store.ErrConflict)
	}
	cur.Host = a.Owner
	if err := p.store.SwapVM(sctx, cur, a.Generation); err != nil {
		return fmt.Errorf("owner compare-and-swap to %s: %w", a.Owner, err)
	}
	o.StoreVM = storeVM(cur)
	if err := failpoint.Inject(AfterOwnerCAS); err != nil {
		return err
	}
	return nil
}

// updateVM writes the VM record while the migration holds it, bumping its
// generation so that no stale owner CAS can land after the release.
func (p *performer) updateVM(ctx context.Context, a core.Action, o *core.Observation) error {
	sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	u := a.Update
	vm, err := p.store.UpdateVM(sctx, p.vm, true, func(cur *ferryv1.VM) error {
		o.StoreVM = storeVM(cur)
		if cur.MigrationId != p.id {
			return fmt.Errorf("VM %s is held by migration %q, not %s: %w", p.vm, cur.MigrationId, p.id, errRefused)
		}
		cur.State, cur.Message = string(u.State), u.Reason
		if u.Host != "" {
			cur.Host = u.Host
		}
		if u.Unlock {
			cur.MigrationId = ""
		}
		if u.State == core.VMStopped || u.State == core.VMFailed {
			cur.Pid = 0
		}
		if p.fill != nil {
			p.fill(cur, u)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("update VM record %s: %w", p.vm, err)
	}
	o.StoreVM = storeVM(vm)
	return nil
}

// mirrorNames are the disks a StartOutgoing mirrors: every local disk when
// the destination exports them (nbd set), none otherwise.
func mirrorNames(nbd string, disks []*agentv1.LocalDisk) []string {
	if nbd == "" {
		return nil
	}
	var out []string
	for _, d := range disks {
		out = append(out, d.GetName())
	}
	return out
}
