package exec

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"connectrpc.com/connect"
	agentv1 "github.com/ferryvm/ferry/gen/ferry/agent/v1"
	"github.com/ferryvm/ferry/gen/ferry/agent/v1/agentv1connect"
	ferryv1 "github.com/ferryvm/ferry/gen/ferry/v1"
	"github.com/ferryvm/ferry/internal/rpcaddr"
)

// Agent is what the engine asks of one host's agent: the steps of both
// sides of a migration (every one keyed by VM name and migration id and
// idempotent, see the agent contract in docs/migration.md) and the VM
// lifecycle calls a cold migration needs. Errors keep the agent's Connect
// code (see Code).
type Agent interface {
	PrepareIncoming(ctx context.Context, req *agentv1.PrepareIncomingRequest) (*agentv1.PrepareIncomingResponse, error)
	QueryIncoming(ctx context.Context, req *agentv1.MigrationStepRequest) (*agentv1.IncomingStatus, error)
	ArmResume(ctx context.Context, req *agentv1.MigrationStepRequest) (*agentv1.IncomingStatus, error)
	FinishIncoming(ctx context.Context, req *agentv1.MigrationStepRequest) (*agentv1.IncomingStatus, error)
	AbortIncoming(ctx context.Context, req *agentv1.MigrationStepRequest) error
	StartOutgoing(ctx context.Context, req *agentv1.StartOutgoingRequest) (*agentv1.OutgoingStatus, error)
	QueryOutgoing(ctx context.Context, req *agentv1.MigrationStepRequest) (*agentv1.OutgoingStatus, error)
	ContinueOutgoing(ctx context.Context, req *agentv1.MigrationStepRequest) (*agentv1.OutgoingStatus, error)
	FinishOutgoing(ctx context.Context, req *agentv1.MigrationStepRequest) error
	StartPostcopy(ctx context.Context, req *agentv1.MigrationStepRequest) (*agentv1.OutgoingStatus, error)
	PauseMigration(ctx context.Context, req *agentv1.MigrationStepRequest) error
	RecoverIncoming(ctx context.Context, req *agentv1.MigrationStepRequest) (string, error)
	ResumeOutgoing(ctx context.Context, req *agentv1.ResumeOutgoingRequest) (*agentv1.OutgoingStatus, error)
	ProbeListen(ctx context.Context) (string, error)
	ProbeSend(ctx context.Context, address string, d time.Duration) error
	StartVM(ctx context.Context, spec *ferryv1.VMSpec) (*ferryv1.VMStatus, error)
	StopVM(ctx context.Context, name string, force bool) (*ferryv1.VMStatus, error)
	// DeleteVM removes a VM from the host; migrationID, when set, names
	// the migration whose source this is, so the agent keeps its local
	// disk images (the destination holds the VM now) unless removeDisks
	// (a cold migration whose destination verified its copies, or the
	// destination's copies being undone).
	DeleteVM(ctx context.Context, name, migrationID string, removeDisks bool) error
	// PrepareDiskCopy (destination of a cold migration of local disks)
	// creates empty copies and returns where it receives them.
	PrepareDiskCopy(ctx context.Context, req *agentv1.PrepareDiskCopyRequest) (*agentv1.PrepareDiskCopyResponse, error)
	// CopyDisks (source) starts or reports the sparse copy of the local
	// disks to the destination's receiver.
	CopyDisks(ctx context.Context, req *agentv1.CopyDisksRequest) (*agentv1.OutgoingStatus, error)
	GetVM(ctx context.Context, name string) (*ferryv1.VMStatus, error)
	CancelOutgoingVM(ctx context.Context, req *agentv1.MigrationStepRequest) (*ferryv1.VMStatus, error)
}

// Code is the Connect code of an agent error (CodeUnknown for errors that
// carry none, 0 for nil): NotFound and FailedPrecondition are answers,
// Unavailable and DeadlineExceeded transient.
func Code(err error) connect.Code {
	if err == nil {
		return 0
	}
	if errors.Is(err, context.DeadlineExceeded) {
		return connect.CodeDeadlineExceeded
	}
	return connect.CodeOf(err)
}

// Transient reports whether err may go away on a retry (the agent was
// unreachable or slow), as opposed to a refusal or an unknown migration.
func Transient(err error) bool {
	switch Code(err) {
	case connect.CodeUnavailable, connect.CodeDeadlineExceeded, connect.CodeUnknown, connect.CodeCanceled, connect.CodeAborted, connect.CodeInternal:
		return true
	}
	return false
}

