// Package relay carries a QEMU migration's channels between two hosts on
// Ferry's own TLS, so that QEMU itself sends and receives in plaintext on
// local Unix sockets:
//
//	source QEMU ──unix──▶ Outbound ══TLS/TCP══▶ Inbound ──unix──▶ destination QEMU
//
// Each channel QEMU opens (the main stream with its return path, multifd
// channels, the post-copy preempt channel, a recovery's new ones) is one
// Unix connection on the source, one TLS connection between the hosts and
// one Unix connection on the destination, copied both ways.
//
// Why not QEMU's own TLS: QEMU hands GnuTLS one record per page it
// queues, so every 4 KiB page costs a record and a send() on its
// migration thread. Measured on the bench's 2-core machine (QEMU 10.0.2,
// idle 1 GiB guest, 112 MiB to send): 1.51–1.62 s on QEMU's TLS against
// 0.86–0.98 s in plaintext. The relay reads and writes up to 256 KiB at a
// time. Its TCP sockets also have Nagle off (Go's default), which QEMU
// leaves on for the main and preempt channels: a post-copy's page request
// and the faulted page then wait for no delayed ACK.
//
// The wire between the hosts is TLS 1.3 with the hosts' stream
// certificates (pki.KindQEMU), verified both ways exactly as QEMU's
// tls-hostname and tls-authz do, so either end may also be a QEMU that
// speaks TLS itself.
//
// A channel ends when either side closes or fails: the other side is
// closed at once, so QEMU sees a broken link as an error on its own
// socket (a pre-copy fails, a post-copy pauses) and never waits on TCP's
// retransmission timeout behind a relay.
package relay

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

// DialTimeout bounds one channel's connection and TLS handshake to the
// peer host.
const DialTimeout = 10 * time.Second

// bufSize is each direction's copy buffer.
const bufSize = 256 << 10

// Stats count what a relay carried.
type Stats struct {
	// Channels is the number of channels opened.
	Channels int64
	// Sent and Received are payload bytes toward and from the peer host.
	Sent, Received int64
}

// relay is what Outbound and Inbound share: the accept loop, the open
// channels and the counters.
type relay struct {
	ln     net.Listener
	log    *slog.Logger
	mu     sync.Mutex
	closed bool
	conns  map[net.Conn]struct{}
	wg     sync.WaitGroup

	channels, sent, received atomic.Int64

	// ctx ends at Close: a channel still dialing or shaking hands (a cut
	// link) gives up then, not at DialTimeout.
	ctx    context.Context
	cancel context.CancelFunc
}

func (r *relay) init(ln net.Listener, log *slog.Logger) {
	if log == nil {
		log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	r.ln, r.log, r.conns = ln, log, map[net.Conn]struct{}{}
	r.ctx, r.cancel = context.WithCancel(context.Background())
}

// track registers open connections; false once the relay is closed (the
// caller closes them).
func (r *relay) track(cs ...net.Conn) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return false
	}
	for _, c := range cs {
		r.conns[c] = struct{}{}
	}
	return true
}

// drop closes and forgets connections of a channel that will not open.
func (r *relay) drop(cs ...net.Conn) {
	for _, c := range cs {
		_ = c.Close()
	}
	r.untrack(cs...)
}

func (r *relay) untrack(cs ...net.Conn) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, c := range cs {
		delete(r.conns, c)
	}
}

// serve accepts until the listener closes, handing each connection to
// open in its own goroutine.
func (r *relay) serve(open func(net.Conn)) {
	defer r.wg.Done()
	for {
		c, err := r.ln.Accept()
		if err != nil {
			if !errors.Is(err, net.ErrClosed) {
				r.log.Warn("relay stopped accepting", "err", err)
			}
			return
		}
		if !r.track(c) {
			_ = c.Close()
			return
		}
		r.wg.Add(1)
		go func() {
			defer r.wg.Done()
			open(c)
		}()
	}
}

// openConns is the number of connections open (both ends of each channel).
func (r *relay) openConns() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.conns)
}

// Stats returns the counters so far.
func (r *relay) Stats() Stats {
	return Stats{Channels: r.channels.Load(), Sent: r.sent.Load(), Received: r.received.Load()}
}

// StopAccepting closes the listener and leaves the open channels to end
// on their own (a migration that ended: its last bytes may still be on
// their way). Close ends them.
func (r *relay) StopAccepting() {
	if err := r.ln.Close(); err != nil && !errors.Is(err, net.ErrClosed) {
		r.log.Warn("relay: close the listener", "err", err)
	}
}

