package qemutls

import (
	"crypto/x509"
	"encoding/asn1"
	"encoding/pem"
	"fmt"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ferryvm/ferry/internal/pki"
)

func TestWriteDirAndPair(t *testing.T) {
	ca, err := pki.NewCA("t")
	if err != nil {
		t.Fatal(err)
	}
	cert, key, err := ca.IssueKeyPair(pki.KindQEMU, "h1", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(t.TempDir(), "tls")
	if err := WriteDir(dir, ca.CertPEM, cert, key); err != nil {
		t.Fatal(err)
	}
	for f, mode := range map[string]os.FileMode{caFile: 0o600, serverCertFile: 0o600, serverKeyFile: 0o600, clientCertFile: 0o600, clientKeyFile: 0o600} {
		fi, err := os.Stat(filepath.Join(dir, f))
		if err != nil || fi.Mode().Perm() != mode {
			t.Errorf("%s: %v mode %v, want %v", f, err, fi.Mode().Perm(), mode)
		}
	}
	srv := ForPair(dir, "tls0", "h2", Server)
	if srv.AuthzArgs()["identity"] != "O=ferry,OU=ferry-qemu,CN=h2" || srv.MigrationParameters()["tls-authz"] != "tls0-authz" {
		t.Fatalf("server side: %v %v", srv.AuthzArgs(), srv.MigrationParameters())
	}
	cl := ForPair(dir, "tls0", "h2", Client)
	if cl.AuthzArgs() != nil || cl.MigrationParameters()["tls-hostname"] != "h2" || cl.ObjectArgs()["endpoint"] != "client" {
		t.Fatalf("client side: %v %v", cl.ObjectArgs(), cl.MigrationParameters())
	}
	// The DN the listener admits is the peer's stream certificate subject
	// in the certificate's attribute order (GnuTLS's, not RFC 4514's
	// reversal): a stream certificate's, not an agent certificate's.
	c, _ := pki.ParseCert(cert)
	var parts []string
	for _, rdn := range c.Subject.ToRDNSequence() {
		for _, atv := range rdn {
			key := map[string]string{"2.5.4.10": "O", "2.5.4.11": "OU", "2.5.4.3": "CN"}[atv.Type.String()]
			parts = append(parts, fmt.Sprintf("%s=%v", key, atv.Value))
		}
	}
	if got, want := ForPair(dir, "x", "h1", Server).PeerDN(), strings.Join(parts, ","); got != want {
		t.Fatalf("PeerDN %q, certificate subject in its order %q", got, want)
	}
}

// QEMU (GnuTLS) refuses a server certificate without key encipherment:
// a stream certificate has it (and an agent certificate keeps it, for a
// mixed cluster's older agents); it names the host as CN and DNS SAN.
func TestStreamCertificateServesQEMU(t *testing.T) {
	ca, err := pki.NewCA("t")
	if err != nil {
		t.Fatal(err)
	}
	for _, kind := range []pki.Kind{pki.KindQEMU, pki.KindAgent} {
		certPEM, _, err := ca.IssueKeyPair(kind, "h1", time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		c, _ := pki.ParseCert(certPEM)
		if c.KeyUsage&x509.KeyUsageKeyEncipherment == 0 || c.KeyUsage&x509.KeyUsageDigitalSignature == 0 {
			t.Errorf("%s certificate key usage %b: want digital signature and key encipherment", kind, c.KeyUsage)
		}
		if c.Subject.CommonName != "h1" || len(c.DNSNames) != 1 || c.DNSNames[0] != "h1" {
			t.Errorf("%s certificate names %q, SANs %v: want h1", kind, c.Subject.CommonName, c.DNSNames)
		}
	}
}

// The shipped Diffie-Hellman group is a 2048-bit safe prime with
// generator 2, in the PKCS#3 form GnuTLS reads.
func TestDHParams(t *testing.T) {
	b, _ := pem.Decode([]byte(ffdhe2048))
	if b == nil || b.Type != "DH PARAMETERS" {
		t.Fatalf("dh params: not a DH PARAMETERS PEM block")
	}
	var p struct{ P, G *big.Int }
	if rest, err := asn1.Unmarshal(b.Bytes, &p); err != nil || len(rest) != 0 {
		t.Fatalf("dh params: %v (%d bytes left)", err, len(rest))
	}
	q := new(big.Int).Rsh(p.P, 1) // (p-1)/2 for odd p
	if p.P.BitLen() != 2048 || p.G.Int64() != 2 || !p.P.ProbablyPrime(8) || !q.ProbablyPrime(8) {
		t.Fatalf("dh params: p of %d bits (prime %v, safe %v), g %v", p.P.BitLen(), p.P.ProbablyPrime(8), q.ProbablyPrime(8), p.G)
	}
	dir := filepath.Join(t.TempDir(), "tls")
	if err := WriteDir(dir, nil, nil, nil); err != nil {
		t.Fatal(err)
	}
	if got, err := os.ReadFile(filepath.Join(dir, dhParamsFile)); err != nil || string(got) != ffdhe2048 {
		t.Fatalf("dh-params.pem not written: %v", err)
	}
}