// Timeouts bound each kind of agent call; zero fields take the defaults.
type Timeouts struct {
	// Prepare bounds PrepareIncoming (QEMU start) and StartVM.
	Prepare time.Duration
	// Step bounds the other steps.
	Step time.Duration
	// Finish bounds FinishIncoming (it waits until the destination runs).
	Finish time.Duration
}

func (t Timeouts) withDefaults() Timeouts {
	if t.Prepare == 0 {
		t.Prepare = 90 * time.Second
	}
	if t.Step == 0 {
		t.Step = 10 * time.Second
	}
	if t.Finish == 0 {
		t.Finish = 30 * time.Second
	}
	return t
}

// connectAgent is the Agent over an agent's ConnectRPC services.
type connectAgent struct {
	vm   agentv1connect.AgentServiceClient
	disk agentv1connect.DiskAgentServiceClient
	mig  agentv1connect.MigrationAgentServiceClient
	live agentv1connect.LivenessAgentServiceClient
	t    Timeouts
}

// NewConnectAgent returns the Agent served at addr (an rpcaddr address);
// every call runs under a deadline from t.
func NewConnectAgent(addr string, t Timeouts) Agent {
	hc, base := rpcaddr.Client(addr)
	return &connectAgent{
		vm:   agentv1connect.NewAgentServiceClient(hc, base),
		disk: agentv1connect.NewDiskAgentServiceClient(hc, base),
		mig:  agentv1connect.NewMigrationAgentServiceClient(hc, base),
		live: agentv1connect.NewLivenessAgentServiceClient(hc, base),
		t:    t.withDefaults(),
	}
}

// call runs fn under a deadline of d (or ctx's, if sooner).
func call[T any](ctx context.Context, d time.Duration, what string, fn func(context.Context) (T, error)) (T, error) {
	cctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	v, err := fn(cctx)
	if err != nil {
		var zero T
		return zero, fmt.Errorf("%s: %w", what, err)
	}
	return v, nil
}

// PrepareIncoming implements Agent.
func (a *connectAgent) PrepareIncoming(ctx context.Context, req *agentv1.PrepareIncomingRequest) (*agentv1.PrepareIncomingResponse, error) {
	return call(ctx, a.t.Prepare, "prepare incoming", func(c context.Context) (*agentv1.PrepareIncomingResponse, error) {
		r, err := a.mig.PrepareIncoming(c, connect.NewRequest(req))
		if err != nil {
			return nil, err
		}
		return r.Msg, nil
	})
}

func (a *connectAgent) incoming(ctx context.Context, d time.Duration, what string, req *agentv1.MigrationStepRequest,
	fn func(context.Context, *connect.Request[agentv1.MigrationStepRequest]) (*connect.Response[agentv1.IncomingStatusResponse], error)) (*agentv1.IncomingStatus, error) {
	return call(ctx, d, what, func(c context.Context) (*agentv1.IncomingStatus, error) {
		r, err := fn(c, connect.NewRequest(req))
		if err != nil {
			return nil, err
		}
		return r.Msg.Status, nil
	})
}

func (a *connectAgent) outgoing(ctx context.Context, d time.Duration, what string, req *agentv1.MigrationStepRequest,
	fn func(context.Context, *connect.Request[agentv1.MigrationStepRequest]) (*connect.Response[agentv1.OutgoingStatusResponse], error)) (*agentv1.OutgoingStatus, error) {
	return call(ctx, d, what, func(c context.Context) (*agentv1.OutgoingStatus, error) {
		r, err := fn(c, connect.NewRequest(req))
		if err != nil {
			return nil, err
		}
		return r.Msg.Status, nil
	})
}

func (a *connectAgent) step(ctx context.Context, what string, req *agentv1.MigrationStepRequest,
	fn func(context.Context, *connect.Request[agentv1.MigrationStepRequest]) (*connect.Response[agentv1.StepResponse], error)) error {
	_, err := call(ctx, a.t.Step, what, func(c context.Context) (struct{}, error) {
		_, err := fn(c, connect.NewRequest(req))
		return struct{}{}, err
	})
	return err
}

// QueryIncoming implements Agent.
func (a *connectAgent) QueryIncoming(ctx context.Context, req *agentv1.MigrationStepRequest) (*agentv1.IncomingStatus, error) {
	return a.incoming(ctx, a.t.Step, "query incoming", req, a.mig.QueryIncoming)
}

// ArmResume implements Agent.
func (a *connectAgent) ArmResume(ctx context.Context, req *agentv1.MigrationStepRequest) (*agentv1.IncomingStatus, error) {
	return a.incoming(ctx, a.t.Step, "arm resume", req, a.mig.ArmResume)
}

