// Package pki is Ferry's cluster certificate authority: it creates and
// loads the CA, issues the certificates of servers, agents, users and
// QEMU's migration endpoints, and reads a verified peer certificate back
// as an identity (kind and name). A certificate's kind is its
// organizational unit; its name is its common name (a server replica's
// name, an agent's host name, a user's name).
package pki

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"time"

	"golang.org/x/sys/unix"
)

// Kind is what a certificate is for; it is the certificate's OU.
type Kind string

// Certificate kinds.
const (
	// KindServer is a control-plane replica (ferry server).
	KindServer Kind = "ferry-server"
	// KindAgent is a host agent; its name is the host name.
	KindAgent Kind = "ferry-agent"
	// KindAdmin is a user certificate with the admin role (the dev
	// cluster's, or one an operator mints from the CA key).
	KindAdmin Kind = "ferry-admin"
	// KindQEMU is a host's stream certificate: the only certificate its
	// QEMU processes get (tls-creds-x509), for their migration and NBD
	// streams; its name is the host name. It authenticates nowhere else:
	// neither the server's API nor an agent's, nor the agents' own
	// streams (the cold disk copy) accept it.
	KindQEMU Kind = "ferry-qemu"
	// KindEtcd is an embedded etcd member's peer and client certificate;
	// its name is the member name and it also carries EtcdName.
	KindEtcd Kind = "ferry-etcd"
)

// ServerName is the DNS name every server certificate carries; clients
// verify the server against it whatever address they dialled.
const ServerName = "ferry-server.cluster.ferry"

// EtcdName is the DNS name every etcd member certificate carries; the
// embedded members accept peers and clients only with a certificate
// naming it, so an agent's certificate (whose names are DNS labels) from
// the same CA cannot reach etcd.
const EtcdName = "etcd.cluster.ferry"

// Files of a CA directory (--ca DIR, or the server's data dir).
const (
	CACertFile = "ca.crt"
	CAKeyFile  = "ca.key"
)

// ErrNoCA means a directory holds no CA.
var ErrNoCA = errors.New("no cluster CA")

// CA is the cluster's certificate authority.
type CA struct {
	Cert    *x509.Certificate
	CertPEM []byte
	key     *ecdsa.PrivateKey
	KeyPEM  []byte
}

// NewCA creates a CA valid for ten years.
func NewCA(name string) (*CA, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generate CA key: %w", err)
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial(),
		Subject:               pkix.Name{CommonName: name, Organization: []string{"ferry"}},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(10 * 365 * 24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, fmt.Errorf("create CA certificate: %w", err)
	}
	keyPEM, err := KeyPEM(key)
	if err != nil {
		return nil, err
	}
	return ParseCA(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), keyPEM)
}

// ParseCA reads a CA from PEM.
func ParseCA(certPEM, keyPEM []byte) (*CA, error) {
	cert, err := ParseCert(certPEM)
	if err != nil {
		return nil, fmt.Errorf("CA certificate: %w", err)
	}
	if !cert.IsCA {
		return nil, errors.New("CA certificate: not a CA")
	}
	key, err := ParseKey(keyPEM)
	if err != nil {
		return nil, fmt.Errorf("CA key: %w", err)
	}
	if !key.PublicKey.Equal(cert.PublicKey) {
		return nil, errors.New("CA key does not match the CA certificate")
	}
	return &CA{Cert: cert, CertPEM: certPEM, key: key, KeyPEM: keyPEM}, nil
}

// LoadCA reads DIR/ca.crt and DIR/ca.key; ErrNoCA if absent.
func LoadCA(dir string) (*CA, error) {
	c, err := os.ReadFile(filepath.Join(dir, CACertFile))
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("%s: %w", dir, ErrNoCA)
	}
	if err != nil {
		return nil, err
	}
	k, err := os.ReadFile(filepath.Join(dir, CAKeyFile))
	if err != nil {
		return nil, fmt.Errorf("CA key in %s: %w", dir, err)
	}
	return ParseCA(c, k)
}

