package server

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net/http"
	"regexp"
	"sync"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/types/known/timestamppb"

	ferryv1 "github.com/ferryvm/ferry/gen/ferry/v1"
	"github.com/ferryvm/ferry/internal/auth"
	"github.com/ferryvm/ferry/internal/pki"
	"github.com/ferryvm/ferry/internal/rpcaddr"
)

// Defaults of Security.
const (
	DefaultAgentCertTTL = 30 * 24 * time.Hour
	DefaultTokenTTL     = 24 * time.Hour
	DefaultJoinTokenTTL = time.Hour
	// ServerCertTTL is how long a replica's own certificate (issued by
	// itself at start from the CA) is valid.
	ServerCertTTL = 365 * 24 * time.Hour
)

// Security is the server's share of the cluster PKI: the CA (every
// replica holds it), this replica's certificate and the token store.
type Security struct {
	CA      *pki.CA
	Name    string // this replica's name, its certificate's
	Tokens  auth.Tokens
	CertTTL time.Duration // agents' certificates; 0: DefaultAgentCertTTL

	kp    *pki.Keypair
	authn *auth.Authenticator
	peers sync.Map // agent address -> host name, from authenticated heartbeats
}

// notePeer records that the agent of host heartbeats from addr: calls to
// addr must then be answered by host's certificate.
func (sec *Security) notePeer(addr, host string) {
	if sec != nil {
		sec.peers.Store(addr, host)
	}
}

// peerName is the host whose certificate must answer at addr ("" if
// unknown: a server replica, or an agent not heard from yet).
func (sec *Security) peerName(addr string) string {
	if v, ok := sec.peers.Load(addr); ok {
		return v.(string)
	}
	return ""
}

// install issues this replica's certificate and makes it the process's
// client credential (calls to agents and to the leader).
func (sec *Security) install() {
	if sec.CertTTL == 0 {
		sec.CertTTL = DefaultAgentCertTTL
	}
	c, k, err := sec.CA.IssueKeyPair(pki.KindServer, sec.Name, ServerCertTTL)
	if err != nil {
		panic(fmt.Sprintf("issue the server certificate: %v", err)) // a fresh key and our own CA: cannot fail
	}
	sec.kp, err = pki.NewKeypair(c, k, sec.CA.CertPEM)
	if err != nil {
		panic(fmt.Sprintf("server key pair: %v", err))
	}
	sec.authn = &auth.Authenticator{CA: sec.CA, Tokens: sec.Tokens}
	rpcaddr.SetCredentials(&rpcaddr.Credentials{TLS: pki.ClientTLS(sec.CA.Pool(), sec.kp, pki.KindAgent, pki.KindServer)})
	rpcaddr.SetPeerName(sec.peerName)
}

func (sec *Security) tlsConfig() *tls.Config {
	if sec == nil {
		return nil
	}
	return pki.ServerTLS(sec.CA.Pool(), sec.kp)
}

func (sec *Security) middleware(h http.Handler) http.Handler {
	if sec == nil {
		return h
	}
	return sec.authn.Middleware(h)
}

