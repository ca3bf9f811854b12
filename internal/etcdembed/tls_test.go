package etcdembed_test

import (
	"context"
	"crypto/tls"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/ferryvm/ferry/internal/etcdembed"
	"github.com/ferryvm/ferry/internal/etcdembed/etcdtest"
	"github.com/ferryvm/ferry/internal/etcdtls"
	"github.com/ferryvm/ferry/internal/pki"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// startTLSPair starts two members whose peer and client URLs are https on
// 127.0.0.1, with certificates from ca.
func startTLSPair(t *testing.T, ca *pki.CA) ([]etcdembed.Member, []*etcdembed.Etcd) {
	t.Helper()
	var ms []etcdembed.Member
	for i := 1; i <= 2; i++ {
		ms = append(ms, etcdembed.Member{
			Name:         fmt.Sprintf("t%d", i),
			Dir:          t.TempDir(),
			ListenPeer:   etcdtest.URL(t, "https"),
			ListenClient: etcdtest.URL(t, "https"),
			CA:           ca,
			ReadyTimeout: 20 * time.Second,
		})
	}
	es := etcdtest.Start(t, ms)
	return ms, es
}

func client(t *testing.T, ep string, cfg *tls.Config) *clientv3.Client {
	t.Helper()
	c, err := clientv3.New(clientv3.Config{Endpoints: []string{ep}, DialTimeout: 2 * time.Second, TLS: cfg})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// TestTLSMembers forms a two-member cluster over https peer and client
// URLs with certificates from the cluster CA, and checks who is served:
// a TLS client with a member certificate (the replica's own, and one
// configured like --etcd-ca/--etcd-cert/--etcd-key) is; a plaintext
// client, a TLS client without a certificate, a peer whose certificate
// is from another CA, and an agent certificate of the same CA are not.
func TestTLSMembers(t *testing.T) {
	ca, err := pki.NewCA("test CA")
	if err != nil {
		t.Fatal(err)
	}
	ms, es := startTLSPair(t, ca)
	if es[0].ClientTLS == nil || !strings.HasPrefix(es[0].Endpoint, "https://") {
		t.Fatalf("member 1: endpoint %s, client TLS %v; want https with TLS", es[0].Endpoint, es[0].ClientTLS)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()

	c1 := client(t, es[0].Endpoint, es[0].ClientTLS)
	ml, err := c1.MemberList(ctx)
	if err != nil || len(ml.Members) != 2 {
		t.Fatalf("member list = %v, %v; want 2 members", ml, err)
	}
	if _, err := c1.Put(ctx, "/k", "v"); err != nil {
		t.Fatal(err)
	}
	// An external-etcd style client: CA, certificate and key as files.
	dir := ms[1].Dir + "/tls/"
	ext := etcdtls.Client{CA: dir + etcdtls.MemberCAFile, Cert: dir + etcdtls.MemberCertFile, Key: dir + etcdtls.MemberKeyFile}
	if _, err := ext.Check([]string{es[1].Endpoint}); err != nil {
		t.Fatal(err)
	}
	extCfg, err := ext.Config([]string{es[1].Endpoint})
	if err != nil {
		t.Fatal(err)
	}
	got, err := client(t, es[1].Endpoint, extCfg).Get(ctx, "/k")
	if err != nil || len(got.Kvs) != 1 || string(got.Kvs[0].Value) != "v" {
		t.Fatalf("read through member 2 with file TLS = %v, %v; want v", got, err)
	}

	refused := func(what string, ep string, cfg *tls.Config) {
		t.Helper()
		rctx, rcancel := context.WithTimeout(ctx, time.Second)
		defer rcancel()
		if _, err := client(t, ep, cfg).Get(rctx, "/k"); err == nil {
			t.Errorf("%s: served, want refused", what)
		}
	}
	refused("plaintext client", strings.Replace(es[0].Endpoint, "https://", "http://", 1), nil)
	refused("TLS client without a certificate", es[0].Endpoint, &tls.Config{RootCAs: ca.Pool(), MinVersion: tls.VersionTLS13})

	other, err := pki.NewCA("another CA")
	if err != nil {
		t.Fatal(err)
	}
	foreign := etcdtlsFiles(t, other, "t3")
	agentCert, agentKey, err := ca.IssueKeyPair(pki.KindAgent, "host1", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	agent, err := tls.X509KeyPair(agentCert, agentKey)
	if err != nil {
		t.Fatal(err)
	}
	own, err := tls.LoadX509KeyPair(dir+etcdtls.MemberCertFile, dir+etcdtls.MemberKeyFile)
	if err != nil {
		t.Fatal(err)
	}
	peer := ms[0].ListenPeer + "/version"
	for _, tc := range []struct {
		name string
		cert tls.Certificate
		ok   bool
	}{{"member certificate", own, true}, {"peer certificate from another CA", foreign, false}, {"agent certificate of the cluster CA", agent, false}} {
		hc := &http.Client{Timeout: 3 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{
			RootCAs: ca.Pool(), Certificates: []tls.Certificate{tc.cert}, MinVersion: tls.VersionTLS13}}}
		resp, err := hc.Get(peer)
		if err == nil {
			resp.Body.Close()
		}
		if ok := err == nil && resp.StatusCode == http.StatusOK; ok != tc.ok {
			t.Errorf("peer port with a %s: served = %v (err %v), want %v", tc.name, ok, err, tc.ok)
		}
	}
	refused("client with a certificate from another CA", es[0].Endpoint, &tls.Config{RootCAs: ca.Pool(), Certificates: []tls.Certificate{foreign}, MinVersion: tls.VersionTLS13})
}

// etcdtlsFiles issues a member certificate of ca and loads it.
func etcdtlsFiles(t *testing.T, ca *pki.CA, name string) tls.Certificate {
	t.Helper()
	f, err := etcdtls.IssueMember(ca, t.TempDir(), name, []string{"127.0.0.1"})
	if err != nil {
		t.Fatal(err)
	}
	c, err := tls.LoadX509KeyPair(f.Cert, f.Key)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// TestMemberTLSValidation: plaintext peer or client URLs on another
// machine need --etcd-insecure, https URLs need --ca, and a mix is
// refused, each naming the fix.
func TestMemberTLSValidation(t *testing.T) {
	ca, err := pki.NewCA("test CA")
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		m    etcdembed.Member
		want []string
	}{
		{"remote http peers", etcdembed.Member{InitialCluster: "a=http://10.0.0.1:2380,b=http://10.0.0.2:2380", ListenPeer: "http://10.0.0.1:2380", ListenClient: "http://127.0.0.1:2379"},
			[]string{"http://10.0.0.2:2380", "plaintext", "https://", "--ca DIR", "--etcd-insecure"}},
		{"remote http client", etcdembed.Member{InitialCluster: "a=https://10.0.0.1:2380", ListenPeer: "https://10.0.0.1:2380", ListenClient: "http://10.0.0.1:2379", CA: ca},
			[]string{"--listen-client http://10.0.0.1:2379", "--etcd-insecure"}},
		{"https without CA", etcdembed.Member{InitialCluster: "a=https://10.0.0.1:2380", ListenPeer: "https://10.0.0.1:2380", ListenClient: "http://127.0.0.1:2379"},
			[]string{"pass --ca DIR"}},
		{"https client on any address", etcdembed.Member{InitialCluster: "a=https://10.0.0.1:2380", ListenPeer: "https://10.0.0.1:2380", ListenClient: "https://0.0.0.0:2379", CA: ca},
			[]string{"--advertise-client: https://0.0.0.0:2379", "give --advertise-client https://"}},
		{"mixed peers", etcdembed.Member{InitialCluster: "a=https://10.0.0.1:2380,b=http://10.0.0.2:2380", ListenPeer: "https://10.0.0.1:2380", ListenClient: "http://127.0.0.1:2379", CA: ca, Insecure: true},
			[]string{"--initial-cluster", "use https:// for all"}},
	} {
		tc.m.Name, tc.m.Dir = "a", t.TempDir()
		_, err := etcdembed.StartMember(context.Background(), tc.m)
		if err == nil {
			t.Errorf("%s: accepted", tc.name)
			continue
		}
		for _, w := range tc.want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("%s: error %q does not mention %q", tc.name, err, w)
			}
		}
	}
}