// FinishIncoming implements Agent.
func (a *connectAgent) FinishIncoming(ctx context.Context, req *agentv1.MigrationStepRequest) (*agentv1.IncomingStatus, error) {
	return a.incoming(ctx, a.t.Finish, "finish incoming", req, a.mig.FinishIncoming)
}

// AbortIncoming implements Agent.
func (a *connectAgent) AbortIncoming(ctx context.Context, req *agentv1.MigrationStepRequest) error {
	return a.step(ctx, "abort incoming", req, a.mig.AbortIncoming)
}

// StartOutgoing implements Agent.
func (a *connectAgent) StartOutgoing(ctx context.Context, req *agentv1.StartOutgoingRequest) (*agentv1.OutgoingStatus, error) {
	return call(ctx, a.t.Step*3, "start outgoing", func(c context.Context) (*agentv1.OutgoingStatus, error) {
		r, err := a.mig.StartOutgoing(c, connect.NewRequest(req))
		if err != nil {
			return nil, err
		}
		return r.Msg.Status, nil
	})
}

// QueryOutgoing implements Agent; its deadline leaves room for the long
// poll the request asks for.
func (a *connectAgent) QueryOutgoing(ctx context.Context, req *agentv1.MigrationStepRequest) (*agentv1.OutgoingStatus, error) {
	return a.outgoing(ctx, a.t.Step+time.Duration(req.WaitMs)*time.Millisecond, "query outgoing", req, a.mig.QueryOutgoing)
}

// ContinueOutgoing implements Agent.
func (a *connectAgent) ContinueOutgoing(ctx context.Context, req *agentv1.MigrationStepRequest) (*agentv1.OutgoingStatus, error) {
	return a.outgoing(ctx, a.t.Step, "continue outgoing", req, a.mig.ContinueOutgoing)
}

// FinishOutgoing implements Agent.
func (a *connectAgent) FinishOutgoing(ctx context.Context, req *agentv1.MigrationStepRequest) error {
	return a.step(ctx, "finish outgoing", req, a.mig.FinishOutgoing)
}

// StartPostcopy implements Agent.
func (a *connectAgent) StartPostcopy(ctx context.Context, req *agentv1.MigrationStepRequest) (*agentv1.OutgoingStatus, error) {
	return a.outgoing(ctx, a.t.Step, "start post-copy", req, a.mig.StartPostcopy)
}

// PauseMigration implements Agent.
func (a *connectAgent) PauseMigration(ctx context.Context, req *agentv1.MigrationStepRequest) error {
	return a.step(ctx, "pause migration", req, a.mig.PauseMigration)
}

// RecoverIncoming implements Agent: it returns the URI the destination
// listens on again.
func (a *connectAgent) RecoverIncoming(ctx context.Context, req *agentv1.MigrationStepRequest) (string, error) {
	return call(ctx, a.t.Step, "recover incoming", func(c context.Context) (string, error) {
		r, err := a.mig.RecoverIncoming(c, connect.NewRequest(req))
		if err != nil {
			return "", err
		}
		return r.Msg.Uri, nil
	})
}

// ResumeOutgoing implements Agent.
func (a *connectAgent) ResumeOutgoing(ctx context.Context, req *agentv1.ResumeOutgoingRequest) (*agentv1.OutgoingStatus, error) {
	return call(ctx, a.t.Step, "resume outgoing", func(c context.Context) (*agentv1.OutgoingStatus, error) {
		r, err := a.mig.ResumeOutgoing(c, connect.NewRequest(req))
		if err != nil {
			return nil, err
		}
		return r.Msg.Status, nil
	})
}

// ProbeListen implements Agent: the address of a one-shot TCP sink.
func (a *connectAgent) ProbeListen(ctx context.Context) (string, error) {
	return call(ctx, a.t.Step, "probe listen", func(c context.Context) (string, error) {
		r, err := a.mig.ProbeListen(c, connect.NewRequest(&agentv1.ProbeListenRequest{}))
		if err != nil {
			return "", err
		}
		return r.Msg.Address, nil
	})
}

// ProbeSend implements Agent: a short TCP send to address.
func (a *connectAgent) ProbeSend(ctx context.Context, address string, d time.Duration) error {
	_, err := call(ctx, a.t.Step+d, "probe send", func(c context.Context) (struct{}, error) {
		_, err := a.mig.ProbeSend(c, connect.NewRequest(&agentv1.ProbeSendRequest{Address: address, DurationMs: d.Milliseconds()}))
		return struct{}{}, err
	})
	return err
}

