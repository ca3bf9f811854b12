package agent

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"connectrpc.com/connect"
	ferryv1 "github.com/ferryvm/ferry/gen/ferry/v1"
	"github.com/ferryvm/ferry/gen/ferry/v1/ferryv1connect"
	"github.com/ferryvm/ferry/internal/auth"
	"github.com/ferryvm/ferry/internal/failover"
	"github.com/ferryvm/ferry/internal/pki"
	"github.com/ferryvm/ferry/internal/rpcaddr"
)

// Files of the agent's identity, in DATA/pki: its agent certificate
// (the agent's own: API, heartbeats, cold disk copy) and the host's
// stream certificate (pki.KindQEMU: the only one QEMU gets).
const (
	pkiDir       = "pki"
	agentCert    = "agent.crt"
	agentKey     = "agent.key"
	agentCACert  = "ca.crt"
	streamCert   = "stream.crt"
	streamKey    = "stream.key"
	renewAtRatio = 2.0 / 3
)

// identity is the agent's certificate and the cluster CA it trusts.
type identity struct {
	ca *x509.Certificate
	kp *pki.Keypair
}

func (a *Agent) pkiPath(f string) string { return filepath.Join(a.cfg.DataDir, pkiDir, f) }

// loadIdentity returns the agent's identity: the one saved in DATA/pki if
// its certificate is for this host and not expired, else a new one from
// joining with cfg.JoinToken. Without either it fails, saying how to join.
func (a *Agent) loadIdentity(ctx context.Context) (*identity, error) {
	id, err := a.savedIdentity()
	if err == nil {
		return id, nil
	}
	if a.cfg.JoinToken == "" {
		return nil, fmt.Errorf("agent has no certificate (%v): start it with --join TOKEN (an agent token from `ferry token create --role agent`)", err)
	}
	tok, err := readSecret(a.cfg.JoinToken)
	if err != nil {
		return nil, fmt.Errorf("--join: %w", err)
	}
	// A server not answering yet (starting with the agent) is waited for;
	// a refused token is not retried.
	deadline := time.Now().Add(joinWait)
	for {
		id, err := a.join(ctx, tok)
		if err == nil || errors.Is(err, errJoinRefused) || time.Now().After(deadline) {
			return id, err
		}
		a.log.Warn("join: no server answered; retrying", "err", err)
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(time.Second):
		}
	}
}

// joinWait bounds how long an agent waits for a server to join through.
const joinWait = time.Minute

// errJoinRefused marks a join the server refused (bad token, taken name).
var errJoinRefused = errors.New("join refused")

func (a *Agent) savedIdentity() (*identity, error) {
	caPEM, err := os.ReadFile(a.pkiPath(agentCACert))
	if err != nil {
		return nil, err
	}
	certPEM, err := os.ReadFile(a.pkiPath(agentCert))
	if err != nil {
		return nil, err
	}
	keyPEM, err := os.ReadFile(a.pkiPath(agentKey))
	if err != nil {
		return nil, err
	}
	return a.parseIdentity(caPEM, certPEM, keyPEM)
}

func (a *Agent) parseIdentity(caPEM, certPEM, keyPEM []byte) (*identity, error) {
	ca, err := pki.ParseCert(caPEM)
	if err != nil {
		return nil, fmt.Errorf("cluster CA: %w", err)
	}
	kp, err := pki.NewKeypair(certPEM, keyPEM, caPEM)
	if err != nil {
		return nil, err
	}
	leaf := kp.Leaf()
	if got := pki.IdentityOf(leaf); got.Kind != pki.KindAgent || got.Name != a.cfg.Name {
		return nil, fmt.Errorf("saved certificate is %s, not %s/%s", got, pki.KindAgent, a.cfg.Name)
	}
	if time.Now().After(leaf.NotAfter) {
		return nil, fmt.Errorf("saved certificate expired at %s", leaf.NotAfter.UTC().Format(time.RFC3339))
	}
	return &identity{ca: ca, kp: kp}, nil
}

func (a *Agent) saveIdentity(caPEM, certPEM, keyPEM []byte) error {
	if err := os.MkdirAll(filepath.Join(a.cfg.DataDir, pkiDir), 0o700); err != nil {
		return err
	}
	if err := pki.WriteFile(a.pkiPath(agentKey), keyPEM, 0o600); err != nil {
		return err
	}
	if err := pki.WriteFile(a.pkiPath(agentCACert), caPEM, 0o644); err != nil {
		return err
	}
	return pki.WriteFile(a.pkiPath(agentCert), certPEM, 0o644)
}