// Close stops accepting, closes every open channel and waits for their
// goroutines. It is safe to call more than once.
func (r *relay) Close() error {
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		return nil
	}
	r.closed = true
	r.cancel()
	err := r.ln.Close()
	for c := range r.conns {
		_ = c.Close()
	}
	r.mu.Unlock()
	r.wg.Wait()
	if errors.Is(err, net.ErrClosed) {
		err = nil
	}
	return err
}

// Linger is how long a channel stays open after QEMU closed its local
// end, for the peer's last bytes (and the end of its direction) to
// arrive; then the channel is closed whatever the peer does (a link that
// died carries nothing more).
const Linger = 5 * time.Second

// pipe copies local ⇄ remote until both directions ended, then closes
// both connections. QEMU's end of a direction — end of stream, or a reset
// after its last bytes (a QEMU closing its socket with return-path bytes
// unread) — is passed on as a half-close (TLS close_notify) once
// everything read has been written, so the last bytes of a stream are
// never cut off; the peer then gets Linger to finish its direction. An
// error on the peer host's side closes both at once: QEMU sees its
// channel fail and pauses or fails the migration. raw is remote's TCP
// connection beneath TLS: closing it, not the TLS connection, never waits
// on a blocked write.
func (r *relay) pipe(local, remote, raw net.Conn) {
	r.channels.Add(1)
	var once sync.Once
	shut := func() {
		once.Do(func() {
			_ = local.Close()
			_ = raw.Close()
		})
	}
	defer r.untrack(local, remote, raw)
	defer shut()
	out := make(chan bool, 1) // local → remote ended; true: gracefully
	go func() {
		// Whatever way QEMU's side ended, what was read went out.
		ok := copyCount(remote, local, &r.sent, false) != writeFailed && closeWrite(remote) == nil
		if !ok {
			shut()
		}
		out <- ok
	}()
	in := make(chan bool, 1) // remote → local ended; true: gracefully
	go func() {
		ok := copyCount(local, remote, &r.received, true) == endOfStream
		if ok {
			_ = closeWrite(local) // QEMU may have closed already
		} else {
			shut()
		}
		in <- ok
	}()
	select {
	case ok := <-out:
		if !ok {
			<-in
			return
		}
		t := time.NewTimer(Linger)
		defer t.Stop()
		select {
		case <-in:
		case <-t.C:
			shut()
			<-in
		}
	case <-in:
		<-out
	}
}

// closeWrite half-closes c if it can.
func closeWrite(c net.Conn) error {
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}

// How a copy ended.
type copyEnd int

const (
	endOfStream copyEnd = iota // the source's end of stream
	readFailed                 // reading the source failed (after everything before was written)
	writeFailed                // writing failed
)

// copyCount copies src to dst, adding what it wrote to n, until src ends
// or fails. A failed write ends it unless drain: then src is read to its
// end and discarded (QEMU closed its socket: the peer's remaining bytes
// have nowhere to go, and leaving them unread would make closing the TCP
// connection reset it); the end is then src's.
func copyCount(dst io.Writer, src io.Reader, n *atomic.Int64, drain bool) copyEnd {
	buf := make([]byte, bufSize)
	writing := true
	for {
		k, err := src.Read(buf)
		if k > 0 && writing {
			w, werr := dst.Write(buf[:k])
			n.Add(int64(w))
			if werr != nil {
				if !drain {
					return writeFailed
				}
				writing = false
			}
		}
		switch {
		case errors.Is(err, io.EOF):
			return endOfStream
		case err != nil:
			return readFailed
		}
	}
}

// Outbound is the source end: QEMU connects to its Unix socket, and each
// connection is carried to the peer host's Inbound (or TLS-speaking QEMU).
type Outbound struct {
	relay
	path   string
	cfg    *tls.Config
	target atomic.Pointer[string]
}

// ListenOutbound listens on the Unix socket path (removing a stale one)
// and carries every connection to target ("HOST:PORT") on TLS with cfg.
// uid, when not negative, becomes the socket's owner (QEMU's user).
func ListenOutbound(path, target string, cfg *tls.Config, uid int, log *slog.Logger) (*Outbound, error) {
	if _, _, err := net.SplitHostPort(target); err != nil {
		return nil, fmt.Errorf("relay target %q: want HOST:PORT: %w", target, err)
	}
	if cfg == nil {
		return nil, errors.New("relay to " + target + ": no TLS config")
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("relay socket %s: %w", path, err)
	}
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("relay socket: %w", err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		_ = ln.Close()
		return nil, fmt.Errorf("relay socket %s: %w", path, err)
	}
	if uid >= 0 {
		if err := os.Lchown(path, uid, -1); err != nil {
			_ = ln.Close()
			return nil, fmt.Errorf("relay socket %s: %w", path, err)
		}
	}
	o := &Outbound{path: path, cfg: cfg}
	o.init(ln, log)
	o.target.Store(&target)
	o.wg.Add(1)
	go o.serve(o.open)
	return o, nil
}

