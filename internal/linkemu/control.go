package linkemu

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"time"
)

// ControlTimeout bounds one exchange on the control socket.
const ControlTimeout = 5 * time.Second

type request struct {
	Op     string  `json:"op"` // "get" or "set"
	Params *Params `json:"params,omitempty"`
}

type reply struct {
	Status *Status `json:"status,omitempty"`
	Error  string  `json:"error,omitempty"`
}

// Serve answers Get and Set requests for f on a unix socket at path until
// ctx ends; it removes a stale socket file first and its own at the end.
// ready, if not nil, is closed once the socket listens.
func Serve(ctx context.Context, path string, f *Forwarder, ready chan<- struct{}) error {
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove stale control socket: %w", err)
	}
	l, err := net.Listen("unix", path)
	if err != nil {
		return fmt.Errorf("listen on control socket: %w", err)
	}
	defer os.Remove(path)
	go func() {
		<-ctx.Done()
		l.Close()
	}()
	if ready != nil {
		close(ready)
	}
	for {
		conn, err := l.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("accept on control socket: %w", err)
		}
		go handle(conn, f)
	}
}

func handle(conn net.Conn, f *Forwarder) {
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(ControlTimeout))
	var req request
	var rep reply
	if err := json.NewDecoder(conn).Decode(&req); err != nil {
		rep.Error = fmt.Sprintf("decode request: %v", err)
	} else {
		switch req.Op {
		case "get":
		case "set":
			if req.Params == nil {
				rep.Error = "set without params"
			} else if err := f.Set(*req.Params); err != nil {
				rep.Error = err.Error()
			}
		default:
			rep.Error = fmt.Sprintf("unknown op %q (want get or set)", req.Op)
		}
	}
	if rep.Error == "" {
		st := f.Status()
		rep.Status = &st
	}
	_ = json.NewEncoder(conn).Encode(rep)
}

func call(ctx context.Context, path string, req request) (Status, error) {
	ctx, cancel := context.WithTimeout(ctx, ControlTimeout)
	defer cancel()
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", path)
	if err != nil {
		return Status{}, fmt.Errorf("link emulator control %s: %w", path, err)
	}
	defer conn.Close()
	if dl, ok := ctx.Deadline(); ok {
		_ = conn.SetDeadline(dl)
	}
	if err := json.NewEncoder(conn).Encode(req); err != nil {
		return Status{}, fmt.Errorf("link emulator control %s: send: %w", path, err)
	}
	var rep reply
	if err := json.NewDecoder(conn).Decode(&rep); err != nil {
		return Status{}, fmt.Errorf("link emulator control %s: read reply: %w", path, err)
	}
	if rep.Error != "" {
		return Status{}, fmt.Errorf("link emulator: %s", rep.Error)
	}
	if rep.Status == nil {
		return Status{}, fmt.Errorf("link emulator control %s: empty reply", path)
	}
	return *rep.Status, nil
}

// Get asks the forwarder listening on path for its status.
func Get(ctx context.Context, path string) (Status, error) {
	return call(ctx, path, request{Op: "get"})
}

// Set gives the forwarder listening on path new parameters and returns its
// status after the change.
func Set(ctx context.Context, path string, p Params) (Status, error) {
	if err := p.Validate(); err != nil {
		return Status{}, err
	}
	return call(ctx, path, request{Op: "set", Params: &p})
}

// RunForwarder is the body of the forwarder process: it forwards between
// interfaces a and b with parameters p and answers on the control socket
// at controlPath, until ctx ends.
func RunForwarder(ctx context.Context, a, b, controlPath string, p Params) error {
	f, err := NewForwarder(a, b, p)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	serveErr := make(chan error, 1)
	go func() {
		err := Serve(ctx, controlPath, f, nil)
		if err != nil {
			cancel()
		}
		serveErr <- err
	}()
	runErr := f.Run(ctx)
	cancel()
	return errors.Join(runErr, <-serveErr)
}
