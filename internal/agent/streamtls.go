package agent

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"strings"

	"connectrpc.com/connect"
	"github.com/ferryvm/ferry/internal/pki"
	"github.com/ferryvm/ferry/internal/qemutls"
	"github.com/ferryvm/ferry/internal/qmp"
	"github.com/ferryvm/ferry/internal/spec"
)

// Encrypted streams: a migration's RAM (its main, multifd and post-copy
// preempt channels) and its NBD disk mirrors cross the network on TLS
// with the cluster PKI's certificates, each QEMU verifying the other
// host: the source checks the destination's certificate names the
// destination host (tls-hostname), the destination admits only the
// source host's certificate (tls-authz). Plaintext only with the
// migration's explicit insecure_transport.

// Transports named in reports and replies.
const (
	TransportTLS   = "tls"
	TransportPlain = "plain"
)

// streamTLSID is the QOM id of a QEMU's stream credentials (one set per
// QEMU: a later migration's replace an earlier one's).
const streamTLSID = "ferry-stream-tls"

// transport names the transport of insecure.
func transport(insecure bool) string {
	if insecure {
		return TransportPlain
	}
	return TransportTLS
}

// streamTLS gives the VM's QEMU the credentials of its endpoint of an
// encrypted stream to host peer: it writes the host's stream certificate
// and key (pki.KindQEMU; never the agent's own key, which authenticates
// the agent to the server) and the cluster CA (mode 0600) into a
// directory of the VM's own, adds
// the tls-creds-x509 object (and, listening, the authz object admitting
// only peer) and removes the directory again on every path: QEMU reads
// the files while adding the object and never again.
func (v *vm) streamTLS(ctx context.Context, mon *qmp.Monitor, peer string, ep qemutls.Endpoint) (qemutls.Creds, error) {
	field := map[qemutls.Endpoint]string{qemutls.Server: "source_host", qemutls.Client: "dest_host"}[ep]
	if err := checkStreamPeer(peer, field); err != nil {
		return qemutls.Creds{}, err
	}
	caPEM, certPEM, keyPEM, err := v.a.streamPEM()
	if errors.Is(err, ErrNoStreamCert) {
		return qemutls.Creds{}, connect.NewError(connect.CodeFailedPrecondition, fmt.Errorf("stream TLS credentials of host %s: %w", v.a.cfg.Name, err))
	}
	if err != nil {
		return qemutls.Creds{}, fmt.Errorf("stream TLS credentials: %w", err)
	}
	if err := os.MkdirAll(v.dir, 0o755); err != nil {
		return qemutls.Creds{}, fmt.Errorf("stream TLS credentials: %w", err)
	}
	dir, err := os.MkdirTemp(v.dir, ".tls-")
	if err != nil {
		return qemutls.Creds{}, fmt.Errorf("stream TLS credentials: %w", err)
	}
	defer os.RemoveAll(dir)
	if err := qemutls.WriteDir(dir, caPEM, certPEM, keyPEM); err != nil {
		return qemutls.Creds{}, err
	}
	if err := v.a.chownQEMU(dir); err != nil { // QEMU reads them as its own user
		return qemutls.Creds{}, err
	}
	c := qemutls.ForPair(dir, streamTLSID, peer, ep)
	if err := replaceObject(ctx, mon, c.ID, c.ObjectArgs()); err != nil {
		hint := ""
		if u := v.a.qemuUser; u != nil && strings.Contains(err.Error(), "Permission denied") {
			hint = fmt.Sprintf(" (QEMU runs as %s: every directory above %s needs search permission for it, e.g. chmod o+x)", u.name, v.dir)
		}
		return qemutls.Creds{}, refusedByQEMU(fmt.Errorf("QEMU TLS credentials of host %s: %w%s", v.a.cfg.Name, err, hint))
	}
	if args := c.AuthzArgs(); args != nil {
		if err := replaceObject(ctx, mon, c.AuthzID(), args); err != nil {
			return qemutls.Creds{}, refusedByQEMU(fmt.Errorf("QEMU TLS authorization of host %s: %w", peer, err))
		}
	}
	return c, nil
}

// checkStreamPeer refuses the peer host of an encrypted stream that a
// request (its field) left empty or that is not a host name.
func checkStreamPeer(peer, field string) error {
	if peer == "" {
		return connect.NewError(connect.CodeInvalidArgument,
			fmt.Errorf("%s: required for an encrypted stream (a server older than this agent? upgrade it, or migrate with insecureTransport)", field))
	}
	if !spec.IsDNSLabel(peer) {
		return connect.NewError(connect.CodeInvalidArgument, fmt.Errorf("%s: must be a DNS label (a host name), got %q", field, peer))
	}
	return nil
}

// refusedByQEMU makes an error QEMU answered (bad credentials: retrying
// cannot help) a failed precondition; a lost monitor stays as it is.
func refusedByQEMU(err error) error {
	var ce *qmp.CommandError
	if errors.As(err, &ce) {
		return connect.NewError(connect.CodeFailedPrecondition, err)
	}
	return err
}

// replaceObject adds a QOM object, first deleting one of the same id an
// earlier migration of this QEMU left.
func replaceObject(ctx context.Context, mon *qmp.Monitor, id string, args map[string]any) error {
	err := mon.ObjectAdd(ctx, args)
	var ce *qmp.CommandError
	if err == nil || !errors.As(err, &ce) || !strings.Contains(ce.Error(), "duplicate") {
		return err
	}
	if err := mon.ObjectDel(ctx, id); err != nil {
		return fmt.Errorf("replace object %s: %w", id, err)
	}
	return mon.ObjectAdd(ctx, args)
}

// streamParams puts the migration's parameters on creds, or, insecure,
// clears any TLS parameters an earlier migration of this QEMU set (QEMU
// keeps them from one migration to the next).
func streamParams(p *qmp.MigrationParameters, creds qemutls.Creds, insecure bool) {
	if insecure {
		p.TLSCreds, p.TLSHostname, p.TLSAuthz = qmp.Ptr(""), qmp.Ptr(""), qmp.Ptr("")
		return
	}
	m := creds.MigrationParameters()
	p.TLSCreds = qmp.Ptr(creds.ID)
	if h, ok := m["tls-hostname"].(string); ok {
		p.TLSHostname = qmp.Ptr(h)
	}
	if z, ok := m["tls-authz"].(string); ok {
		p.TLSAuthz = qmp.Ptr(z)
	}
}

// hostStreamTLS is the TLS config of Ferry's own stream between this agent
// and host peer (the cold disk copy), with the agents' cluster
// certificates, each side verifying the other names its host: receiving,
// a server admitting only peer's certificate; sending, a client accepting
// only peer's. field names the request field peer came from.
func (a *Agent) hostStreamTLS(peer, field string, receive bool) (*tls.Config, error) {
	if err := checkStreamPeer(peer, field); err != nil {
		return nil, err
	}
	id := a.ident.Load()
	if id == nil {
		return nil, connect.NewError(connect.CodeFailedPrecondition, fmt.Errorf("stream TLS of host %s: %w", a.cfg.Name, ErrNoIdentity))
	}
	pool := x509.NewCertPool()
	pool.AddCert(id.ca)
	if receive {
		return pki.HostServerTLS(pool, id.kp, peer), nil
	}
	return pki.HostClientTLS(pool, id.kp, peer), nil
}
