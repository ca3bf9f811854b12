package auth

import (
	"context"
	"crypto/tls"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/ferryvm/ferry/internal/pki"
)

// testServer serves Middleware(echo caller) over TLS with the CA's server
// certificate; the handler writes the caller's role and id.
func testServer(t *testing.T) (*pki.CA, *MemTokens, *httptest.Server) {
	t.Helper()
	ca, err := pki.NewCA("test CA")
	if err != nil {
		t.Fatal(err)
	}
	cert, key, err := ca.IssueKeyPair(pki.KindServer, "s1", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	kp, err := pki.NewKeypair(cert, key, ca.CertPEM)
	if err != nil {
		t.Fatal(err)
	}
	toks := &MemTokens{}
	a := &Authenticator{CA: ca, Tokens: toks}
	h := a.Middleware(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, _ := CallerFrom(r.Context())
		io.WriteString(w, string(c.Role)+" "+c.ID)
	}))
	srv := httptest.NewUnstartedServer(h)
	srv.Listener = tls.NewListener(srv.Listener, pki.ServerTLS(ca.Pool(), kp))
	srv.Start()
	srv.URL = strings.Replace(srv.URL, "http://", "https://", 1)
	t.Cleanup(srv.Close)
	return ca, toks, srv
}

func client(ca *pki.CA, kp *pki.Keypair) *http.Client {
	return &http.Client{Transport: &http.Transport{TLSClientConfig: pki.ClientTLS(ca.Pool(), kp, pki.KindServer)}}
}

func call(t *testing.T, c *http.Client, url, token string, hdr ...string) (int, string) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodPost, url, strings.NewReader("{}"))
	req.Header.Set("Content-Type", "application/json")
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func mint(t *testing.T, ca *pki.CA, kind pki.Kind, name string) *pki.Keypair {
	cert, key, err := ca.IssueKeyPair(kind, name, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	kp, err := pki.NewKeypair(cert, key, ca.CertPEM)
	if err != nil {
		t.Fatal(err)
	}
	return kp
}

func TestMiddlewareRefusals(t *testing.T) {
	ca, toks, srv := testServer(t)
	ctx := context.Background()
	now := time.Now()
	token := func(role Role, ttl time.Duration) string {
		tok, rec, err := NewToken(ca.Fingerprint(), role, ttl, now)
		if err != nil {
			t.Fatal(err)
		}
		if err := toks.PutToken(ctx, Hash(tok), rec); err != nil {
			t.Fatal(err)
		}
		return tok
	}
	viewer, operator, expired, join := token(RoleViewer, time.Hour), token(RoleOperator, time.Hour), token(RoleAdmin, -time.Second), token(RoleAgent, time.Hour)
	anon := client(ca, nil)
	const migrate, list, heartbeat = "/ferry.v1.MigrationService/Migrate", "/ferry.v1.VMService/ListVMs", "/ferry.v1.HostService/Heartbeat"
	for _, tc := range []struct {
		name, path, token string
		c                 *http.Client
		hdr               []string
		code              int
		body              string
	}{
		{"no token", list, "", anon, nil, 401, "unauthenticated"},
		{"unknown token", list, "ferry-0011223344556677-" + strings.Repeat("ab", 24), anon, nil, 401, "unauthenticated"},
		{"expired token", list, expired, anon, nil, 401, "unauthenticated"},
		{"join token as bearer", list, join, anon, nil, 401, "unauthenticated"},
		{"viewer reads", list, viewer, anon, nil, 200, "viewer token:"},
		{"viewer migrates", migrate, viewer, anon, nil, 403, "permission_denied"},
		{"operator migrates", migrate, operator, anon, nil, 200, "operator token:"},
		{"operator heartbeats", heartbeat, operator, anon, nil, 403, "permission_denied"},
		{"unknown method needs admin", "/ferry.v1.NewService/Thing", operator, anon, nil, 403, "permission_denied"},
		{"healthz open", "/healthz", "", anon, nil, 200, ""},
		{"metrics needs a credential", "/metrics", "", anon, nil, 401, "unauthenticated"},
		{"viewer scrapes metrics", "/metrics", viewer, anon, nil, 200, "viewer token:"},
		{"agent scrapes metrics", "/metrics", "", client(ca, mint(t, ca, pki.KindAgent, "h1")), nil, 403, "permission_denied"},
		{"dashboard page open", "/ui/", "", anon, nil, 200, ""},
		{"dashboard asset open", "/ui/assets/app.js", "", anon, nil, 200, ""},
		{"dashboard data needs a credential", "/ui/api/snapshot", "", anon, nil, 401, "unauthenticated"},
		{"viewer reads the dashboard's data", "/ui/api/stream", viewer, anon, nil, 200, "viewer token:"},
		{"dashboard data path outside the assets", "/ui/assets/../api/snapshot", "", anon, nil, 401, "unauthenticated"},
		{"join open", "/ferry.v1.AuthService/Join", "", anon, nil, 200, ""},
		{"agent heartbeats", heartbeat, "", client(ca, mint(t, ca, pki.KindAgent, "h1")), nil, 200, "agent agent:h1"},
		{"agent lists VMs", list, "", client(ca, mint(t, ca, pki.KindAgent, "h1")), nil, 403, "permission_denied"},
		{"admin cert", migrate, "", client(ca, mint(t, ca, pki.KindAdmin, "root")), nil, 200, "admin cert:root"},
		{"forged forward header ignored", migrate, viewer, anon, []string{ForwardedCallerHeader, "admin|token:x|"}, 403, "permission_denied"},
		{"replica forwards a caller", migrate, "", client(ca, mint(t, ca, pki.KindServer, "s2")), []string{ForwardedCallerHeader, "operator|token:abc|"}, 200, "operator token:abc"},
		{"QEMU cert is nobody", list, "", client(ca, mint(t, ca, pki.KindQEMU, "h1")), nil, 401, "unauthenticated"},
		// A host's stream certificate (what its QEMU holds) is not its agent.
		{"stream cert heartbeats", heartbeat, "", client(ca, mint(t, ca, pki.KindQEMU, "h1")), nil, 401, "unauthenticated"},
		{"stream cert renews", "/ferry.v1.AuthService/Renew", "", client(ca, mint(t, ca, pki.KindQEMU, "h1")), nil, 401, "unauthenticated"},
		{"stream cert forwards a caller", migrate, "", client(ca, mint(t, ca, pki.KindQEMU, "h1")), []string{ForwardedCallerHeader, "admin|token:x|"}, 401, "unauthenticated"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, body := call(t, tc.c, srv.URL+tc.path, tc.token, tc.hdr...)
			if code != tc.code || !strings.Contains(body, tc.body) {
				t.Fatalf("%s: %d %q, want %d containing %q", tc.path, code, body, tc.code, tc.body)
			}
		})
	}
}

