package qemutls

import (
	"crypto/x509/pkix"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/ferryvm/ferry/internal/pki"
)

func TestWriteDirAndPair(t *testing.T) {
	ca, err := pki.NewCA("t")
	if err != nil {
		t.Fatal(err)
	}
	cert, key, err := ca.IssueKeyPair(pki.KindAgent, "h1", time.Hour)
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
	if srv.AuthzArgs()["identity"] != "CN=h2,OU=ferry-agent,O=ferry" || srv.MigrationParameters()["tls-authz"] != "tls0-authz" {
		t.Fatalf("server side: %v %v", srv.AuthzArgs(), srv.MigrationParameters())
	}
	cl := ForPair(dir, "tls0", "h2", Client)
	if cl.AuthzArgs() != nil || cl.MigrationParameters()["tls-hostname"] != "h2" || cl.ObjectArgs()["endpoint"] != "client" {
		t.Fatalf("client side: %v %v", cl.ObjectArgs(), cl.MigrationParameters())
	}
	// The DN the listener admits is the one the peer's certificate has.
	c, _ := pki.ParseCert(cert)
	want := pkix.Name{CommonName: "h1", OrganizationalUnit: []string{string(pki.KindAgent)}, Organization: []string{"ferry"}}
	if got := ForPair(dir, "x", "h1", Server).PeerDN(); got != c.Subject.String() || got != want.String() {
		t.Fatalf("PeerDN %q, certificate subject %q", got, c.Subject.String())
	}
}
