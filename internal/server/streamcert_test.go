package server

import (
	"context"
	"crypto"
	"crypto/x509"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	ferryv1 "github.com/ferryvm/ferry/gen/ferry/v1"
	"github.com/ferryvm/ferry/internal/auth"
	"github.com/ferryvm/ferry/internal/pki"
)

// testAuthService is an AuthService over a fresh CA and in-memory tokens
// (a fake store: Join and Renew use nothing else).
func testAuthService(t *testing.T) (*authService, *pki.CA, *auth.MemTokens) {
	t.Helper()
	ca, err := pki.NewCA("test")
	if err != nil {
		t.Fatal(err)
	}
	toks := &auth.MemTokens{}
	s := &Server{log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	return &authService{s: s, sec: &Security{CA: ca, Name: "s1", Tokens: toks, CertTTL: time.Hour}}, ca, toks
}

// csr is a certificate request for a fresh key, asking for name (which
// the CA ignores), and the key's public half.
func csr(t *testing.T, name string) ([]byte, any) {
	t.Helper()
	c, _, err := pki.NewCSR(name)
	if err != nil {
		t.Fatal(err)
	}
	r, err := pki.ParseCSR(c)
	if err != nil {
		t.Fatal(err)
	}
	return c, r.PublicKey
}

// wantStreamCert checks certPEM is host's stream certificate over pub,
// issued by ca.
func wantStreamCert(t *testing.T, ca *pki.CA, certPEM []byte, host string, pub any) {
	t.Helper()
	c, err := pki.ParseCert(certPEM)
	if err != nil {
		t.Fatalf("stream certificate: %v", err)
	}
	id, err := ca.Verify(c)
	if err != nil {
		t.Fatalf("stream certificate does not chain to the CA: %v", err)
	}
	if id != (pki.Identity{Kind: pki.KindQEMU, Name: host}) || len(c.DNSNames) != 1 || c.DNSNames[0] != host {
		t.Errorf("stream certificate is %s with SANs %v, want %s/%s", id, c.DNSNames, pki.KindQEMU, host)
	}
	if c.KeyUsage&x509.KeyUsageKeyEncipherment == 0 {
		t.Error("stream certificate lacks key encipherment (QEMU refuses it)")
	}
	if k, ok := pub.(interface{ Equal(x crypto.PublicKey) bool }); !ok || !k.Equal(c.PublicKey) {
		t.Error("stream certificate is not for the stream key")
	}
}

// TestRenewIssuesStreamCertForOwnHostOnly: an agent renewing gets a stream
// certificate for its own host name whatever its request names; a user
// token of any role, or no caller, gets nothing; an old agent sending no
// stream request gets no stream certificate; a bad one is refused naming
// the field.
func TestRenewIssuesStreamCertForOwnHostOnly(t *testing.T) {
	a, ca, _ := testAuthService(t)
	agent := auth.WithCaller(context.Background(), auth.Caller{Role: auth.RoleAgent, ID: "agent:h1", Host: "h1"})
	idCSR, _ := csr(t, "h1")
	streamCSR, streamPub := csr(t, "h2") // asks for another host: ignored
	resp, err := a.Renew(agent, connect.NewRequest(&ferryv1.RenewRequest{Csr: idCSR, StreamCsr: streamCSR}))
	if err != nil {
		t.Fatal(err)
	}
	wantStreamCert(t, ca, resp.Msg.StreamCertificate, "h1", streamPub)
	if c, _ := pki.ParseCert(resp.Msg.Certificate); pki.IdentityOf(c) != (pki.Identity{Kind: pki.KindAgent, Name: "h1"}) {
		t.Errorf("identity certificate is %s", pki.IdentityOf(c))
	}

	old, err := a.Renew(agent, connect.NewRequest(&ferryv1.RenewRequest{Csr: idCSR}))
	if err != nil || len(old.Msg.StreamCertificate) != 0 {
		t.Errorf("renewal without stream_csr: %v, stream certificate of %d bytes; want none", err, len(old.Msg.StreamCertificate))
	}
	if _, err := a.Renew(agent, connect.NewRequest(&ferryv1.RenewRequest{Csr: idCSR, StreamCsr: []byte("junk")})); connect.CodeOf(err) != connect.CodeInvalidArgument || !strings.Contains(err.Error(), "stream_csr") {
		t.Errorf("bad stream_csr: %v, want invalid_argument naming stream_csr", err)
	}
	for _, c := range []auth.Caller{
		{Role: auth.RoleViewer, ID: "token:v"},
		{Role: auth.RoleOperator, ID: "token:o"},
		{Role: auth.RoleAdmin, ID: "token:a"},
		{Role: auth.RoleAgent, ID: "agent:", Host: ""},
	} {
		_, err := a.Renew(auth.WithCaller(context.Background(), c), connect.NewRequest(&ferryv1.RenewRequest{Csr: idCSR, StreamCsr: streamCSR}))
		if connect.CodeOf(err) != connect.CodePermissionDenied {
			t.Errorf("%s (%s) renewing: %v, want permission_denied", c.ID, c.Role, err)
		}
	}
	if _, err := a.Renew(context.Background(), connect.NewRequest(&ferryv1.RenewRequest{Csr: idCSR, StreamCsr: streamCSR})); connect.CodeOf(err) != connect.CodePermissionDenied {
		t.Errorf("no caller renewing: %v, want permission_denied", err)
	}
}

// TestJoinIssuesStreamCert: joining with an agent token gives the stream
// certificate of the host joined (not the name the request asks for); a
// viewer or operator token joins nothing.
func TestJoinIssuesStreamCert(t *testing.T) {
	a, ca, toks := testAuthService(t)
	ctx := context.Background()
	token := func(role auth.Role) string {
		tok, rec, err := auth.NewToken(ca.Fingerprint(), role, time.Hour, time.Now())
		if err != nil {
			t.Fatal(err)
		}
		if err := toks.PutToken(ctx, auth.Hash(tok), rec); err != nil {
			t.Fatal(err)
		}
		return tok
	}
	idCSR, _ := csr(t, "h2")
	streamCSR, streamPub := csr(t, "h9")
	for _, role := range []auth.Role{auth.RoleViewer, auth.RoleOperator} {
		_, err := a.Join(ctx, connect.NewRequest(&ferryv1.JoinRequest{Token: token(role), Host: "h2", Csr: idCSR, StreamCsr: streamCSR}))
		if connect.CodeOf(err) != connect.CodeUnauthenticated {
			t.Errorf("join with a %s token: %v, want unauthenticated", role, err)
		}
	}
	// A bad stream request is refused before the token is spent and the
	// name claimed: the same token then joins h2.
	agentTok := token(auth.RoleAgent)
	if _, err := a.Join(ctx, connect.NewRequest(&ferryv1.JoinRequest{Token: agentTok, Host: "h2", Csr: idCSR, StreamCsr: []byte("not a CSR")})); connect.CodeOf(err) != connect.CodeInvalidArgument || !strings.Contains(err.Error(), "stream_csr") {
		t.Fatalf("join with a bad stream_csr: %v, want invalid argument naming stream_csr", err)
	}
	resp, err := a.Join(ctx, connect.NewRequest(&ferryv1.JoinRequest{Token: agentTok, Host: "h2", Csr: idCSR, StreamCsr: streamCSR}))
	if err != nil {
		t.Fatal(err)
	}
	wantStreamCert(t, ca, resp.Msg.StreamCertificate, "h2", streamPub)
}