// URI is the migration URI QEMU is given ("unix:PATH").
func (o *Outbound) URI() string { return "unix:" + o.path }

// Endpoint is URI: what QEMU is given.
func (o *Outbound) Endpoint() string { return o.URI() }

// Target is where new channels go.
func (o *Outbound) Target() string { return *o.target.Load() }

// Retarget sends the channels opened from now on to target (a post-copy
// recovery's new address); open ones stay where they are.
func (o *Outbound) Retarget(target string) error {
	if _, _, err := net.SplitHostPort(target); err != nil {
		return fmt.Errorf("relay target %q: want HOST:PORT: %w", target, err)
	}
	o.target.Store(&target)
	return nil
}

func (o *Outbound) open(local net.Conn) {
	target := o.Target()
	ctx, cancel := context.WithTimeout(o.ctx, DialTimeout)
	defer cancel()
	raw, err := (&net.Dialer{}).DialContext(ctx, "tcp", target)
	if err != nil {
		o.log.Warn("relay: cannot reach the peer host; the channel is closed", "target", target, "err", err)
		o.drop(local)
		return
	}
	if !o.track(raw) {
		o.drop(raw, local)
		return
	}
	if err := capBackoff(raw); err != nil {
		o.log.Debug("relay: the default TCP backoff stays", "err", err)
	}
	tc := tls.Client(newLowatConn(raw), o.cfg)
	if err := tc.HandshakeContext(ctx); err != nil {
		o.log.Warn("relay: TLS with the peer host failed; the channel is closed", "target", target, "err", err)
		o.drop(raw, local)
		return
	}
	o.pipe(local, tc, raw)
}

// Inbound is the destination end: it accepts the peer host's TLS
// connections on a TCP address and carries each to QEMU's Unix socket.
type Inbound struct {
	relay
	cfg    *tls.Config
	target atomic.Pointer[string]
}

// ListenInbound listens on addr ("IP:0" picks a port) for TLS with cfg
// and carries every connection to the Unix socket target.
func ListenInbound(addr, target string, cfg *tls.Config, log *slog.Logger) (*Inbound, error) {
	if cfg == nil {
		return nil, errors.New("relay on " + addr + ": no TLS config")
	}
	if target == "" {
		return nil, errors.New("relay on " + addr + ": no QEMU socket to carry to")
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("relay listen on %s: %w", addr, err)
	}
	in := &Inbound{cfg: cfg}
	in.init(ln, log)
	in.target.Store(&target)
	in.wg.Add(1)
	go in.serve(in.open)
	return in, nil
}

// Addr is the TCP address the relay listens on ("IP:PORT").
func (in *Inbound) Addr() string { return in.ln.Addr().String() }

// Endpoint is Addr: what the peer host dials.
func (in *Inbound) Endpoint() string { return in.Addr() }

// Retarget carries the channels accepted from now on to QEMU's Unix
// socket target (a post-copy recovery's new listener).
func (in *Inbound) Retarget(target string) error {
	if target == "" {
		return errors.New("relay retarget: no QEMU socket to carry to")
	}
	in.target.Store(&target)
	return nil
}

func (in *Inbound) open(raw net.Conn) {
	ctx, cancel := context.WithTimeout(in.ctx, DialTimeout)
	defer cancel()
	if err := capBackoff(raw); err != nil {
		in.log.Debug("relay: the default TCP backoff stays", "err", err)
	}
	tc := tls.Server(newLowatConn(raw), in.cfg)
	if err := tc.HandshakeContext(ctx); err != nil {
		in.log.Warn("relay: refused a connection (TLS)", "peer", raw.RemoteAddr().String(), "err", err)
		in.drop(raw)
		return
	}
	target := *in.target.Load()
	local, err := (&net.Dialer{}).DialContext(ctx, "unix", target)
	if err != nil {
		in.log.Warn("relay: QEMU's socket refused the channel", "socket", target, "err", err)
		in.drop(raw)
		return
	}
	if !in.track(local) {
		in.drop(local, raw)
		return
	}
	in.pipe(local, tc, raw)
}
