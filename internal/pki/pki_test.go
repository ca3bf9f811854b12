package pki

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"
)

func TestCASaveLoadAndKeyMode(t *testing.T) {
	dir := t.TempDir()
	ca, created, err := LoadOrCreateCA(dir)
	if err != nil || !created {
		t.Fatalf("LoadOrCreateCA: %v created=%v", err, created)
	}
	fi, err := os.Stat(filepath.Join(dir, CAKeyFile))
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("CA key mode %v (%v), want 0600", fi.Mode().Perm(), err)
	}
	again, created, err := LoadOrCreateCA(dir)
	if err != nil || created || again.Fingerprint() != ca.Fingerprint() {
		t.Fatalf("reload: %v created=%v same=%v", err, created, again.Fingerprint() == ca.Fingerprint())
	}
}

func TestIssueAndIdentity(t *testing.T) {
	ca, _ := NewCA("t")
	other, _ := NewCA("o")
	cert, _, err := ca.IssueKeyPair(KindAgent, "h1", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	c, _ := ParseCert(cert)
	id, err := ca.Verify(c)
	if err != nil || id != (Identity{KindAgent, "h1"}) {
		t.Fatalf("Verify = %v, %v", id, err)
	}
	if _, err := other.Verify(c); err == nil {
		t.Fatal("another CA verified the certificate")
	}
}

// handshake runs a TLS handshake between server and client configs and
// returns the client's and the server's errors.
func handshake(t *testing.T, server, client *tls.Config) (error, error) {
	t.Helper()
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	errc := make(chan error, 1)
	go func() {
		s := tls.Server(a, server)
		errc <- s.Handshake()
		s.Close()
	}()
	cl := tls.Client(b, client)
	cerr := cl.Handshake()
	if cerr == nil {
		// TLS 1.3: the server's verdict on the client certificate arrives
		// after the client's handshake; a read surfaces it.
		_ = cl.SetReadDeadline(time.Now().Add(2 * time.Second))
		_, rerr := cl.Read(make([]byte, 1))
		if rerr != nil && !isTimeout(rerr) && !errors.Is(rerr, io.EOF) {
			cerr = rerr
		}
	}
	cl.Close()
	return cerr, <-errc
}

func isTimeout(err error) bool {
	ne, ok := err.(net.Error)
	return ok && ne.Timeout()
}

func kp(t *testing.T, ca *CA, kind Kind, name string) *Keypair {
	c, k, err := ca.IssueKeyPair(kind, name, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	p, err := NewKeypair(c, k, ca.CertPEM)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// TestAgentAcceptsOnlyServerCertificates: the agent API's TLS refuses a
// client without a certificate, with an agent's or admin's, or from
// another CA, and accepts a server certificate of the cluster.
func TestAgentAcceptsOnlyServerCertificates(t *testing.T) {
	ca, _ := NewCA("t")
	other, _ := NewCA("o")
	agent := AgentTLS(ca.Pool(), kp(t, ca, KindAgent, "h1"))
	for name, c := range map[string]*Keypair{
		"none":           nil,
		"agent":          kp(t, ca, KindAgent, "h2"),
		"admin":          kp(t, ca, KindAdmin, "root"),
		"foreign-server": kp(t, other, KindServer, "s1"),
		"stream":         kp(t, ca, KindQEMU, "h1"),
	} {
		cerr, serr := handshake(t, agent, ClientTLS(ca.Pool(), c, KindAgent))
		if cerr == nil && serr == nil {
			t.Errorf("agent accepted a client with %s certificate", name)
		}
	}
	if cerr, serr := handshake(t, agent, ClientTLS(ca.Pool(), kp(t, ca, KindServer, "s1"), KindAgent)); cerr != nil || serr != nil {
		t.Fatalf("server certificate refused: client %v, server %v", cerr, serr)
	}
	// The client side: a server expecting an agent refuses a peer that
	// presents a server certificate where an agent's is wanted.
	if cerr, _ := handshake(t, ServerTLS(ca.Pool(), kp(t, ca, KindServer, "s2")), ClientTLS(ca.Pool(), nil, KindAgent)); cerr == nil {
		t.Fatal("a client wanting an agent accepted a server certificate")
	}
}

func TestPinnedTLS(t *testing.T) {
	ca, _ := NewCA("t")
	srv := ServerTLS(ca.Pool(), kp(t, ca, KindServer, "s1"))
	if cerr, _ := handshake(t, srv, PinnedTLS(ShortFingerprint(ca.Fingerprint()), new(*x509.Certificate))); cerr != nil {
		t.Fatalf("pinned to the right CA: %v", cerr)
	}
	if cerr, _ := handshake(t, srv, PinnedTLS("0000000000000000", new(*x509.Certificate))); cerr == nil {
		t.Fatal("pinned to another fingerprint: accepted")
	}
}

// TestHostStreamTLS: a stream between two agents (the cold disk copy) is
// mutual TLS naming both hosts: the receiver refuses another host's agent
// certificate, a server's, none, or another CA's; the sender refuses a
// receiver that is not the destination host.
func TestHostStreamTLS(t *testing.T) {
	ca, _ := NewCA("t")
	other, _ := NewCA("o")
	h1, h2 := kp(t, ca, KindAgent, "h1"), kp(t, ca, KindAgent, "h2")
	recv := HostServerTLS(ca.Pool(), h2, "h1")
	if cerr, serr := handshake(t, recv, HostClientTLS(ca.Pool(), h1, "h2")); cerr != nil || serr != nil {
		t.Fatalf("h1 -> h2 refused: client %v, server %v", cerr, serr)
	}
	for name, c := range map[string]*Keypair{
		"none":          nil,
		"agent h3":      kp(t, ca, KindAgent, "h3"),
		"server h1":     kp(t, ca, KindServer, "h1"),
		"foreign agent": kp(t, other, KindAgent, "h1"),
		"stream h1":     kp(t, ca, KindQEMU, "h1"), // what h1's QEMU holds: not h1's agent
	} {
		cfg := HostClientTLS(ca.Pool(), c, "h2")
		if c == nil {
			cfg.GetClientCertificate = nil
		}
		if cerr, serr := handshake(t, recv, cfg); cerr == nil && serr == nil {
			t.Errorf("receiver of h1's stream accepted %s", name)
		}
	}
	if cerr, _ := handshake(t, HostServerTLS(ca.Pool(), kp(t, ca, KindAgent, "h3"), "h1"), HostClientTLS(ca.Pool(), h1, "h2")); cerr == nil {
		t.Error("sender to h2 accepted a receiver presenting h3's certificate")
	}
	if cerr, _ := handshake(t, HostServerTLS(ca.Pool(), kp(t, ca, KindQEMU, "h2"), "h1"), HostClientTLS(ca.Pool(), h1, "h2")); cerr == nil {
		t.Error("sender to h2 accepted a receiver presenting h2's stream certificate")
	}
}

func TestIssueEtcdMember(t *testing.T) {
	ca, err := NewCA("test")
	if err != nil {
		t.Fatal(err)
	}
	certPEM, _, err := ca.IssueHostKeyPair(KindEtcd, "s1", time.Hour, []string{"etcd1.example"}, []net.IP{net.ParseIP("10.0.0.1")})
	if err != nil {
		t.Fatal(err)
	}
	c, err := ParseCert(certPEM)
	if err != nil {
		t.Fatal(err)
	}
	for _, h := range []string{EtcdName, "s1", "etcd1.example", "10.0.0.1"} {
		if err := c.VerifyHostname(h); err != nil {
			t.Errorf("etcd member certificate does not name %s: %v", h, err)
		}
	}
	if id, err := ca.Verify(c); err != nil || id != (Identity{KindEtcd, "s1"}) {
		t.Errorf("identity = %v, %v; want ferry-etcd/s1", id, err)
	}
	agent, _, err := ca.IssueKeyPair(KindAgent, "host1", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if ac, _ := ParseCert(agent); ac.VerifyHostname(EtcdName) == nil {
		t.Error("an agent certificate names the etcd name")
	}
}

// TestStreamTLS: a migration stream Ferry relays is mutual TLS between
// the two hosts' stream certificates, as QEMU's own TLS checks them: the
// receiver refuses another host's, an agent's, none or another CA's; the
// sender refuses a receiver that is not the destination's stream
// certificate.
func TestStreamTLS(t *testing.T) {
	ca, _ := NewCA("t")
	other, _ := NewCA("o")
	cert := func(p *Keypair) tls.Certificate {
		c, err := p.get()
		if err != nil {
			t.Fatal(err)
		}
		return *c
	}
	h1, h2 := cert(kp(t, ca, KindQEMU, "h1")), cert(kp(t, ca, KindQEMU, "h2"))
	recv := StreamServerTLS(ca.Pool(), h2, "h1")
	if !recv.SessionTicketsDisabled {
		t.Error("stream server sends session tickets: a QEMU that never reads its channel resets it on close and the stream's unread tail is lost")
	}
	if cerr, serr := handshake(t, recv, StreamClientTLS(ca.Pool(), h1, "h2")); cerr != nil || serr != nil {
		t.Fatalf("h1 -> h2 refused: client %v, server %v", cerr, serr)
	}
	for name, c := range map[string]*Keypair{
		"stream h3":      kp(t, ca, KindQEMU, "h3"),
		"agent h1":       kp(t, ca, KindAgent, "h1"),
		"foreign h1":     kp(t, other, KindQEMU, "h1"),
		"server h1":      kp(t, ca, KindServer, "h1"),
		"no certificate": nil,
	} {
		cfg := StreamClientTLS(ca.Pool(), tls.Certificate{}, "h2")
		if c != nil {
			cfg = StreamClientTLS(ca.Pool(), cert(c), "h2")
		} else {
			cfg.Certificates, cfg.GetClientCertificate = nil, nil
		}
		if cerr, serr := handshake(t, recv, cfg); cerr == nil && serr == nil {
			t.Errorf("receiver of h1's stream accepted %s", name)
		}
	}
	if cerr, _ := handshake(t, StreamServerTLS(ca.Pool(), cert(kp(t, ca, KindQEMU, "h3")), "h1"), StreamClientTLS(ca.Pool(), h1, "h2")); cerr == nil {
		t.Error("sender to h2 accepted a receiver presenting h3's stream certificate")
	}
	if cerr, _ := handshake(t, StreamServerTLS(ca.Pool(), cert(kp(t, ca, KindAgent, "h2")), "h1"), StreamClientTLS(ca.Pool(), h1, "h2")); cerr == nil {
		t.Error("sender to h2 accepted a receiver presenting h2's agent certificate")
	}
}
