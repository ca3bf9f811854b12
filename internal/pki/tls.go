package pki

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync/atomic"
)

// Keypair holds a certificate (with the CA appended to its chain, so a
// peer can pin the CA on first contact) that can be swapped while in use
// (renewal).
type Keypair struct {
	cur atomic.Pointer[tls.Certificate]
}

// NewKeypair parses a PEM certificate and key; caPEM is appended to the
// chain.
func NewKeypair(certPEM, keyPEM, caPEM []byte) (*Keypair, error) {
	k := &Keypair{}
	return k, k.Set(certPEM, keyPEM, caPEM)
}

// Set replaces the certificate.
func (k *Keypair) Set(certPEM, keyPEM, caPEM []byte) error {
	c, err := tls.X509KeyPair(append(append([]byte{}, certPEM...), caPEM...), keyPEM)
	if err != nil {
		return fmt.Errorf("key pair: %w", err)
	}
	k.cur.Store(&c)
	return nil
}

// Leaf is the current certificate, parsed.
func (k *Keypair) Leaf() *x509.Certificate {
	c := k.cur.Load()
	if c == nil || len(c.Certificate) == 0 {
		return nil
	}
	l, _ := x509.ParseCertificate(c.Certificate[0])
	return l
}

func (k *Keypair) get() (*tls.Certificate, error) {
	if c := k.cur.Load(); c != nil {
		return c, nil
	}
	return nil, errors.New("no certificate")
}

// verifyPeer returns a VerifyConnection that checks the peer's chain
// against pool (whatever name was dialled: Ferry verifies identities by
// kind and name, not by address) and that its kind is one of kinds (any
// when empty) and, when name is not empty, its name.
func verifyPeer(pool *x509.CertPool, name string, kinds ...Kind) func(tls.ConnectionState) error {
	return func(cs tls.ConnectionState) error {
		if len(cs.PeerCertificates) == 0 {
			return errors.New("peer sent no certificate")
		}
		inter := x509.NewCertPool()
		for _, c := range cs.PeerCertificates[1:] {
			inter.AddCert(c)
		}
		leaf := cs.PeerCertificates[0]
		if _, err := leaf.Verify(x509.VerifyOptions{Roots: pool, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
			return fmt.Errorf("peer certificate not issued by the cluster CA: %w", err)
		}
		id := IdentityOf(leaf)
		if len(kinds) > 0 && !slices.Contains(kinds, id.Kind) {
			return fmt.Errorf("peer certificate is %s, want a %v certificate", id, kinds)
		}
		if name != "" && id.Name != name {
			return fmt.Errorf("peer certificate is %s, want %s", id, name)
		}
		return nil
	}
}

// ServerTLS is the TLS config of `ferry server`: its own certificate, and
// client certificates (agents, peer replicas, admin users) verified when
// given; bearer-token users present none.
func ServerTLS(ca *x509.CertPool, kp *Keypair) *tls.Config {
	return &tls.Config{
		MinVersion:     tls.VersionTLS13,
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return kp.get() },
		ClientAuth:     tls.VerifyClientCertIfGiven,
		ClientCAs:      ca,
	}
}

// AgentTLS is the TLS config of `ferry agent`'s API: only a server
// certificate of the cluster may call it.
func AgentTLS(ca *x509.CertPool, kp *Keypair) *tls.Config {
	return &tls.Config{
		MinVersion:       tls.VersionTLS13,
		GetCertificate:   func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return kp.get() },
		ClientAuth:       tls.RequireAndVerifyClientCert,
		ClientCAs:        ca,
		VerifyConnection: verifyPeer(ca, "", KindServer),
	}
}

// ClientTLS is a client's TLS config: the peer must chain to ca and be of
// one of kinds; kp (may be nil) is the client certificate presented.
func ClientTLS(ca *x509.CertPool, kp *Keypair, kinds ...Kind) *tls.Config {
	cfg := &tls.Config{
		MinVersion:         tls.VersionTLS13,
		InsecureSkipVerify: true, // verifyPeer does the verification, by kind not address
		VerifyConnection:   verifyPeer(ca, "", kinds...),
	}
	if kp != nil {
		cfg.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return kp.get() }
	}
	return cfg
}

// PinnedTLS is the config of a first contact (join, login): the server's
// chain must contain a CA whose fingerprint starts with fpPrefix, and the
// server certificate must chain to it. The CA seen is stored in *seen.
func PinnedTLS(fpPrefix string, seen **x509.Certificate) *tls.Config {
	return &tls.Config{
		MinVersion:         tls.VersionTLS13,
		InsecureSkipVerify: true, // pinned by fingerprint below
		VerifyConnection: func(cs tls.ConnectionState) error {
			for _, c := range cs.PeerCertificates[1:] {
				if c.IsCA && fpPrefix != "" && strings.HasPrefix(Fingerprint(c), strings.ToLower(fpPrefix)) {
					pool := x509.NewCertPool()
					pool.AddCert(c)
					if err := verifyPeer(pool, "", KindServer)(cs); err != nil {
						return err
					}
					*seen = c
					return nil
				}
			}
			return fmt.Errorf("the server's CA does not have fingerprint %s...: not the cluster the token is for", fpPrefix)
		},
	}
}

