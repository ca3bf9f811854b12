package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"time"

	agentv1 "github.com/ferryvm/ferry/gen/ferry/agent/v1"
	"github.com/ferryvm/ferry/internal/qmp"
	"golang.org/x/sys/unix"
)

// startPostcopy switches a running pre-copy to post-copy. With
// pause-before-switchover the source then pauses at pre-switchover, exactly
// like a pre-copy switchover, so the owner CAS still happens while both
// QEMUs are paused.
func (a *Agent) startPostcopy(ctx context.Context, name, id string) (*agentv1.OutgoingStatus, error) {
	v, out, mon, err := a.outgoingMonitor(name, id)
	if err != nil {
		return nil, err
	}
	out.mu.Lock()
	requested := out.postcopyRequested || !out.postcopyAt.IsZero()
	out.mu.Unlock()
	if requested {
		return v.outgoingStatus(ctx) // a retried step
	}
	if err := mon.MigrateStartPostcopy(ctx); err != nil {
		return nil, fmt.Errorf("migrate-start-postcopy: %w", err)
	}
	out.mu.Lock()
	out.postcopyRequested = true
	out.mu.Unlock()
	a.log.Info("post-copy requested", "vm", name, "migration", id)
	return v.outgoingStatus(ctx)
}

// recoverIncoming makes a destination whose post-copy paused (broken link)
// listen again, on a fresh port of this host's migration address.
func (a *Agent) recoverIncoming(ctx context.Context, name, id string) (string, error) {
	v, err := a.lookup(name)
	if err != nil {
		return "", err
	}
	v.mu.Lock()
	mon, in := v.mon, v.in
	if in == nil {
		in = v.arrivedIn // adopted: a post-copy arrival runs here already
	}
	v.mu.Unlock()
	if mon == nil {
		return "", failedPrecondition("VM %s has no QEMU on host %s", name, a.cfg.Name)
	}
	// In band, query-migrate waits for QEMU's main thread, and a post-copy
	// destination's can be blocked on a page the broken link does not
	// bring (a device touching guest RAM): migrate-recover, out of band,
	// is what unblocks it, so the query gets a short bound and is skipped
	// when unanswered.
	qctx, cancel := context.WithTimeout(ctx, recoverQueryTimeout)
	info, qerr := mon.QueryMigrate(qctx)
	cancel()
	switch {
	case qerr == nil && info.CurrentStatus() == qmp.MigrationStatusPostcopyRecover:
		v.mu.Lock()
		uri := v.recoverURI
		v.mu.Unlock()
		if uri != "" {
			return uri, nil // a retried step: already listening there
		}
	case qerr != nil && ctx.Err() == nil && errors.Is(qerr, context.DeadlineExceeded):
		a.log.Warn("post-copy destination's main loop does not answer (blocked on a missing page?): recovering out of band",
			"vm", name, "migration", id, "waited", recoverQueryTimeout, "oob", mon.OOB())
	}
	var uri string
	if in != nil && in.relayPeer != "" {
		if uri, err = v.recoverRelayed(ctx, mon, in.relayPeer); err != nil {
			return "", err
		}
	} else {
		port, err := freePort(a.cfg.MigrationIP)
		if err != nil {
			return "", err
		}
		uri = "tcp:" + net.JoinHostPort(a.cfg.MigrationIP, strconv.Itoa(port))
		if err := mon.MigrateRecover(ctx, uri); err != nil {
			return "", fmt.Errorf("migrate-recover %s: %w", uri, err)
		}
	}
	v.mu.Lock()
	v.recoverURI = uri
	v.mu.Unlock()
	a.log.Info("post-copy recovery listening", "vm", name, "migration", id, "uri", uri)
	return uri, nil
}

// recoverQueryTimeout bounds recoverIncoming's look at the destination's
// migration state before migrate-recover.
const recoverQueryTimeout = 2 * time.Second

// resumeOutgoing reconnects a paused post-copy source to the destination.
func (a *Agent) resumeOutgoing(ctx context.Context, req *agentv1.ResumeOutgoingRequest) (*agentv1.OutgoingStatus, error) {
	v, _, err := a.outgoingFor(req.Name, req.MigrationId)
	if err != nil {
		return nil, err
	}
	v.mu.Lock()
	mon := v.mon
	v.mu.Unlock()
	if mon == nil {
		return nil, failedPrecondition("the source QEMU of VM %s on host %s is gone", req.Name, a.cfg.Name)
	}
	info, err := mon.QueryMigrate(ctx)
	if err != nil {
		return nil, fmt.Errorf("query-migrate: %w", err)
	}
	if s := info.CurrentStatus(); s != qmp.MigrationStatusPostcopyPaused {
		if postcopyStarted(s) || s == qmp.MigrationStatusCompleted {
			return v.outgoingStatus(ctx) // resumed already: a retried step
		}
		return nil, failedPrecondition("VM %s's migration is %s, not postcopy-paused: nothing to resume", req.Name, s)
	}
	qemuURI := req.Uri
	if peer := v.outgoingRelayPeer(); peer != "" {
		if qemuURI, err = v.resumeRelayed(peer, req.Uri); err != nil {
			return nil, err
		}
	}
	if err := mon.Migrate(ctx, qemuURI, qmp.MigrateOptions{Resume: true}); err != nil {
		return nil, fmt.Errorf("migrate resume to %s: %w", req.Uri, err)
	}
	a.log.Info("post-copy resumed", "vm", req.Name, "migration", req.MigrationId, "uri", req.Uri)
	return v.outgoingStatus(ctx)
}

