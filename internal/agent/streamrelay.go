package agent

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"connectrpc.com/connect"
	"github.com/ferryvm/ferry/internal/pki"
	"github.com/ferryvm/ferry/internal/qemu"
	"github.com/ferryvm/ferry/internal/qmp"
	"github.com/ferryvm/ferry/internal/relay"
)

// Relayed streams (Config.StreamRelay): an encrypted migration's RAM
// channels cross the network on the agents' TLS (internal/relay) while
// QEMU sends and receives in plaintext on Unix sockets in the VM's
// directory. The certificates and the checks are those QEMU's own TLS
// uses (the hosts' stream certificates, each end verifying the other
// host), so a relaying agent interoperates with one that lets QEMU speak
// TLS. NBD disk mirrors keep QEMU's TLS.
//
// Each relay runs as a process of its own (`ferry stream-relay`,
// Config.RelayCommand) in its QEMU's cgroup, and ends with that QEMU: an
// agent restart leaves the channels in flight running, and the restarted
// agent adopts the relay through its control socket. Relays run inside
// the agent only when no command is configured (unit tests): a restart
// then ends their channels, which QEMU sees as a broken link.

// StreamRelayEnv, when set to 1 or 0, is the --stream-relay default
// (tests and the bench start agents through `ferry dev cluster up`).
const StreamRelayEnv = "FERRY_STREAM_RELAY"

// StreamRelayDefault returns the --stream-relay default: on, unless
// StreamRelayEnv is 0.
func StreamRelayDefault() bool {
	return os.Getenv(StreamRelayEnv) != "0"
}

// TransportTLSRelay names a relayed TLS stream in reports and logs.
const TransportTLSRelay = "tls-relay"

// The relays' Unix sockets are in relaySocketDir of the VM's directory,
// owned by QEMU's user with mode 0700: QEMU, which has dropped its
// privileges when it listens, can create its socket there, and no other
// user can reach either end. Names are short: a Unix socket path has at
// most 107 bytes, and qemu.Paths checks the directory for its longest
// name, "qmp-observe.sock".
const (
	relaySocketDir = "mig"
	relayOutSocket = "out.sock" // the source relay QEMU migrates to
	relayInSocket  = "in.sock"  // the destination QEMU's first listener
)

// relayInRecoverSocket is the destination QEMU's listener of post-copy
// recovery n (1, 2, ...).
func relayInRecoverSocket(n int) string { return "r" + strconv.Itoa(n) + ".sock" }

// relaySocket is the path of the relay socket name, creating its
// directory for QEMU's user.
func (v *vm) relaySocket(name string) (string, error) {
	dir := filepath.Join(v.dir, relaySocketDir)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", fmt.Errorf("relay socket directory: %w", err)
	}
	if u := v.a.qemuUser; u != nil {
		if err := os.Chown(dir, u.uid, u.gid); err != nil {
			return "", fmt.Errorf("give %s to QEMU's user %s: %w", dir, u.name, err)
		}
	}
	return filepath.Join(dir, name), nil
}

// relays are the stream relays of a VM's current migration (under vm.mu).
type relays struct {
	out      streamRelay
	in       streamRelay
	peer     string // the other host ("" for relays adopted after a restart)
	recovers int    // post-copy recoveries listened for so far
}

// streamRelay is one end of a relayed stream: a relay process of its own
// (relay.Process, Config.RelayCommand set: it outlives an agent restart),
// or a relay inside the agent (relay.Outbound, relay.Inbound).
type streamRelay interface {
	// Endpoint is the unix: URI QEMU migrates to (source) or the
	// HOST:PORT the peer host sends to (destination).
	Endpoint() string
	Retarget(target string) error
	StopAccepting()
	Close() error
	Stats() relay.Stats
}

// The relay processes' control sockets, in the VM's directory (the
// agent's, not relaySocketDir, which QEMU's user owns: a QEMU must not be
// able to plant a control socket the agent would adopt), each with its
// log beside it.
const (
	relayOutControl = "relay-out.ctl"
	relayInControl  = "relay-in.ctl"
)

// relayed reports whether a migration's RAM channels go through a relay:
// the agent relays and the stream is encrypted. Post-copy and hybrid are
// relayed too: on the heavy bench (2026-12-03, relay processes, 3 runs
// each, minutes apart) the client gap after the switch was 893–939 ms
// relayed against 1300–1802 ms on QEMU's TLS, at the same total (14.1–14.2
// s against 14.3–15.4 s): the relay's sockets keep Nagle off, so a faulted
// page or a page request does not wait for a delayed ACK. A resume into a
// link still down connects at once to the local relay; the engine then
// sees the post-copy not running again within the stall timeout and
// pauses and resumes it again (TestPostcopyRecoversFromTwoLinkBreaks). Both
// sides decide alike; a relaying end and a TLS-speaking one interoperate
// anyway.
func (a *Agent) relayed(insecure bool) bool {
	return a.cfg.StreamRelay && !insecure
}

