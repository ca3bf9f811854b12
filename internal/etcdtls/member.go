package etcdtls

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/ferryvm/ferry/internal/pki"
)

// MemberCertTTL is the validity of an embedded member's certificate; the
// member issues itself a new one at every start.
const MemberCertTTL = 365 * 24 * time.Hour

// Files of a member's TLS directory (DATA/etcd/tls).
const (
	MemberCertFile = "member.crt"
	MemberKeyFile  = "member.key"
	MemberCAFile   = "ca.crt"
)

// MemberFiles are the paths of a member's certificate, key and trusted CA.
type MemberFiles struct {
	Cert, Key, CA string
}

// IssueMember issues the certificate of embedded member name from ca and
// writes it into dir (key mode 0600). It serves the member's peer and
// client listeners and is its client certificate towards other members;
// it names hosts (the hosts of the member's URLs; unspecified addresses
// skipped), loopback, name and pki.EtcdName.
func IssueMember(ca *pki.CA, dir, name string, hosts []string) (MemberFiles, error) {
	var dns []string
	ips := []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback}
	for _, h := range append([]string{"localhost"}, hosts...) {
		if ip := net.ParseIP(h); ip != nil {
			if !ip.IsUnspecified() && !slices.ContainsFunc(ips, ip.Equal) {
				ips = append(ips, ip)
			}
		} else if h != "" && h != name && !slices.Contains(dns, h) {
			dns = append(dns, h)
		}
	}
	cert, key, err := ca.IssueHostKeyPair(pki.KindEtcd, name, MemberCertTTL, dns, ips)
	if err != nil {
		return MemberFiles{}, fmt.Errorf("etcd member %s certificate: %w", name, err)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return MemberFiles{}, fmt.Errorf("etcd member %s certificate: %w", name, err)
	}
	f := MemberFiles{Cert: filepath.Join(dir, MemberCertFile), Key: filepath.Join(dir, MemberKeyFile), CA: filepath.Join(dir, MemberCAFile)}
	for _, w := range []struct {
		path string
		data []byte
		mode os.FileMode
	}{{f.Key, key, 0o600}, {f.Cert, cert, 0o644}, {f.CA, ca.CertPEM, 0o644}} {
		if err := pki.WriteFile(w.path, w.data, w.mode); err != nil {
			return MemberFiles{}, fmt.Errorf("etcd member %s certificate: write %s: %w", name, w.path, err)
		}
	}
	return f, nil
}

// ClientConfig is the TLS configuration of a client of the embedded
// members (the replica's own store client): the servers are verified
// against the cluster CA by address, and the member's certificate is the
// client certificate.
func (f MemberFiles) ClientConfig() (*tls.Config, error) {
	kp, err := tls.LoadX509KeyPair(f.Cert, f.Key)
	if err != nil {
		return nil, fmt.Errorf("etcd member certificate: %w", err)
	}
	b, err := os.ReadFile(f.CA)
	if err != nil {
		return nil, fmt.Errorf("etcd member CA: %w", err)
	}
	ca, err := pki.ParseCert(b)
	if err != nil {
		return nil, fmt.Errorf("etcd member CA %s: %w", f.CA, err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca)
	return &tls.Config{MinVersion: tls.VersionTLS13, RootCAs: pool, Certificates: []tls.Certificate{kp}}, nil
}