var hostNameRE = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$`)

// authService implements ferryv1connect.AuthServiceHandler.
type authService struct {
	s   *Server
	sec *Security
}

func (a *authService) CreateToken(ctx context.Context, req *connect.Request[ferryv1.CreateTokenRequest]) (*connect.Response[ferryv1.CreateTokenResponse], error) {
	role, err := auth.ParseRole(req.Msg.Role)
	if err != nil {
		return nil, connect.NewError(connect.CodeInvalidArgument, err)
	}
	ttl := time.Duration(req.Msg.TtlSeconds) * time.Second
	switch {
	case req.Msg.TtlSeconds < 0 || ttl > 365*24*time.Hour:
		return nil, connect.NewError(connect.CodeInvalidArgument, fmt.Errorf("ttl_seconds: must be 0 (default) to one year, got %d", req.Msg.TtlSeconds))
	case ttl == 0 && role == auth.RoleAgent:
		ttl = DefaultJoinTokenTTL
	case ttl == 0:
		ttl = DefaultTokenTTL
	}
	tok, rec, err := auth.NewToken(a.sec.CA.Fingerprint(), role, ttl, time.Now())
	if err != nil {
		return nil, err
	}
	if err := a.sec.Tokens.PutToken(ctx, auth.Hash(tok), rec); err != nil {
		return nil, connectError(err)
	}
	by := "?"
	if c, ok := auth.CallerFrom(ctx); ok {
		by = c.ID
	}
	a.s.log.Info("token created", "role", role, "token_id", rec.ID, "expires", rec.ExpiresAt.UTC().Format(time.RFC3339), "by", by)
	return connect.NewResponse(&ferryv1.CreateTokenResponse{Token: tok, Role: string(role), ExpiresAt: timestamppb.New(rec.ExpiresAt)}), nil
}

func (a *authService) Join(ctx context.Context, req *connect.Request[ferryv1.JoinRequest]) (*connect.Response[ferryv1.JoinResponse], error) {
	if !hostNameRE.MatchString(req.Msg.Host) {
		return nil, connect.NewError(connect.CodeInvalidArgument, fmt.Errorf("host: must be a DNS label, got %q", req.Msg.Host))
	}
	csr, err := pki.ParseCSR(req.Msg.Csr)
	if err != nil {
		return nil, connect.NewError(connect.CodeInvalidArgument, err)
	}
	// The stream request is checked before the token is spent and the
	// name claimed: a refusal leaves both as they were.
	if len(req.Msg.StreamCsr) > 0 {
		if _, err := pki.ParseCSR(req.Msg.StreamCsr); err != nil {
			return nil, connect.NewError(connect.CodeInvalidArgument, fmt.Errorf("stream_csr: %w", err))
		}
	}
	h := auth.Hash(req.Msg.Token)
	rec, err := a.sec.Tokens.GetToken(ctx, h)
	if err != nil || rec.Role != auth.RoleAgent || !time.Now().Before(rec.ExpiresAt) {
		return nil, connect.NewError(connect.CodeUnauthenticated, fmt.Errorf("join: %w (agent tokens come from `ferry token create --role agent`)", auth.ErrBadToken))
	}
	if err := a.sec.Tokens.ClaimHost(ctx, req.Msg.Host, "token:"+rec.ID); err != nil {
		if errors.Is(err, auth.ErrHostTaken) {
			return nil, connect.NewError(connect.CodeAlreadyExists, fmt.Errorf("join: host name %s is taken by an agent that joined before: give this host another --name", req.Msg.Host))
		}
		return nil, connectError(err)
	}
	if err := a.sec.Tokens.ConsumeToken(ctx, h); err != nil {
		return nil, connect.NewError(connect.CodeUnauthenticated, fmt.Errorf("join: %w", err))
	}
	cert, err := a.sec.CA.Issue(pki.KindAgent, req.Msg.Host, csr.PublicKey, a.sec.CertTTL)
	if err != nil {
		return nil, err
	}
	stream, err := a.issueStream(req.Msg.Host, req.Msg.StreamCsr)
	if err != nil {
		return nil, err
	}
	a.s.log.Info("agent joined", "host", req.Msg.Host, "token_id", rec.ID, "stream_certificate", stream != nil)
	return connect.NewResponse(&ferryv1.JoinResponse{Certificate: cert, Ca: a.sec.CA.CertPEM, StreamCertificate: stream}), nil
}

func (a *authService) Renew(ctx context.Context, req *connect.Request[ferryv1.RenewRequest]) (*connect.Response[ferryv1.RenewResponse], error) {
	c, ok := auth.CallerFrom(ctx)
	if !ok || c.Role != auth.RoleAgent {
		return nil, connect.NewError(connect.CodePermissionDenied, errors.New("renew: only an agent certificate renews itself"))
	}
	csr, err := pki.ParseCSR(req.Msg.Csr)
	if err != nil {
		return nil, connect.NewError(connect.CodeInvalidArgument, err)
	}
	if !hostNameRE.MatchString(c.Host) {
		return nil, connect.NewError(connect.CodePermissionDenied, fmt.Errorf("renew: caller %s names no host", c.ID))
	}
	cert, err := a.sec.CA.Issue(pki.KindAgent, c.Host, csr.PublicKey, a.sec.CertTTL)
	if err != nil {
		return nil, err
	}
	stream, err := a.issueStream(c.Host, req.Msg.StreamCsr)
	if err != nil {
		return nil, err
	}
	a.s.log.Info("agent certificate renewed", "host", c.Host, "stream_certificate", stream != nil)
	return connect.NewResponse(&ferryv1.RenewResponse{Certificate: cert, Ca: a.sec.CA.CertPEM, StreamCertificate: stream}), nil
}

// issueStream issues host's stream certificate (pki.KindQEMU, named by
// host whatever the request says: the caller's own host only) for the
// key of csrPEM; nil when csrPEM is empty (an agent older than stream
// certificates asks for none).
func (a *authService) issueStream(host string, csrPEM []byte) ([]byte, error) {
	if len(csrPEM) == 0 {
		return nil, nil
	}
	csr, err := pki.ParseCSR(csrPEM)
	if err != nil {
		return nil, connect.NewError(connect.CodeInvalidArgument, fmt.Errorf("stream_csr: %w", err))
	}
	cert, err := a.sec.CA.Issue(pki.KindQEMU, host, csr.PublicKey, a.sec.CertTTL)
	if err != nil {
		return nil, fmt.Errorf("stream certificate of host %s: %w", host, err)
	}
	return cert, nil
}

func (a *authService) WhoAmI(ctx context.Context, _ *connect.Request[ferryv1.WhoAmIRequest]) (*connect.Response[ferryv1.WhoAmIResponse], error) {
	c, _ := auth.CallerFrom(ctx)
	return connect.NewResponse(&ferryv1.WhoAmIResponse{Identity: c.ID, Role: string(c.Role), CaFingerprint: a.sec.CA.Fingerprint()}), nil
}