// streamTransport names the transport of a migration's RAM channels.
func (a *Agent) streamTransport(insecure bool) string {
	if a.relayed(insecure) {
		return TransportTLSRelay
	}
	return transport(insecure)
}

// relayTLS is the TLS config of this host's end of a relayed stream with
// host peer inside the agent: the host's stream certificate, the peer's
// verified.
func (a *Agent) relayTLS(caPEM, certPEM, keyPEM []byte, peer string, receive bool) (*tls.Config, error) {
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return nil, fmt.Errorf("stream certificate of host %s: %w", a.cfg.Name, err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		return nil, fmt.Errorf("stream TLS credentials of host %s: the cluster CA file holds no certificate", a.cfg.Name)
	}
	if receive {
		return pki.StreamServerTLS(pool, cert, peer), nil
	}
	return pki.StreamClientTLS(pool, cert, peer), nil
}

// relayPEM are the CA, certificate and key (PEM) of this host's end of a
// relayed stream with host peer (field names the request field peer came
// from).
func (a *Agent) relayPEM(peer, field string) (caPEM, certPEM, keyPEM []byte, err error) {
	if err := checkStreamPeer(peer, field); err != nil {
		return nil, nil, nil, err
	}
	caPEM, certPEM, keyPEM, err = a.streamPEM()
	if errors.Is(err, ErrNoStreamCert) || errors.Is(err, ErrNoIdentity) {
		return nil, nil, nil, connect.NewError(connect.CodeFailedPrecondition, fmt.Errorf("stream TLS credentials of host %s: %w", a.cfg.Name, err))
	}
	if err != nil {
		return nil, nil, nil, fmt.Errorf("stream TLS credentials: %w", err)
	}
	return caPEM, certPEM, keyPEM, nil
}

// startRelayProcess starts the VM's relay process of mode (relay.ModeOut,
// relay.ModeIn) listening on listen and carrying to target, in the cgroup
// of its QEMU (qemuPID), whose end it also ends with. v.mu is held.
func (v *vm) startRelayProcess(mode, peer, listen, target string, uid, qemuPID int, caPEM, certPEM, keyPEM []byte) (streamRelay, error) {
	ctl := relayOutControl
	if mode == relay.ModeIn {
		ctl = relayInControl
	}
	ctlPath := filepath.Join(v.dir, ctl)
	spec := relay.ProcessSpec{Mode: mode, Listen: listen, Target: target, Peer: peer, UID: uid,
		CA: caPEM, Cert: certPEM, Key: keyPEM, Control: ctlPath}
	cgroup := ""
	if qemuPID > 0 {
		spec.WatchPID = qemuPID
		cgroup = qemu.OwnCgroupOf(qemuPID)
	}
	ctx, cancel := context.WithTimeout(context.Background(), relay.ReadyTimeout)
	defer cancel()
	p, err := relay.StartProcess(ctx, v.a.cfg.RelayCommand, spec, strings.TrimSuffix(ctlPath, ".ctl")+".log", cgroup)
	if err != nil {
		return nil, fmt.Errorf("%s stream relay: %w", map[string]string{relay.ModeOut: "source", relay.ModeIn: "destination"}[mode], err)
	}
	v.a.log.Info("stream relay process started", "vm", v.name, "mode", mode, "pid", p.PID(), "endpoint", p.Endpoint(), "cgroup", cgroup)
	return p, nil
}

// openRelayLocked replaces the VM's relays with one of mode (relay.ModeOut,
// relay.ModeIn) with host peer (field names the request field peer came
// from), listening on listen and carrying to target: a relay process when
// a relay command is configured, else a relay inside the agent. uid owns
// the out socket (-1: none); qemuPID is the QEMU it carries for. v.mu is
// held.
func (v *vm) openRelayLocked(mode, peer, field, listen, target string, uid, qemuPID int) (streamRelay, error) {
	caPEM, certPEM, keyPEM, err := v.a.relayPEM(peer, field)
	if err != nil {
		return nil, err
	}
	v.closeRelaysLocked()
	if len(v.a.cfg.RelayCommand) > 0 {
		return v.startRelayProcess(mode, peer, listen, target, uid, qemuPID, caPEM, certPEM, keyPEM)
	}
	cfg, err := v.a.relayTLS(caPEM, certPEM, keyPEM, peer, mode == relay.ModeIn)
	if err != nil {
		return nil, err
	}
	log := v.a.log.With("vm", v.name, "relay", mode)
	if mode == relay.ModeIn {
		in, err := relay.ListenInbound(listen, target, cfg, log)
		if err != nil {
			return nil, fmt.Errorf("destination stream relay: %w", err)
		}
		return in, nil
	}
	o, err := relay.ListenOutbound(listen, target, cfg, uid, log)
	if err != nil {
		return nil, fmt.Errorf("source stream relay: %w", err)
	}
	return o, nil
}

