package replica_test

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"

	"connectrpc.com/connect"
	ferryv1 "github.com/ferryvm/ferry/gen/ferry/v1"
	"github.com/ferryvm/ferry/gen/ferry/v1/ferryv1connect"
	"github.com/ferryvm/ferry/internal/leader"
	"github.com/ferryvm/ferry/internal/replica"
)

// fakeView is a LeaderView the test sets by hand.
type fakeView struct {
	self string
	mu   sync.Mutex
	l    leader.Info
	ok   bool
}

func (v *fakeView) set(l leader.Info, ok bool) { v.mu.Lock(); v.l, v.ok = l, ok; v.mu.Unlock() }

// Leading: the fake leads when its view names it (set by newNode).
func (v *fakeView) Leading() bool {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.ok && v.l.Name == v.self
}
func (v *fakeView) Leader() (leader.Info, bool) {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.l, v.ok
}

// fakeVMService answers with the replica's name so the test sees who served.
type fakeVMService struct {
	ferryv1connect.UnimplementedVMServiceHandler
	name string
}

func (f *fakeVMService) CreateVM(_ context.Context, req *connect.Request[ferryv1.CreateVMRequest]) (*connect.Response[ferryv1.CreateVMResponse], error) {
	return connect.NewResponse(&ferryv1.CreateVMResponse{Vm: &ferryv1.VM{Host: f.name, Spec: req.Msg.Spec}}), nil
}

func (f *fakeVMService) ListVMs(context.Context, *connect.Request[ferryv1.ListVMsRequest]) (*connect.Response[ferryv1.ListVMsResponse], error) {
	return connect.NewResponse(&ferryv1.ListVMsResponse{Vms: []*ferryv1.VM{{Host: f.name}}}), nil
}

type node struct {
	view *fakeView
	url  string
	srv  *httptest.Server
	vms  ferryv1connect.VMServiceClient
}

func newNode(t *testing.T, name string) *node {
	t.Helper()
	n := &node{view: &fakeView{self: name}}
	mux := http.NewServeMux()
	mux.Handle(ferryv1connect.NewVMServiceHandler(&fakeVMService{name: name}))
	n.srv = httptest.NewServer(replica.NewForwarder(name, n.view, mux))
	t.Cleanup(n.srv.Close)
	n.url = n.srv.URL
	n.vms = ferryv1connect.NewVMServiceClient(http.DefaultClient, n.url)
	return n
}

func create(n *node) (string, error) {
	resp, err := n.vms.CreateVM(context.Background(), connect.NewRequest(&ferryv1.CreateVMRequest{Spec: &ferryv1.VMSpec{Name: "v"}}))
	if err != nil {
		return "", err
	}
	if resp.Msg.Vm.Spec.GetName() != "v" {
		return "", errors.New("request body lost on the way")
	}
	return resp.Msg.Vm.Host, nil
}

func TestForwarder(t *testing.T) {
	a, b := newNode(t, "a"), newNode(t, "b")
	ctx := context.Background()

	// No leader: writes refused with Unavailable, reads served.
	if _, err := create(b); connect.CodeOf(err) != connect.CodeUnavailable {
		t.Fatalf("create with no leader: %v, want Unavailable", err)
	}
	if l, err := b.vms.ListVMs(ctx, connect.NewRequest(&ferryv1.ListVMsRequest{})); err != nil || l.Msg.Vms[0].Host != "b" {
		t.Fatalf("list with no leader: %v %v, want served by b", l, err)
	}

	// a leads: b forwards writes to a and serves reads itself.
	for _, n := range []*node{a, b} {
		n.view.set(leader.Info{Name: "a", URL: a.url}, true)
	}
	if who, err := create(b); err != nil || who != "a" {
		t.Fatalf("create through the follower served by %q, %v; want a", who, err)
	}
	if who, err := create(a); err != nil || who != "a" {
		t.Fatalf("create on the leader served by %q, %v; want a", who, err)
	}
	if l, _ := b.vms.ListVMs(ctx, connect.NewRequest(&ferryv1.ListVMsRequest{})); l.Msg.Vms[0].Host != "b" {
		t.Fatalf("list through the follower served by %s, want b itself", l.Msg.Vms[0].Host)
	}

	// Stale views: b thinks a leads, a thinks b leads. The request is
	// forwarded once, then refused — no loop.
	a.view.set(leader.Info{Name: "b", URL: b.url}, true)
	if _, err := create(b); connect.CodeOf(err) != connect.CodeUnavailable {
		t.Fatalf("create with stale views: %v, want Unavailable", err)
	}

	// The leader is gone: a clear Unavailable naming it.
	a.srv.Close()
	_, err := create(b)
	if connect.CodeOf(err) != connect.CodeUnavailable {
		t.Fatalf("create with the leader dead: %v, want Unavailable", err)
	}
	t.Logf("leader dead: %v", err)
}