// join exchanges a one-time token for a certificate naming this host. The
// server is verified against the CA fingerprint the token carries before
// the token is sent.
func (a *Agent) join(ctx context.Context, token string) (*identity, error) {
	fp, err := auth.CAPrefix(token)
	if err != nil {
		return nil, fmt.Errorf("--join: %w", err)
	}
	csr, key, err := pki.NewCSR(a.cfg.Name)
	if err != nil {
		return nil, err
	}
	streamCSR, streamKeyPEM, err := pki.NewCSR(a.cfg.Name)
	if err != nil {
		return nil, err
	}
	var lastErr error
	for _, srv := range failover.Split(a.cfg.Server) {
		var seen *x509.Certificate
		hc, base := rpcaddr.ClientWith(srv, &rpcaddr.Credentials{TLS: pki.PinnedTLS(fp, &seen)})
		jctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		resp, err := ferryv1connect.NewAuthServiceClient(hc, base).Join(jctx, connect.NewRequest(&ferryv1.JoinRequest{Token: token, Host: a.cfg.Name, Csr: csr, StreamCsr: streamCSR}))
		cancel()
		if err != nil {
			lastErr = fmt.Errorf("join through %s: %w", srv, err)
			if c := connect.CodeOf(err); c == connect.CodeUnauthenticated || c == connect.CodeAlreadyExists || c == connect.CodeInvalidArgument {
				return nil, fmt.Errorf("%w: %w", errJoinRefused, lastErr)
			}
			continue
		}
		id, err := a.parseIdentity(resp.Msg.Ca, resp.Msg.Certificate, key)
		if err != nil {
			return nil, fmt.Errorf("join: the certificate received: %w", err)
		}
		if pki.Fingerprint(id.ca) != pki.Fingerprint(seen) {
			return nil, errors.New("join: the CA received is not the one the server presented")
		}
		if err := a.saveIdentity(resp.Msg.Ca, resp.Msg.Certificate, key); err != nil {
			return nil, fmt.Errorf("save the agent certificate: %w", err)
		}
		if err := a.takeStream(resp.Msg.Ca, resp.Msg.StreamCertificate, streamKeyPEM); err != nil {
			return nil, fmt.Errorf("join: %w", err)
		}
		a.log.Info("joined the cluster", "ca_fingerprint", pki.Fingerprint(id.ca), "expires", id.kp.Leaf().NotAfter.UTC().Format(time.RFC3339))
		return id, nil
	}
	return nil, lastErr
}

// renewLoop renews the certificate (and the host's stream certificate
// with it) once two thirds of its lifetime have passed; a failed renewal
// is retried every minute until it expires. An agent without a valid
// stream certificate (upgraded from a version without them) renews once
// at start to get one.
func (a *Agent) renewLoop(ctx context.Context, id *identity) {
	streamAsked := false
	for {
		leaf := id.kp.Leaf()
		life := leaf.NotAfter.Sub(leaf.NotBefore)
		wait := time.Until(leaf.NotBefore.Add(time.Duration(float64(life) * renewAtRatio)))
		if leaf.KeyUsage&x509.KeyUsageKeyEncipherment == 0 {
			wait = 0 // issued before QEMU's streams used it: QEMU would refuse it
		}
		if _, _, err := a.savedStream(); err != nil && !streamAsked {
			a.log.Info("no valid stream certificate; renewing now to get one", "reason", err)
			wait, streamAsked = 0, true
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(max(wait, time.Second)):
		}
		if err := a.renew(ctx, id); err != nil {
			a.log.Warn("certificate renewal failed; retrying in a minute", "err", err, "expires", leaf.NotAfter.UTC().Format(time.RFC3339))
			select {
			case <-ctx.Done():
				return
			case <-time.After(time.Minute):
			}
		}
	}
}

func (a *Agent) renew(ctx context.Context, id *identity) error {
	csr, key, err := pki.NewCSR(a.cfg.Name)
	if err != nil {
		return err
	}
	streamCSR, streamKeyPEM, err := pki.NewCSR(a.cfg.Name)
	if err != nil {
		return err
	}
	hc, base := failover.Client(a.cfg.Server)
	rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	resp, err := ferryv1connect.NewAuthServiceClient(hc, base).Renew(rctx, connect.NewRequest(&ferryv1.RenewRequest{Csr: csr, StreamCsr: streamCSR}))
	if err != nil {
		return fmt.Errorf("renew: %w", err)
	}
	if _, err := a.parseIdentity(resp.Msg.Ca, resp.Msg.Certificate, key); err != nil {
		return fmt.Errorf("renewed certificate: %w", err)
	}
	if err := a.saveIdentity(resp.Msg.Ca, resp.Msg.Certificate, key); err != nil {
		return err
	}
	if err := id.kp.Set(resp.Msg.Certificate, key, resp.Msg.Ca); err != nil {
		return err
	}
	if err := a.takeStream(resp.Msg.Ca, resp.Msg.StreamCertificate, streamKeyPEM); err != nil {
		return fmt.Errorf("renew: %w", err)
	}
	a.log.Info("certificate renewed", "expires", id.kp.Leaf().NotAfter.UTC().Format(time.RFC3339))
	return nil
}