// FingerprintPrefixLen is how many hex digits of the CA fingerprint a
// token carries.
const FingerprintPrefixLen = 16

// ShortFingerprint is the token's prefix of a fingerprint.
func ShortFingerprint(fp string) string {
	if len(fp) > FingerprintPrefixLen {
		return fp[:FingerprintPrefixLen]
	}
	return fp
}

// ValidHex reports whether s is lowercase hex.
func ValidHex(s string) bool {
	_, err := hex.DecodeString(s)
	return err == nil && strings.ToLower(s) == s
}

// HostServerTLS is the TLS config of a stream one agent receives from
// another (the cold disk copy): its own agent certificate, and the peer
// must present the agent certificate of host peer.
func HostServerTLS(ca *x509.CertPool, kp *Keypair, peer string) *tls.Config {
	return &tls.Config{
		MinVersion:       tls.VersionTLS13,
		GetCertificate:   func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return kp.get() },
		ClientAuth:       tls.RequireAndVerifyClientCert,
		ClientCAs:        ca,
		VerifyConnection: verifyPeer(ca, peer, KindAgent),
	}
}

// HostClientTLS is the TLS config of a stream one agent sends to another:
// its agent certificate, and the receiver must present the agent
// certificate of host peer.
func HostClientTLS(ca *x509.CertPool, kp *Keypair, peer string) *tls.Config {
	return &tls.Config{
		MinVersion:           tls.VersionTLS13,
		InsecureSkipVerify:   true, // verifyPeer checks the chain and the host name
		VerifyConnection:     verifyPeer(ca, peer, KindAgent),
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return kp.get() },
	}
}

// StreamServerTLS is the TLS config of the receiving end of a
// migration stream Ferry carries itself (internal/relay): the host's
// stream certificate (KindQEMU), and the sender must present host peer's
// stream certificate — what a listening QEMU's tls-authz admits.
func StreamServerTLS(ca *x509.CertPool, cert tls.Certificate, peer string) *tls.Config {
	return &tls.Config{
		MinVersion:       tls.VersionTLS13,
		Certificates:     []tls.Certificate{cert},
		ClientAuth:       tls.RequireAndVerifyClientCert,
		ClientCAs:        ca,
		VerifyConnection: verifyPeer(ca, peer, KindQEMU),
		// No session tickets: a TLS 1.3 server sends them unasked after
		// the handshake, and a QEMU sending its main channel never reads
		// it. QEMU then closes with those bytes unread, its kernel answers
		// with a reset, and the reset throws away the stream's tail not
		// yet read here (a relayed migration from a TLS-speaking QEMU
		// failed so: the destination QEMU hit end of stream inside RAM).
		SessionTicketsDisabled: true,
	}
}

// StreamClientTLS is the sending end's: its stream certificate, and the
// receiver must present host peer's — what a connecting QEMU's
// tls-hostname checks.
func StreamClientTLS(ca *x509.CertPool, cert tls.Certificate, peer string) *tls.Config {
	return &tls.Config{
		MinVersion:           tls.VersionTLS13,
		InsecureSkipVerify:   true, // verifyPeer checks the chain and the host name
		VerifyConnection:     verifyPeer(ca, peer, KindQEMU),
		Certificates:         []tls.Certificate{cert},
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &cert, nil },
	}
}

// FeatureTLSStreams is the agent feature (Host.agent_features) saying
// every stream the agent sends or receives between hosts (QEMU's RAM,
// multifd and preempt channels, NBD mirrors, the cold disk copy) is on
// TLS with the cluster's certificates unless a migration is explicitly
// insecureTransport. A server never starts a TLS migration whose source
// or destination agent lacks it: an older agent would send in plaintext.
const FeatureTLSStreams = "tls-streams"

// FeatureQEMUStreamCert is the agent feature saying the host's QEMU
// processes present and expect stream certificates (KindQEMU) on their
// TLS streams, never an agent's own certificate: a destination's QEMU
// admits only the source host's stream certificate. An agent without the
// feature gives QEMU its agent certificate and admits only the peer's
// agent certificate, so a server refuses a TLS migration between a host
// with the feature and one without (see docs/security.md).
const FeatureQEMUStreamCert = "qemu-stream-cert"
