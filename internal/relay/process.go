package relay

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"time"

	"github.com/ferryvm/ferry/internal/pki"
	"golang.org/x/sys/unix"
)

// A relay run as a process of its own (`ferry stream-relay`, started by
// the agent): its channels outlive an agent restart, as the QEMU it
// carries for does. The agent hands it a ProcessSpec on its standard
// input, reads one ready line from its standard output, and steers it
// through a Unix control socket (one JSON request and one JSON reply per
// connection); a restarted agent adopts it through that socket. The
// process ends when told to close, when it was told to stop accepting and
// its last channel ended, or when the QEMU it carries for is gone.

// Relay modes of a ProcessSpec.
const (
	ModeOut = "out" // the source end (Outbound)
	ModeIn  = "in"  // the destination end (Inbound)
)

// ProcessSpec is what a relay process runs.
type ProcessSpec struct {
	// Mode is ModeOut or ModeIn.
	Mode string `json:"mode"`
	// Listen is the Unix socket QEMU connects to (out) or the TCP address
	// the peer host dials, "IP:0" picking a port (in).
	Listen string `json:"listen"`
	// Target is the peer host's HOST:PORT (out) or QEMU's Unix socket (in).
	Target string `json:"target"`
	// Peer is the other host's name, verified in its stream certificate.
	Peer string `json:"peer"`
	// UID, when not negative, owns the out socket (QEMU's user).
	UID int `json:"uid"`
	// CA, Cert and Key are PEM: the cluster CA and this host's stream
	// certificate and key.
	CA   []byte `json:"ca"`
	Cert []byte `json:"cert"`
	Key  []byte `json:"key"`
	// Control is the control socket's path.
	Control string `json:"control"`
	// WatchPID is the QEMU the relay carries for: the process ends once it
	// is gone (0: never).
	WatchPID int `json:"watchPid"`
}

// Check reports the first missing or malformed field.
func (s *ProcessSpec) Check() error {
	switch {
	case s.Mode != ModeOut && s.Mode != ModeIn:
		return fmt.Errorf("relay spec: mode %q: want %q or %q", s.Mode, ModeOut, ModeIn)
	case s.Listen == "" || s.Target == "":
		return errors.New("relay spec: listen and target are both required")
	case s.Peer == "":
		return errors.New("relay spec: peer (the other host's name) is required")
	case s.Control == "":
		return errors.New("relay spec: control (the control socket's path) is required")
	case len(s.CA) == 0 || len(s.Cert) == 0 || len(s.Key) == 0:
		return errors.New("relay spec: ca, cert and key (PEM) are all required")
	}
	return nil
}

// tlsConfig is the spec's end of the TLS between the hosts.
func (s *ProcessSpec) tlsConfig() (*tls.Config, error) {
	cert, err := tls.X509KeyPair(s.Cert, s.Key)
	if err != nil {
		return nil, fmt.Errorf("relay spec: stream certificate: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(s.CA) {
		return nil, errors.New("relay spec: ca holds no certificate")
	}
	if s.Mode == ModeIn {
		return pki.StreamServerTLS(pool, cert, s.Peer), nil
	}
	return pki.StreamClientTLS(pool, cert, s.Peer), nil
}

// controlRequest is one request on the control socket.
type controlRequest struct {
	Op     string `json:"op"` // info, retarget, stop, close
	Target string `json:"target,omitempty"`
}

// controlReply answers it.
type controlReply struct {
	Endpoint string `json:"endpoint,omitempty"`
	PID      int    `json:"pid,omitempty"`
	Stats    Stats  `json:"stats"`
	Error    string `json:"error,omitempty"`
}

// endpoint is what QEMU (out: "unix:PATH") or the peer host (in:
// "IP:PORT") is given.
type endpoint interface {
	Endpoint() string
	Retarget(target string) error
	StopAccepting()
	Close() error
	Stats() Stats
	openConns() int
}

// RunProcess is the relay process: it starts the relay spec describes,
// writes the ready line to ready, and serves the control socket until the
// relay ends (see the comment above) or ctx does.
func RunProcess(ctx context.Context, spec ProcessSpec, ready io.Writer, log *slog.Logger) error {
	if err := spec.Check(); err != nil {
		return err
	}
	cfg, err := spec.tlsConfig()
	if err != nil {
		return err
	}
	var ep endpoint
	if spec.Mode == ModeOut {
		ep, err = ListenOutbound(spec.Listen, spec.Target, cfg, spec.UID, log)
	} else {
		ep, err = ListenInbound(spec.Listen, spec.Target, cfg, log)
	}
	if err != nil {
		return err
	}
	defer func() { _ = ep.Close() }()
	if err := os.Remove(spec.Control); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("relay control socket: %w", err)
	}
	ctl, err := net.Listen("unix", spec.Control)
	if err != nil {
		return fmt.Errorf("relay control socket: %w", err)
	}
	defer func() { _ = ctl.Close(); _ = os.Remove(spec.Control) }()
	if err := os.Chmod(spec.Control, 0o600); err != nil {
		return fmt.Errorf("relay control socket %s: %w", spec.Control, err)
	}
	line, _ := json.Marshal(controlReply{Endpoint: ep.Endpoint(), PID: os.Getpid()})
	if _, err := fmt.Fprintf(ready, "%s\n", line); err != nil {
		return fmt.Errorf("relay ready line: %w", err)
	}

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stopped := make(chan struct{}, 1)
	go serveControl(ctl, ep, cancel, stopped, log)
	var gone <-chan struct{}
	if spec.WatchPID > 0 {
		gone = watchPID(ctx, spec.WatchPID)
	}
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	draining := false
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-gone:
			log.Info("relay: the QEMU it carried for is gone", "pid", spec.WatchPID, "stats", ep.Stats())
			return nil
		case <-stopped:
			draining = true
		case <-tick.C:
			if draining && ep.openConns() == 0 {
				log.Info("relay: stopped and its last channel ended", "stats", ep.Stats())
				return nil
			}
		}
	}
}