// Save writes the CA into dir: the key with mode 0600.
func (ca *CA) Save(dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	if err := WriteFile(filepath.Join(dir, CAKeyFile), ca.KeyPEM, 0o600); err != nil {
		return err
	}
	return WriteFile(filepath.Join(dir, CACertFile), ca.CertPEM, 0o644)
}

// LoadOrCreateCA loads the CA in dir or creates and saves one; created
// says which.
// Replicas starting together on one --ca directory serialise on a lock
// file there, so exactly one creates the CA.
func LoadOrCreateCA(dir string) (ca *CA, created bool, err error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, false, err
	}
	lf, err := os.OpenFile(filepath.Join(dir, ".lock"), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, false, fmt.Errorf("CA lock: %w", err)
	}
	defer lf.Close()
	if err := unix.Flock(int(lf.Fd()), unix.LOCK_EX); err != nil {
		return nil, false, fmt.Errorf("CA lock: %w", err)
	}
	defer unix.Flock(int(lf.Fd()), unix.LOCK_UN) //nolint:errcheck // closing releases it too
	ca, err = LoadCA(dir)
	if err == nil || !errors.Is(err, ErrNoCA) {
		return ca, false, err
	}
	if ca, err = NewCA("ferry cluster CA"); err != nil {
		return nil, false, err
	}
	return ca, true, ca.Save(dir)
}

// Fingerprint is the SHA-256 of the CA certificate, hex.
func (ca *CA) Fingerprint() string { return Fingerprint(ca.Cert) }

// Fingerprint is the SHA-256 of a certificate's DER, hex.
func Fingerprint(c *x509.Certificate) string {
	s := sha256.Sum256(c.Raw)
	return hex.EncodeToString(s[:])
}

// Pool is a cert pool holding only the CA.
func (ca *CA) Pool() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(ca.Cert)
	return p
}

// Issue signs a certificate of kind for name over pub, valid for ttl.
// Server certificates also carry ServerName, agent and QEMU certificates
// the host name, plus any ips given.
func (ca *CA) Issue(kind Kind, name string, pub any, ttl time.Duration, ips ...net.IP) ([]byte, error) {
	return ca.issue(kind, name, pub, ttl, nil, ips)
}

func (ca *CA) issue(kind Kind, name string, pub any, ttl time.Duration, dns []string, ips []net.IP) ([]byte, error) {
	if name == "" {
		return nil, errors.New("issue: empty name")
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber: serial(),
		Subject:      pkix.Name{CommonName: name, OrganizationalUnit: []string{string(kind)}, Organization: []string{"ferry"}},
		NotBefore:    now.Add(-5 * time.Minute),
		NotAfter:     now.Add(ttl),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		DNSNames:     append([]string{name}, dns...),
		IPAddresses:  ips,
	}
	if kind == KindAgent || kind == KindQEMU {
		// QEMU (GnuTLS) refuses a TLS server certificate, which a host's
		// stream certificate is on the migration and NBD streams, without
		// key encipherment (agent certificates keep it: issued so before
		// stream certificates existed, and a mixed cluster's old agents
		// still give theirs to QEMU).
		tmpl.KeyUsage |= x509.KeyUsageKeyEncipherment
	}
	switch kind {
	case KindServer:
		tmpl.DNSNames = append(tmpl.DNSNames, ServerName)
	case KindEtcd:
		tmpl.DNSNames = append(tmpl.DNSNames, EtcdName)
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, pub, ca.key)
	if err != nil {
		return nil, fmt.Errorf("issue %s certificate for %s: %w", kind, name, err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), nil
}

// IssueKeyPair makes a new key and a certificate for it: both PEM.
func (ca *CA) IssueKeyPair(kind Kind, name string, ttl time.Duration, ips ...net.IP) (certPEM, keyPEM []byte, err error) {
	return ca.IssueHostKeyPair(kind, name, ttl, nil, ips)
}

// IssueHostKeyPair is IssueKeyPair for a certificate that also names
// the extra DNS names dns and the addresses ips (an etcd member's URLs).
func (ca *CA) IssueHostKeyPair(kind Kind, name string, ttl time.Duration, dns []string, ips []net.IP) (certPEM, keyPEM []byte, err error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	certPEM, err = ca.issue(kind, name, &key.PublicKey, ttl, dns, ips)
	if err != nil {
		return nil, nil, err
	}
	keyPEM, err = KeyPEM(key)
	return certPEM, keyPEM, err
}

// Verify checks that c chains to the CA now and returns its identity.
func (ca *CA) Verify(c *x509.Certificate) (Identity, error) {
	if _, err := c.Verify(x509.VerifyOptions{Roots: ca.Pool(), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
		return Identity{}, err
	}
	return IdentityOf(c), nil
}

// Identity is who a verified certificate names.
type Identity struct {
	Kind Kind
	Name string
}

// String renders "kind/name".
func (i Identity) String() string { return string(i.Kind) + "/" + i.Name }

// IdentityOf reads the kind and name of a certificate (not verifying it).
func IdentityOf(c *x509.Certificate) Identity {
	id := Identity{Name: c.Subject.CommonName}
	if len(c.Subject.OrganizationalUnit) == 1 {
		id.Kind = Kind(c.Subject.OrganizationalUnit[0])
	}
	return id
}

// NewCSR makes a key and a PEM certificate request for name.
func NewCSR(name string) (csrPEM, keyPEM []byte, err error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: name}}, key)
	if err != nil {
		return nil, nil, err
	}
	keyPEM, err = KeyPEM(key)
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}), keyPEM, err
}

