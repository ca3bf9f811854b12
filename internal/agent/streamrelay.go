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
// The relays live in the agent: an agent restart ends the channels in
// flight, which QEMU sees as a broken link (a pre-copy fails and the
// engine retries or rolls back; a post-copy pauses and the engine
// recovers it through a new relay).

// StreamRelayEnv, when set to 1 or 0, is the --stream-relay default
// (tests and the bench start agents through `ferry dev cluster up`).
const StreamRelayEnv = "FERRY_STREAM_RELAY"

// StreamRelayDefault returns the --stream-relay default: StreamRelayEnv
// when it is 1 or 0, else false.
func StreamRelayDefault() bool {
	return os.Getenv(StreamRelayEnv) == "1"
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
	out      *relay.Outbound
	in       *relay.Inbound
	peer     string // the other host
	recovers int    // post-copy recoveries listened for so far
}

// relayed reports whether a migration's RAM channels go through a relay:
// the agent relays, and the stream is encrypted.
func (a *Agent) relayed(insecure bool) bool { return a.cfg.StreamRelay && !insecure }

// streamTransport names the transport of a migration's RAM channels.
func (a *Agent) streamTransport(insecure bool) string {
	if a.relayed(insecure) {
		return TransportTLSRelay
	}
	return transport(insecure)
}

// relayTLS is the TLS config of this host's end of a relayed stream with
// host peer (field names the request field peer came from): the host's
// stream certificate, the peer's verified.
func (a *Agent) relayTLS(peer, field string, receive bool) (*tls.Config, error) {
	if err := checkStreamPeer(peer, field); err != nil {
		return nil, err
	}
	caPEM, certPEM, keyPEM, err := a.streamPEM()
	if errors.Is(err, ErrNoStreamCert) || errors.Is(err, ErrNoIdentity) {
		return nil, connect.NewError(connect.CodeFailedPrecondition, fmt.Errorf("stream TLS credentials of host %s: %w", a.cfg.Name, err))
	}
	if err != nil {
		return nil, fmt.Errorf("stream TLS credentials: %w", err)
	}
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
	cfg, err := v.a.relayTLS(peer, field, false)
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
	v.closeRelaysLocked()
	o, err := relay.ListenOutbound(sock, target, cfg, uid, v.a.log.With("vm", v.name, "relay", "out"))
	if err != nil {
		return "", fmt.Errorf("source stream relay: %w", err)
	}
	v.relay = &relays{out: o, peer: peer}
	return o.URI(), nil
}

// startInboundRelayLocked opens the destination relay of a migration from
// host peer on this host's migration address, carrying to QEMU's socket
// qemuSock, and returns the tcp: URI the source sends to. v.mu is held.
func (v *vm) startInboundRelayLocked(peer, field, qemuSock string) (string, error) {
	cfg, err := v.a.relayTLS(peer, field, true)
	if err != nil {
		return "", err
	}
	v.closeRelaysLocked()
	in, err := relay.ListenInbound(net.JoinHostPort(v.a.cfg.MigrationIP, "0"), qemuSock, cfg, v.a.log.With("vm", v.name, "relay", "in"))
	if err != nil {
		return "", fmt.Errorf("destination stream relay: %w", err)
	}
	v.relay = &relays{in: in, peer: peer}
	return "tcp:" + in.Addr(), nil
}

// recoverRelayed makes a paused post-copy destination listen for its
// recovery on a new Unix socket and the relay carry to it (a relay is
// opened again when an agent restart lost it), and returns the tcp: URI
// the source resumes to.
func (v *vm) recoverRelayed(ctx context.Context, mon *qmp.Monitor, peer string) (string, error) {
	v.mu.Lock()
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
		r.in.Retarget(sock)
		r.recovers = n
		return "tcp:" + r.in.Addr(), nil
	}
	uri, err := v.startInboundRelayLocked(peer, "source_host", sock)
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
	if r := v.relay; r != nil && r.out != nil {
		target, err := tcpTarget(uri)
		if err != nil {
			return "", err
		}
		if err := r.out.Retarget(target); err != nil {
			return "", err
		}
		return r.out.URI(), nil
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

// closeRelaysLocked ends the VM's relays and their open channels (its
// QEMU exited, or a new migration replaces them). v.mu is held.
func (v *vm) closeRelaysLocked() {
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
	return v.relay
}

// stopRelays stops r accepting new channels (see relayEnded).
func (v *vm) stopRelays(r *relays) {
	if r == nil {
		return
	}
	if r.out != nil {
		r.out.StopAccepting()
	}
	if r.in != nil {
		r.in.StopAccepting()
	}
	v.a.log.Info("stream relay done", "vm", v.name, "stats", relayStatsOf(r))
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