// serveControl answers the control socket until it closes.
func serveControl(ln net.Listener, ep endpoint, closeAll func(), stopped chan<- struct{}, log *slog.Logger) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		func() {
			defer func() { _ = c.Close() }()
			_ = c.SetDeadline(time.Now().Add(5 * time.Second))
			var req controlRequest
			var rep controlReply
			if err := json.NewDecoder(io.LimitReader(c, 4096)).Decode(&req); err != nil {
				rep.Error = "bad request: " + err.Error()
			} else {
				switch req.Op {
				case "info":
				case "retarget":
					if err := ep.Retarget(req.Target); err != nil {
						rep.Error = err.Error()
					}
				case "stop":
					ep.StopAccepting()
					select {
					case stopped <- struct{}{}:
					default:
					}
				case "close":
					defer closeAll()
				default:
					rep.Error = fmt.Sprintf("unknown op %q: want info, retarget, stop or close", req.Op)
				}
			}
			rep.Endpoint, rep.PID, rep.Stats = ep.Endpoint(), os.Getpid(), ep.Stats()
			if err := json.NewEncoder(c).Encode(rep); err != nil {
				log.Warn("relay: control reply", "err", err)
			}
		}()
	}
}

// watchPID's channel closes once process pid is gone (or cannot be
// watched: then the relay would outlive it, so it is treated as gone).
func watchPID(ctx context.Context, pid int) <-chan struct{} {
	gone := make(chan struct{})
	fd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		close(gone)
		return gone
	}
	go func() {
		defer close(gone)
		defer func() { _ = unix.Close(fd) }()
		for ctx.Err() == nil {
			if exited, err := pidfdExited(fd, 500*time.Millisecond); exited || err != nil {
				return
			}
		}
	}()
	return gone
}

// pidfdExited waits up to d for the process of pidfd fd to end and
// reports whether it did (an error: it cannot be watched).
func pidfdExited(fd int, d time.Duration) (bool, error) {
	fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
	n, err := unix.Poll(fds, int(d.Milliseconds()))
	if errors.Is(err, unix.EINTR) {
		return false, nil
	}
	return n > 0, err
}

// readReady reads the relay process's ready line.
func readReady(r io.Reader) (controlReply, error) {
	var rep controlReply
	line, err := bufio.NewReader(r).ReadBytes('\n')
	if err != nil {
		return rep, err
	}
	if err := json.Unmarshal(line, &rep); err != nil {
		return rep, fmt.Errorf("relay ready line %q: %w", line, err)
	}
	if rep.Endpoint == "" || rep.PID <= 0 {
		return rep, fmt.Errorf("relay ready line %q: no endpoint or pid", line)
	}
	return rep, nil
}