func TestForeignCertificateRefused(t *testing.T) {
	_, _, srv := testServer(t)
	other, err := pki.NewCA("other")
	if err != nil {
		t.Fatal(err)
	}
	// A client trusting another CA refuses the server...
	c := client(other, nil)
	if _, err := c.Get(srv.URL + "/healthz"); err == nil {
		t.Fatal("a client pinned to another CA accepted the server")
	}
	// ... and a certificate from another CA is refused by the server.
	tc := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true, GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
		cert, key, _ := other.IssueKeyPair(pki.KindAdmin, "root", time.Hour)
		c, err := tls.X509KeyPair(cert, key)
		return &c, err
	}}}}
	if resp, err := tc.Get(srv.URL + "/ferry.v1.VMService/ListVMs"); err == nil {
		resp.Body.Close()
		t.Fatalf("a certificate of another CA got through: %s", resp.Status)
	}
}

func TestAllows(t *testing.T) {
	for _, tc := range []struct {
		have, want Role
		ok         bool
	}{
		{RoleViewer, RoleViewer, true}, {RoleViewer, RoleOperator, false}, {RoleOperator, RoleViewer, true},
		{RoleAdmin, RoleOperator, true}, {RoleAgent, RoleViewer, false}, {RoleAdmin, RoleAgent, false},
		{RoleAgent, RoleAgent, true}, {RoleServer, RoleAgent, true}, {RoleViewer, Anyone, true},
	} {
		if got := Allows(tc.have, tc.want); got != tc.ok {
			t.Errorf("Allows(%s, %s) = %v, want %v", tc.have, tc.want, got, tc.ok)
		}
	}
}

func TestTokenFormat(t *testing.T) {
	ca, _ := pki.NewCA("x")
	tok, rec, err := NewToken(ca.Fingerprint(), RoleAgent, time.Hour, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	fp, err := CAPrefix(tok)
	if err != nil || !strings.HasPrefix(ca.Fingerprint(), fp) || !rec.OneTime {
		t.Fatalf("CAPrefix(%q) = %q, %v (record %+v)", tok, fp, err, rec)
	}
	for _, bad := range []string{"", "ferry-", "ferry-xyz-abc", "token", "ferry-0011223344556677-short"} {
		if _, err := CAPrefix(bad); err == nil {
			t.Errorf("CAPrefix(%q) accepted", bad)
		}
	}
}

func TestClaimHostOnce(t *testing.T) {
	m := &MemTokens{}
	if err := m.ClaimHost(context.Background(), "h1", "a"); err != nil {
		t.Fatal(err)
	}
	if err := m.ClaimHost(context.Background(), "h1", "b"); err == nil {
		t.Fatal("a second claim of h1 succeeded")
	}
}

// TestPolicyWritesAreAdminOnly: the cluster policy (insecureTransport
// among it) is read by viewers and written only by admins.
func TestPolicyWritesAreAdminOnly(t *testing.T) {
	set := Needed("/ferry.v1.FleetService/SetPolicies")
	for _, r := range []Role{RoleViewer, RoleOperator, RoleAgent} {
		if Allows(r, set) {
			t.Errorf("%s may set the cluster policies", r)
		}
	}
	if !Allows(RoleAdmin, set) || !Allows(RoleViewer, Needed("/ferry.v1.FleetService/GetPolicies")) {
		t.Error("admin cannot set, or viewer cannot read, the policies")
	}
}