// ErrNoStreamCert: the host has no valid stream certificate, so its QEMU
// cannot take part in an encrypted stream (it never gets the agent's own
// certificate instead).
var ErrNoStreamCert = errors.New("host has no stream certificate")

// takeStream checks and saves the stream certificate a join or renewal
// returned for keyPEM; a server older than stream certificates returns
// none, which is logged (the old one, if any, stays until it expires).
func (a *Agent) takeStream(caPEM, certPEM, keyPEM []byte) error {
	if len(certPEM) == 0 {
		a.log.Warn("the server issued no stream certificate (a server older than this agent?): encrypted migrations of this host fail until it does; upgrade the servers")
		return nil
	}
	if err := a.checkStream(certPEM, keyPEM, caPEM); err != nil {
		return fmt.Errorf("the stream certificate received: %w", err)
	}
	if err := os.MkdirAll(filepath.Join(a.cfg.DataDir, pkiDir), 0o700); err != nil {
		return fmt.Errorf("save the stream certificate: %w", err)
	}
	if err := pki.WriteFile(a.pkiPath(streamKey), keyPEM, 0o600); err != nil {
		return fmt.Errorf("save the stream key: %w", err)
	}
	if err := pki.WriteFile(a.pkiPath(streamCert), certPEM, 0o644); err != nil {
		return fmt.Errorf("save the stream certificate: %w", err)
	}
	return nil
}

// checkStream verifies a stream certificate: it matches keyPEM, chains to
// caPEM, is of kind pki.KindQEMU for this host, has not expired and has
// the key encipherment QEMU (GnuTLS) needs.
func (a *Agent) checkStream(certPEM, keyPEM, caPEM []byte) error {
	kp, err := pki.NewKeypair(certPEM, keyPEM, caPEM)
	if err != nil {
		return err
	}
	ca, err := pki.ParseCert(caPEM)
	if err != nil {
		return fmt.Errorf("cluster CA: %w", err)
	}
	leaf := kp.Leaf()
	pool := x509.NewCertPool()
	pool.AddCert(ca)
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
		return fmt.Errorf("not issued by the cluster CA: %w", err)
	}
	if got := pki.IdentityOf(leaf); got.Kind != pki.KindQEMU || got.Name != a.cfg.Name {
		return fmt.Errorf("stream certificate is %s, not %s/%s", got, pki.KindQEMU, a.cfg.Name)
	}
	if time.Now().After(leaf.NotAfter) {
		return fmt.Errorf("stream certificate expired at %s", leaf.NotAfter.UTC().Format(time.RFC3339))
	}
	if leaf.KeyUsage&x509.KeyUsageKeyEncipherment == 0 {
		return errors.New("stream certificate lacks key encipherment (QEMU refuses it)")
	}
	return nil
}

// savedStream returns the host's stream certificate and key as saved in
// DATA/pki, checked (checkStream) against the saved cluster CA.
func (a *Agent) savedStream() (certPEM, keyPEM []byte, err error) {
	caPEM, err := os.ReadFile(a.pkiPath(agentCACert))
	if err != nil {
		return nil, nil, err
	}
	if certPEM, err = os.ReadFile(a.pkiPath(streamCert)); err != nil {
		return nil, nil, err
	}
	if keyPEM, err = os.ReadFile(a.pkiPath(streamKey)); err != nil {
		return nil, nil, err
	}
	if err := a.checkStream(certPEM, keyPEM, caPEM); err != nil {
		return nil, nil, err
	}
	return certPEM, keyPEM, nil
}

// readSecret returns s, or the trimmed contents of file F when s is "@F"
// (keeps the secret out of ps).
func readSecret(s string) (string, error) {
	if f, ok := strings.CutPrefix(s, "@"); ok {
		b, err := os.ReadFile(f)
		if err != nil {
			return "", err
		}
		return strings.TrimSpace(string(b)), nil
	}
	return s, nil
}

// ErrNoIdentity: the agent has no certificate yet (Run has not joined).
var ErrNoIdentity = errors.New("agent has no certificate")

// streamPEM returns the cluster CA and the host's stream certificate and
// key as saved in DATA/pki: what QEMU's TLS credentials are made of
// (never the agent's own key). Without a valid stream certificate it
// fails with ErrNoStreamCert and the reason.
func (a *Agent) streamPEM() (caPEM, certPEM, keyPEM []byte, err error) {
	if a.ident.Load() == nil {
		return nil, nil, nil, ErrNoIdentity
	}
	if caPEM, err = os.ReadFile(a.pkiPath(agentCACert)); err != nil {
		return nil, nil, nil, err
	}
	if certPEM, keyPEM, err = a.savedStream(); err != nil {
		return nil, nil, nil, fmt.Errorf("%w (%w): the agent asks for one when it starts and at every renewal; is the server older than this agent?", ErrNoStreamCert, err)
	}
	return caPEM, certPEM, keyPEM, nil
}
