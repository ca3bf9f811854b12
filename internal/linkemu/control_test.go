package linkemu

import (
	"context"
	"errors"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// fakeForwarder is a Forwarder without packet sockets: enough for the
// control protocol.
func fakeForwarder(p Params) *Forwarder {
	return &Forwarder{dirs: map[Direction]*direction{
		AToB: {pipe: NewPipe(p, 1), wake: make(chan struct{}, 1)},
		BToA: {pipe: NewPipe(p, 2), wake: make(chan struct{}, 1)},
	}}
}

func TestControlGetSet(t *testing.T) {
	f := fakeForwarder(Params{Delay: 5 * time.Millisecond})
	path := filepath.Join(t.TempDir(), "link.sock")
	ctx, cancel := context.WithCancel(context.Background())
	ready := make(chan struct{})
	done := make(chan error, 1)
	go func() { done <- Serve(ctx, path, f, ready) }()
	<-ready

	st, err := Get(ctx, path)
	if err != nil || st.Params.Delay != 5*time.Millisecond {
		t.Fatalf("get: %+v %v", st, err)
	}
	want := Params{Delay: 20 * time.Millisecond, Rate: 48 << 20, Loss: 0.001}
	if st, err = Set(ctx, path, want); err != nil || st.Params != want {
		t.Fatalf("set: %+v %v", st, err)
	}
	for d, pipe := range map[Direction]*Pipe{AToB: f.dirs[AToB].pipe, BToA: f.dirs[BToA].pipe} {
		if pipe.Params() != want {
			t.Errorf("%s pipe has %+v after set", d, pipe.Params())
		}
	}
	if _, err := Set(ctx, path, Params{Loss: 2}); !errors.Is(err, ErrInvalidParams) {
		t.Errorf("set bad params: %v", err)
	}
	// The server validates too (a client that skips Validate).
	if _, err := call(ctx, path, request{Op: "set", Params: &Params{Delay: -1}}); err == nil || !strings.Contains(err.Error(), "negative") {
		t.Errorf("server-side validation: %v", err)
	}
	if _, err := call(ctx, path, request{Op: "teleport"}); err == nil || !strings.Contains(err.Error(), "unknown op") {
		t.Errorf("unknown op: %v", err)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("serve: %v", err)
	}
	if _, err := Get(context.Background(), path); err == nil {
		t.Error("control socket still answers after Serve returned")
	}
}
