package agent

import (
	"context"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"

	"connectrpc.com/connect"
	ferryv1 "github.com/ferryvm/ferry/gen/ferry/v1"
	"github.com/ferryvm/ferry/gen/ferry/v1/ferryv1connect"
	"github.com/ferryvm/ferry/internal/auth"
	"github.com/ferryvm/ferry/internal/etcdembed/etcdtest"
	"github.com/ferryvm/ferry/internal/pki"
	"github.com/ferryvm/ferry/internal/rpcaddr"
	"github.com/ferryvm/ferry/internal/server"
)

// TestJoinRenewAndTakenName runs a real server (embedded etcd, TLS, auth)
// and agents joining it: a join token gives a certificate for the host
// name, saved and reused after a restart; a second agent with the same
// name is refused; the token cannot be used twice; the certificate is
// renewed at two thirds of its lifetime.
func TestJoinRenewAndTakenName(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	dir, err := os.MkdirTemp("", "fjoin") // short: unix socket path
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	st := etcdtest.Store(t, filepath.Join(dir, "etcd"))
	ca, _, err := pki.LoadOrCreateCA(filepath.Join(dir, "ca"))
	if err != nil {
		t.Fatal(err)
	}
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	srv := server.New(server.Config{Store: st, Log: quiet, Security: &server.Security{CA: ca, Name: "s1", Tokens: auth.EtcdTokens{C: st.Client()}, CertTTL: 3 * time.Second}})
	t.Cleanup(func() { rpcaddr.SetCredentials(nil) })
	sock := "unix://" + filepath.Join(dir, "server.sock")
	sctx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- srv.Serve(sctx, []string{sock}, nil) }()
	t.Cleanup(func() { stop(); <-done })

	cert, key, err := ca.IssueKeyPair(pki.KindAdmin, "root", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	admin, err := rpcaddr.Entry{CA: string(ca.CertPEM), Cert: string(cert), Key: string(key)}.Credentials()
	if err != nil {
		t.Fatal(err)
	}
	hc, base := rpcaddr.ClientWith(sock, admin)
	authc := ferryv1connect.NewAuthServiceClient(hc, base)
	var tok string
	for deadline := time.Now().Add(10 * time.Second); ; {
		resp, err := authc.CreateToken(ctx, connect.NewRequest(&ferryv1.CreateTokenRequest{Role: "agent"}))
		if err == nil {
			tok = resp.Msg.Token
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("create token: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	tokFile := filepath.Join(dir, "join.token")
	if err := os.WriteFile(tokFile, []byte(tok+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	newAgent := func(name, data string) *Agent {
		a, err := New(Config{Name: name, Listen: "127.0.0.1:0", Server: sock, DataDir: filepath.Join(dir, data), JoinToken: "@" + tokFile, Log: quiet})
		if err != nil {
			t.Fatal(err)
		}
		return a
	}
	a := newAgent("h1", "h1")
	id, err := a.loadIdentity(ctx)
	if err != nil {
		t.Fatalf("join: %v", err)
	}
	if got := pki.IdentityOf(id.kp.Leaf()); got != (pki.Identity{Kind: pki.KindAgent, Name: "h1"}) {
		t.Fatalf("joined as %s", got)
	}
	if fi, err := os.Stat(a.pkiPath(agentKey)); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("agent key: %v mode %v", err, fi.Mode().Perm())
	}
	// The join brought the host's stream certificate too: its own key
	// (mode 0600), kind ferry-qemu, this host's name.
	scert, skey, err := a.savedStream()
	if err != nil {
		t.Fatalf("stream certificate after the join: %v", err)
	}
	akey, _ := os.ReadFile(a.pkiPath(agentKey))
	if string(skey) == string(akey) {
		t.Fatal("the stream key is the agent's key")
	}
	if fi, err := os.Stat(a.pkiPath(streamKey)); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("stream key: %v mode %v", err, fi.Mode().Perm())
	}
	if c, _ := pki.ParseCert(scert); pki.IdentityOf(c) != (pki.Identity{Kind: pki.KindQEMU, Name: "h1"}) {
		t.Fatalf("stream certificate is %s", pki.IdentityOf(c))
	}
	// Restarted: the saved certificate is used, the spent token is not needed.
	again, err := newAgent("h1", "h1").loadIdentity(ctx)
	if err != nil || pki.Fingerprint(again.kp.Leaf()) != pki.Fingerprint(id.kp.Leaf()) {
		t.Fatalf("restart: %v (same certificate: %v)", err, err == nil && pki.Fingerprint(again.kp.Leaf()) == pki.Fingerprint(id.kp.Leaf()))
	}
	// The token is spent.
	if _, err := newAgent("h2", "h2").loadIdentity(ctx); err == nil {
		t.Fatal("a used join token let h2 join")
	}
	// A fresh token, but a taken name.
	resp, err := authc.CreateToken(ctx, connect.NewRequest(&ferryv1.CreateTokenRequest{Role: "agent"}))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(tokFile, []byte(resp.Msg.Token), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := newAgent("h1", "h1-impostor").loadIdentity(ctx); err == nil || connect.CodeOf(err) != connect.CodeAlreadyExists {
		t.Fatalf("second agent named h1: %v, want already_exists", err)
	}
	// An agent upgraded from a version without stream certificates (none
	// saved) renews at once to get one; then at two thirds of the 3 s
	// lifetime.
	if err := os.Remove(a.pkiPath(streamCert)); err != nil {
		t.Fatal(err)
	}
	rpcaddr.SetCredentials(&rpcaddr.Credentials{TLS: pki.ClientTLS(ca.Pool(), id.kp, pki.KindServer)})
	first := id.kp.Leaf()
	rctx, rstop := context.WithCancel(ctx)
	defer rstop()
	go a.renewLoop(rctx, id)
	for deadline := time.Now().Add(15 * time.Second); pki.Fingerprint(id.kp.Leaf()) == pki.Fingerprint(first); {
		if time.Now().After(deadline) {
			t.Fatal("certificate not renewed within 15 s of a 3 s lifetime")
		}
		time.Sleep(100 * time.Millisecond)
	}
	renewed := id.kp.Leaf()
	if !renewed.NotAfter.After(first.NotAfter) || pki.IdentityOf(renewed).Name != "h1" {
		t.Fatalf("renewed certificate %s until %s (was until %s)", pki.IdentityOf(renewed), renewed.NotAfter, first.NotAfter)
	}
	saved, err := a.savedIdentity()
	if err != nil || pki.Fingerprint(saved.kp.Leaf()) != pki.Fingerprint(renewed) {
		t.Fatalf("renewed certificate not saved: %v", err)
	}
	var rcert []byte
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		if rcert, _, err = a.savedStream(); err == nil || time.Now().After(deadline) {
			break
		}
	}
	if err != nil {
		t.Fatalf("no stream certificate after the renewal: %v", err)
	}
	if c, _ := pki.ParseCert(rcert); pki.IdentityOf(c) != (pki.Identity{Kind: pki.KindQEMU, Name: "h1"}) || !c.NotAfter.After(first.NotAfter) {
		t.Fatalf("renewed stream certificate %s until %s", pki.IdentityOf(c), c.NotAfter)
	}
}