func freePort(ip string) (int, error) {
	l, err := net.Listen("tcp", net.JoinHostPort(ip, "0"))
	if err != nil {
		return 0, fmt.Errorf("pick a port on %s: %w", ip, err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// probeListen opens a one-connection TCP sink on the migration address.
func (a *Agent) probeListen() (string, error) {
	if a.cfg.MigrationIP == "" {
		return "", failedPrecondition("host %s has no migration address", a.cfg.Name)
	}
	l, err := net.Listen("tcp", net.JoinHostPort(a.cfg.MigrationIP, "0"))
	if err != nil {
		return "", fmt.Errorf("probe listen: %w", err)
	}
	go func() {
		defer l.Close()
		_ = l.(*net.TCPListener).SetDeadline(time.Now().Add(30 * time.Second))
		c, err := l.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(30 * time.Second))
		_, _ = io.Copy(io.Discard, c)
	}()
	return l.Addr().String(), nil
}

// probeSend streams zeros to a probe sink for d and reports the rate: the
// bandwidth a migration between the two hosts can expect.
func probeSend(ctx context.Context, addr string, d time.Duration) (*agentv1.ProbeSendResponse, error) {
	dialer := net.Dialer{Timeout: 5 * time.Second}
	c, err := dialer.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("probe connect %s: %w", addr, err)
	}
	defer c.Close()
	rtt := handshakeRTT(c)
	buf := make([]byte, 256<<10)
	start := time.Now()
	_ = c.SetWriteDeadline(start.Add(d + 5*time.Second))
	var n int64
	for time.Since(start) < d {
		m, err := c.Write(buf)
		n += int64(m)
		if err != nil {
			return nil, fmt.Errorf("probe send: %w", err)
		}
	}
	el := time.Since(start).Seconds()
	return &agentv1.ProbeSendResponse{Bytes: n, Mibps: float64(n) / (1 << 20) / el, RttUs: rtt.Microseconds()}, nil
}

// handshakeRTT is the kernel's round-trip estimate of a fresh TCP
// connection (TCP_INFO; right after the handshake it is the handshake's
// round trip): the link's latency at no cost. 0 when unavailable.
func handshakeRTT(c net.Conn) time.Duration {
	tc, ok := c.(*net.TCPConn)
	if !ok {
		return 0
	}
	raw, err := tc.SyscallConn()
	if err != nil {
		return 0
	}
	var info *unix.TCPInfo
	if err := raw.Control(func(fd uintptr) { info, err = unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO) }); err != nil || info == nil {
		return 0
	}
	return time.Duration(info.Rtt) * time.Microsecond
}

// probePeer checks a probe sink address before the agent streams to it:
// a literal unicast IP:port with a port (no names to resolve, no
// unspecified, multicast or broadcast address), and loopback only when
// this host's own migration address is loopback (a single-machine test).
// The server asks only for the registered migration address of a peer
// host (server.probeTarget); this is the agent's own floor under that.
func probePeer(addr, ownIP string) error {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("address: must be IP:port, got %q", addr)
	}
	ip := net.ParseIP(host)
	if ip == nil {
		return fmt.Errorf("address: must be a literal IP (a peer's migration address), got %q", host)
	}
	if p, err := strconv.Atoi(port); err != nil || p < 1 || p > 65535 {
		return fmt.Errorf("address: port must be 1-65535, got %q", port)
	}
	own := net.ParseIP(ownIP)
	switch {
	case ip.IsUnspecified() || ip.IsMulticast() || ip.Equal(net.IPv4bcast):
		return fmt.Errorf("address: %s is not a unicast peer address", ip)
	case ip.IsLoopback() && (own == nil || !own.IsLoopback()):
		return fmt.Errorf("address: %s is loopback; a probe goes to a peer host's migration address", ip)
	}
	return nil
}

// reconnecting reports whether a source's post-copy is taking a resume
// (QEMU's postcopy-recover-setup and postcopy-recover).
func reconnecting(s qmp.MigrationStatus) bool {
	return s == qmp.MigrationStatusPostcopyRecover || s == "postcopy-recover-setup"
}

// waitPostcopyPaused polls QEMU's migration status for up to d and reports
// whether it reached postcopy-paused.
func waitPostcopyPaused(ctx context.Context, mon *qmp.Monitor, d time.Duration) bool {
	deadline := time.Now().Add(d)
	for {
		if info, err := mon.QueryMigrate(ctx); err == nil && info.CurrentStatus() == qmp.MigrationStatusPostcopyPaused {
			return true
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return false
		}
		select {
		case <-ctx.Done():
			return false
		case <-time.After(50 * time.Millisecond):
		}
	}
}