// qemuPIDLocked is the VM's QEMU's pid (0: none). v.mu is held.
func (v *vm) qemuPIDLocked() int {
	if v.proc == nil {
		return 0
	}
	return v.proc.PID()
}

// adoptRelaysLocked finds the relay processes of the VM's migration that
// outlived an agent restart (none when relays are in the agent). v.mu is
// held.
func (v *vm) adoptRelaysLocked() {
	if v.relay != nil || len(v.a.cfg.RelayCommand) == 0 {
		return
	}
	var r relays
	for _, end := range []struct {
		ctl string
		to  *streamRelay
	}{{relayOutControl, &r.out}, {relayInControl, &r.in}} {
		p, err := relay.AdoptProcess(filepath.Join(v.dir, end.ctl))
		switch {
		case err == nil:
			*end.to = p
			v.a.log.Info("stream relay process adopted", "vm", v.name, "pid", p.PID(), "endpoint", p.Endpoint())
		case !errors.Is(err, os.ErrNotExist):
			v.a.log.Warn("stream relay process not adopted", "vm", v.name, "control", end.ctl, "err", err)
		}
	}
	if r.out != nil || r.in != nil {
		v.relay = &r
	}
}

// tcpTarget is the HOST:PORT of a "tcp:HOST:PORT" migration URI.
func tcpTarget(uri string) (string, error) {
	hp, ok := strings.CutPrefix(uri, "tcp:")
	if !ok {
		return "", connect.NewError(connect.CodeInvalidArgument, fmt.Errorf("uri: want tcp:HOST:PORT for a relayed stream, got %q", uri))
	}
	if _, _, err := net.SplitHostPort(hp); err != nil {
		return "", connect.NewError(connect.CodeInvalidArgument, fmt.Errorf("uri %q: %w", uri, err))
	}
	return hp, nil
}

// startOutboundRelayLocked opens the source relay of a migration to the
// destination at uri (tcp:), replacing any earlier one, and returns the
// unix: URI QEMU migrates to. v.mu is held.
func (v *vm) startOutboundRelayLocked(peer, field, uri string) (string, error) {
	target, err := tcpTarget(uri)
	if err != nil {
		return "", err
	}
	uid := -1
	if u := v.a.qemuUser; u != nil {
		uid = u.uid
	}
	sock, err := v.relaySocket(relayOutSocket)
	if err != nil {
		return "", err
	}
	o, err := v.openRelayLocked(relay.ModeOut, peer, field, sock, target, uid, v.qemuPIDLocked())
	if err != nil {
		return "", err
	}
	v.relay = &relays{out: o, peer: peer}
	return o.Endpoint(), nil
}

// startInboundRelayLocked opens the destination relay of a migration from
// host peer on this host's migration address, carrying to QEMU's socket
// qemuSock, and returns the tcp: URI the source sends to. v.mu is held.
func (v *vm) startInboundRelayLocked(peer, field, qemuSock string, qemuPID int) (string, error) {
	in, err := v.openRelayLocked(relay.ModeIn, peer, field, net.JoinHostPort(v.a.cfg.MigrationIP, "0"), qemuSock, -1, qemuPID)
	if err != nil {
		return "", err
	}
	v.relay = &relays{in: in, peer: peer}
	return "tcp:" + in.Endpoint(), nil
}

