package rpcaddr

import (
	"crypto/tls"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ferryvm/ferry/internal/pki"
)

// tlsServer serves "ok" over TLS with a server certificate of ca and
// returns its https URL.
func tlsServer(t *testing.T, ca *pki.CA) string {
	cert, key, err := ca.IssueKeyPair(pki.KindServer, "s1", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	kp, err := pki.NewKeypair(cert, key, ca.CertPEM)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "ok "+r.Header.Get("Authorization"))
	}))
	srv.Listener = tls.NewListener(srv.Listener, pki.ServerTLS(ca.Pool(), kp))
	srv.Start()
	t.Cleanup(srv.Close)
	return strings.TrimPrefix(srv.URL, "http://")
}

func get(t *testing.T, addr string) (string, error) {
	hc, base := Client(addr)
	resp, err := hc.Get(base + "/x")
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b), nil
}

func TestCredentialLookup(t *testing.T) {
	ca, _ := pki.NewCA("t")
	addr := tlsServer(t, ca)
	t.Setenv(ConfigDirEnv, t.TempDir())
	t.Setenv(CredentialsEnv, "")
	// Nothing stored: plaintext, and a clear error from the TLS server.
	if _, err := get(t, addr); !errors.Is(err, ErrNeedsTLS) {
		t.Fatalf("no credential: %v, want ErrNeedsTLS", err)
	}
	// Stored for this address (as `ferry login` does, list and each member).
	if err := SaveUserEntry("other:1,"+addr, Entry{CA: string(ca.CertPEM), Token: "tok1"}); err != nil {
		t.Fatal(err)
	}
	if body, err := get(t, addr); err != nil || body != "ok Bearer tok1" {
		t.Fatalf("stored credential: %q, %v", body, err)
	}
	// FERRY_CREDENTIALS wins over the stored one.
	f := filepath.Join(t.TempDir(), "c.json")
	if err := WriteEntry(f, Entry{CA: string(ca.CertPEM), Token: "tok2"}); err != nil {
		t.Fatal(err)
	}
	t.Setenv(CredentialsEnv, f)
	if body, err := get(t, addr); err != nil || body != "ok Bearer tok2" {
		t.Fatalf("FERRY_CREDENTIALS: %q, %v", body, err)
	}
	// A credential pinned to another CA refuses the server.
	other, _ := pki.NewCA("o")
	if err := WriteEntry(f, Entry{CA: string(other.CertPEM), Token: "tok3"}); err != nil {
		t.Fatal(err)
	}
	if _, err := get(t, addr); err == nil {
		t.Fatal("a credential pinned to another CA accepted the server")
	}
	t.Setenv(CredentialsEnv, "")
	RemoveUserEntry("other:1," + addr)
	if _, err := get(t, addr); !errors.Is(err, ErrNeedsTLS) {
		t.Fatalf("after RemoveUserEntry: %v, want ErrNeedsTLS", err)
	}
}

// TestPeerName: with SetPeerName, a peer whose certificate names another
// holder than the one expected at the address is refused.
func TestPeerName(t *testing.T) {
	ca, _ := pki.NewCA("t")
	addr := tlsServer(t, ca) // its certificate names s1
	creds := &Credentials{TLS: pki.ClientTLS(ca.Pool(), nil, pki.KindServer)}
	t.Cleanup(func() { peerName.Store(nil) })
	for want, ok := range map[string]bool{"s1": true, "h1": false, "": true} {
		SetPeerName(func(a string) string {
			if a == addr {
				return want
			}
			return ""
		})
		hc, base := ClientWith(addr, creds)
		resp, err := hc.Get(base + "/x")
		if err == nil {
			resp.Body.Close()
		}
		if (err == nil) != ok {
			t.Errorf("expecting %q at %s: err %v, want ok=%v", want, addr, err, ok)
		}
	}
}