// ParseCSR reads and checks the signature of a PEM certificate request;
// only its public key is used (the CA sets every name itself).
func ParseCSR(b []byte) (*x509.CertificateRequest, error) {
	blk, _ := pem.Decode(b)
	if blk == nil || blk.Type != "CERTIFICATE REQUEST" {
		return nil, errors.New("csr: not a PEM certificate request")
	}
	r, err := x509.ParseCertificateRequest(blk.Bytes)
	if err != nil {
		return nil, fmt.Errorf("csr: %w", err)
	}
	if err := r.CheckSignature(); err != nil {
		return nil, fmt.Errorf("csr: %w", err)
	}
	return r, nil
}

// ParseCert reads the first certificate of PEM data.
func ParseCert(b []byte) (*x509.Certificate, error) {
	blk, _ := pem.Decode(b)
	if blk == nil || blk.Type != "CERTIFICATE" {
		return nil, errors.New("not a PEM certificate")
	}
	return x509.ParseCertificate(blk.Bytes)
}

// KeyPEM encodes an EC private key.
func KeyPEM(k *ecdsa.PrivateKey) ([]byte, error) {
	der, err := x509.MarshalECPrivateKey(k)
	if err != nil {
		return nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der}), nil
}

// ParseKey reads an EC private key (SEC 1 or PKCS #8 PEM).
func ParseKey(b []byte) (*ecdsa.PrivateKey, error) {
	blk, _ := pem.Decode(b)
	if blk == nil {
		return nil, errors.New("not a PEM key")
	}
	if k, err := x509.ParseECPrivateKey(blk.Bytes); err == nil {
		return k, nil
	}
	k, err := x509.ParsePKCS8PrivateKey(blk.Bytes)
	if err != nil {
		return nil, err
	}
	ek, ok := k.(*ecdsa.PrivateKey)
	if !ok {
		return nil, errors.New("not an EC key")
	}
	return ek, nil
}

// WriteFile writes data to path atomically with mode perm.
func WriteFile(path string, data []byte, perm os.FileMode) error {
	f, err := os.CreateTemp(filepath.Dir(path), filepath.Base(path)+".tmp*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	defer os.Remove(tmp) // after a successful rename: nothing there
	if err := f.Chmod(perm); err != nil {
		f.Close()
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

func serial() *big.Int {
	n, _ := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 126))
	return n
}