// recoverRelayed makes a paused post-copy destination listen for its
// recovery on a new Unix socket and the relay carry to it (a relay is
// opened again when an agent restart lost it), and returns the tcp: URI
// the source resumes to.
func (v *vm) recoverRelayed(ctx context.Context, mon *qmp.Monitor, peer string) (string, error) {
	v.mu.Lock()
	v.adoptRelaysLocked()
	n := 1
	if v.relay != nil {
		n = v.relay.recovers + 1
	}
	v.mu.Unlock()
	sock, err := v.relaySocket(relayInRecoverSocket(n))
	if err != nil {
		return "", err
	}
	if err := mon.MigrateRecover(ctx, "unix:"+sock); err != nil {
		return "", fmt.Errorf("migrate-recover unix:%s: %w", sock, err)
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	if r := v.relay; r != nil && r.in != nil {
		if err := r.in.Retarget(sock); err != nil {
			return "", fmt.Errorf("destination stream relay: %w", err)
		}
		r.recovers = n
		return "tcp:" + r.in.Endpoint(), nil
	}
	uri, err := v.startInboundRelayLocked(peer, "source_host", sock, v.qemuPIDLocked())
	if err != nil {
		return "", err
	}
	v.relay.recovers = n
	return uri, nil
}

// outgoingRelayPeer is the destination host of the VM's relayed outgoing
// migration ("" when QEMU's stream is not relayed).
func (v *vm) outgoingRelayPeer() string {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.out == nil {
		return ""
	}
	return v.out.relayPeer
}

// resumeRelayed points the source relay at the destination's recovery
// address uri (opening a relay again when an agent restart lost it) and
// returns the unix: URI QEMU resumes to.
func (v *vm) resumeRelayed(peer, uri string) (string, error) {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.adoptRelaysLocked()
	if r := v.relay; r != nil && r.out != nil {
		target, err := tcpTarget(uri)
		if err != nil {
			return "", err
		}
		if err := r.out.Retarget(target); err != nil {
			return "", err
		}
		return r.out.Endpoint(), nil
	}
	qemuURI, err := v.startOutboundRelayLocked(peer, "dest_host", uri)
	if err != nil {
		return "", err
	}
	if v.out != nil {
		v.out.qemuURI = qemuURI
	}
	return qemuURI, nil
}

// dropOutboundRelay closes the VM's source relay and its open channels
// (a paused post-copy reconnects through a new one: resumeRelayed) and
// reports whether there was one.
func (v *vm) dropOutboundRelay() bool {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.adoptRelaysLocked()
	r := v.relay
	if r == nil || r.out == nil {
		return false
	}
	if err := r.out.Close(); err != nil {
		v.a.log.Warn("close the source stream relay", "vm", v.name, "err", err)
	}
	r.out = nil
	if r.in == nil {
		v.relay = nil
	}
	return true
}

// closeRelaysLocked ends the VM's relays and their open channels (its
// QEMU exited, or a new migration replaces them). v.mu is held.
func (v *vm) closeRelaysLocked() {
	v.adoptRelaysLocked()
	r := v.relay
	if r == nil {
		return
	}
	v.relay = nil
	var err error
	if r.out != nil {
		err = r.out.Close()
	}
	if r.in != nil {
		err = errors.Join(err, r.in.Close())
	}
	if err != nil {
		v.a.log.Warn("close a stream relay", "vm", v.name, "err", err)
	}
}

// relayEnded stops the VM's relays from accepting new channels: its
// migration completed, failed or was cancelled. The open channels end
// when QEMU closes them (or at closeRelaysLocked).
func (v *vm) relayEnded() { v.stopRelays(v.currentRelays()) }

// currentRelays are the VM's relays (nil: none).
func (v *vm) currentRelays() *relays {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.adoptRelaysLocked()
	return v.relay
}

// stopRelays stops r accepting new channels (see relayEnded).
func (v *vm) stopRelays(r *relays) {
	if r == nil {
		return
	}
	stats := relayStatsOf(r) // first: a relay process ends once it stopped and its channels did
	if r.out != nil {
		r.out.StopAccepting()
	}
	if r.in != nil {
		r.in.StopAccepting()
	}
	v.a.log.Info("stream relay done", "vm", v.name, "stats", stats)
}

// relayUntilEnded stops the relays accepting once QEMU's migration has
// ended (an adopted arrival's post-copy completes after its event watcher
// stopped), or QEMU is gone.
func (v *vm) relayUntilEnded(mon *qmp.Monitor, r *relays) {
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		info, err := mon.QueryMigrate(ctx)
		cancel()
		if errors.Is(err, qmp.ErrClosed) {
			return // QEMU exited: watch closed the relays
		}
		if err == nil && info.CurrentStatus().Finished() {
			v.stopRelays(r)
			return
		}
		time.Sleep(relayPollEvery)
	}
}

// relayPollEvery is how often relayUntilEnded asks QEMU.
const relayPollEvery = time.Second

// relayStatsOf are a VM's relay counters for the log.
func relayStatsOf(r *relays) string {
	var s relay.Stats
	if r.out != nil {
		s = r.out.Stats()
	} else if r.in != nil {
		s = r.in.Stats()
	}
	return fmt.Sprintf("%d channel(s), %d bytes sent, %d received", s.Channels, s.Sent, s.Received)
}