// StartVM implements Agent.
func (a *connectAgent) StartVM(ctx context.Context, spec *ferryv1.VMSpec) (*ferryv1.VMStatus, error) {
	return call(ctx, a.t.Prepare, "start VM", func(c context.Context) (*ferryv1.VMStatus, error) {
		r, err := a.vm.StartVM(c, connect.NewRequest(&agentv1.AgentStartVMRequest{Spec: spec}))
		if err != nil {
			return nil, err
		}
		return r.Msg.Status, nil
	})
}

// StopVM implements Agent.
func (a *connectAgent) StopVM(ctx context.Context, name string, force bool) (*ferryv1.VMStatus, error) {
	return call(ctx, a.t.Prepare, "stop VM", func(c context.Context) (*ferryv1.VMStatus, error) {
		r, err := a.vm.StopVM(c, connect.NewRequest(&agentv1.AgentStopVMRequest{Name: name, Force: force}))
		if err != nil {
			return nil, err
		}
		return r.Msg.Status, nil
	})
}

// DeleteVM implements Agent.
func (a *connectAgent) DeleteVM(ctx context.Context, name, migrationID string, removeDisks bool) error {
	_, err := call(ctx, a.t.Step*3, "delete VM", func(c context.Context) (struct{}, error) {
		_, err := a.vm.DeleteVM(c, connect.NewRequest(&agentv1.AgentDeleteVMRequest{Name: name, MigrationId: migrationID, RemoveLocalDisks: removeDisks}))
		return struct{}{}, err
	})
	return err
}

// PrepareDiskCopy implements Agent.
func (a *connectAgent) PrepareDiskCopy(ctx context.Context, req *agentv1.PrepareDiskCopyRequest) (*agentv1.PrepareDiskCopyResponse, error) {
	return call(ctx, a.t.Prepare, "prepare disk copy", func(c context.Context) (*agentv1.PrepareDiskCopyResponse, error) {
		r, err := a.disk.PrepareDiskCopy(c, connect.NewRequest(req))
		if err != nil {
			return nil, err
		}
		return r.Msg, nil
	})
}

// CopyDisks implements Agent; its deadline leaves room for the long poll.
func (a *connectAgent) CopyDisks(ctx context.Context, req *agentv1.CopyDisksRequest) (*agentv1.OutgoingStatus, error) {
	return call(ctx, a.t.Step+time.Duration(req.WaitMs)*time.Millisecond, "copy disks", func(c context.Context) (*agentv1.OutgoingStatus, error) {
		r, err := a.disk.CopyDisks(c, connect.NewRequest(req))
		if err != nil {
			return nil, err
		}
		return r.Msg.Status, nil
	})
}

// GetVM implements Agent.
func (a *connectAgent) GetVM(ctx context.Context, name string) (*ferryv1.VMStatus, error) {
	return call(ctx, a.t.Step, "get VM", func(c context.Context) (*ferryv1.VMStatus, error) {
		r, err := a.vm.GetVM(c, connect.NewRequest(&agentv1.AgentGetVMRequest{Name: name}))
		if err != nil {
			return nil, err
		}
		return r.Msg.Status, nil
	})
}

// CancelOutgoingVM implements Agent: CancelOutgoing, returning the source
// VM's status after it.
func (a *connectAgent) CancelOutgoingVM(ctx context.Context, req *agentv1.MigrationStepRequest) (*ferryv1.VMStatus, error) {
	return call(ctx, a.t.Step*3, "cancel outgoing", func(c context.Context) (*ferryv1.VMStatus, error) {
		r, err := a.mig.CancelOutgoing(c, connect.NewRequest(req))
		if err != nil {
			return nil, err
		}
		return r.Msg.Vm, nil
	})
}

// Pool caches one Agent per address.
type Pool struct {
	mu     sync.Mutex
	t      Timeouts
	agents map[string]Agent
	dial   func(addr string, t Timeouts) Agent
}

// NewPool returns a Pool of ConnectRPC agents with the given timeouts.
func NewPool(t Timeouts) *Pool {
	return &Pool{t: t, agents: map[string]Agent{}, dial: NewConnectAgent}
}

// Get returns the Agent at addr.
func (p *Pool) Get(addr string) Agent {
	p.mu.Lock()
	defer p.mu.Unlock()
	a, ok := p.agents[addr]
	if !ok {
		a = p.dial(addr, p.t)
		p.agents[addr] = a
	}
	return a
}
