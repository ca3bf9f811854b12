package rpcaddr

import (
	"bytes"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"

	"github.com/ferryvm/ferry/internal/pki"
)

// Credentials are what a process presents and trusts when it calls a Ferry
// API: a TLS client config (the peer's verification, maybe a client
// certificate) and maybe a bearer token.
type Credentials struct {
	TLS   *tls.Config
	Token string
}

// Entry is a stored credential (a user's, from `ferry login` or a dev
// cluster): the pinned cluster CA and a token or a client certificate, PEM.
type Entry struct {
	CA    string `json:"ca"`
	Token string `json:"token,omitempty"`
	Cert  string `json:"cert,omitempty"`
	Key   string `json:"key,omitempty"`
}

// Credentials builds the client credentials of an entry: the server must
// present a server certificate of the pinned CA.
func (e Entry) Credentials() (*Credentials, error) {
	ca, err := pki.ParseCert([]byte(e.CA))
	if err != nil {
		return nil, fmt.Errorf("credential CA: %w", err)
	}
	pool := poolOf(ca)
	var kp *pki.Keypair
	if e.Cert != "" {
		if kp, err = pki.NewKeypair([]byte(e.Cert), []byte(e.Key), nil); err != nil {
			return nil, fmt.Errorf("credential certificate: %w", err)
		}
	}
	return &Credentials{TLS: pki.ClientTLS(pool, kp, pki.KindServer), Token: e.Token}, nil
}

// CredentialsEnv names a credential file that applies to every address.
const CredentialsEnv = "FERRY_CREDENTIALS"

// ConfigDirEnv overrides the user's config directory.
const ConfigDirEnv = "FERRY_CONFIG_DIR"

var process atomic.Pointer[Credentials]

var peerName atomic.Pointer[func(addr string) string]

// SetPeerName makes every TLS client of this process check, at each
// handshake, that the peer's certificate names f(addr) (when f returns a
// name; "" keeps the kind check only). The server uses it so a call meant
// for host h1 reaches only h1's agent.
func SetPeerName(f func(addr string) string) { peerName.Store(&f) }

// withPeerName returns cfg checking, on top of its own verification, that
// the peer certificate's common name is the one expected at addr.
func withPeerName(cfg *tls.Config, addr string) *tls.Config {
	f := peerName.Load()
	if f == nil || cfg == nil {
		return cfg
	}
	cfg = cfg.Clone()
	inner := cfg.VerifyConnection
	cfg.VerifyConnection = func(cs tls.ConnectionState) error {
		if inner != nil {
			if err := inner(cs); err != nil {
				return err
			}
		}
		want := (*f)(addr)
		if want == "" || len(cs.PeerCertificates) == 0 {
			return nil
		}
		if got := pki.IdentityOf(cs.PeerCertificates[0]); got.Name != want {
			return fmt.Errorf("%s answered with the certificate of %s, not of %s", addr, got, want)
		}
		return nil
	}
	return cfg
}

// SetCredentials makes c the credentials of every client this process
// makes from now on (a daemon's own certificate); nil clears them.
func SetCredentials(c *Credentials) { process.Store(c) }

// credentialsFor finds the credentials to call addr with: the process's
// own, then $FERRY_CREDENTIALS, then the user's stored entry for addr.
// None means plaintext and anonymous.
func credentialsFor(addr string) (*Credentials, error) {
	if c := process.Load(); c != nil {
		return c, nil
	}
	if p := os.Getenv(CredentialsEnv); p != "" {
		e, err := ReadEntry(p)
		if err != nil {
			return nil, err
		}
		return e.Credentials()
	}
	e, err := ReadEntry(UserEntryPath(addr))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	return e.Credentials()
}

// ConfigDir is where a user's stored credentials live: $FERRY_CONFIG_DIR,
// else $XDG_CONFIG_HOME/ferry, else ~/.config/ferry.
func ConfigDir() string {
	if d := os.Getenv(ConfigDirEnv); d != "" {
		return d
	}
	if d := os.Getenv("XDG_CONFIG_HOME"); d != "" {
		return filepath.Join(d, "ferry")
	}
	home, err := os.UserHomeDir()
	if err != nil {
		home = "/root"
	}
	return filepath.Join(home, ".config", "ferry")
}

// UserEntryPath is the file of the stored credential for a server address
// (one file per address, named by its hash).
func UserEntryPath(addr string) string {
	s := sha256.Sum256([]byte(strings.TrimSuffix(addr, "/")))
	return filepath.Join(ConfigDir(), "servers", hex.EncodeToString(s[:8])+".json")
}

// ReadEntry reads a credential file.
func ReadEntry(path string) (Entry, error) {
	var e Entry
	b, err := os.ReadFile(path)
	if err != nil {
		return e, fmt.Errorf("credentials %s: %w", path, err)
	}
	if err := json.Unmarshal(b, &e); err != nil {
		return e, fmt.Errorf("credentials %s: %w", path, err)
	}
	return e, nil
}

// WriteEntry writes a credential file with mode 0600.
func WriteEntry(path string, e Entry) error {
	b, err := json.MarshalIndent(e, "", "  ")
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return err
	}
	return pki.WriteFile(path, b, 0o600)
}

// SaveUserEntry stores e as the user's credential for every address
// given (a comma-separated server list is stored under itself and under
// each address).
func SaveUserEntry(addrs string, e Entry) error {
	for _, a := range keysOf(addrs) {
		if err := WriteEntry(UserEntryPath(a), e); err != nil {
			return err
		}
	}
	return nil
}

// RemoveUserEntry removes what SaveUserEntry stored for addrs.
func RemoveUserEntry(addrs string) {
	for _, a := range keysOf(addrs) {
		_ = os.Remove(UserEntryPath(a))
	}
}

func keysOf(addrs string) []string {
	keys := []string{addrs}
	for _, a := range strings.Split(addrs, ",") {
		if a = strings.TrimSpace(a); a != "" && a != addrs {
			keys = append(keys, a)
		}
	}
	return keys
}

// bearer adds a token to every request.
type bearer struct {
	token string
	next  http.RoundTripper
}

func (b bearer) RoundTrip(r *http.Request) (*http.Response, error) {
	r = r.Clone(r.Context())
	r.Header.Set("Authorization", "Bearer "+b.token)
	return b.next.RoundTrip(r)
}

func poolOf(ca *x509.Certificate) *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(ca)
	return p
}

// ErrNeedsTLS: a plaintext request reached a TLS server.
var ErrNeedsTLS = errors.New("the server speaks TLS and this client has no credential for it: `ferry login URL --token T` (a token from `ferry token create`), or set FERRY_CREDENTIALS")

// plain is the transport of a client without credentials: it turns the
// answer of a TLS server to plaintext HTTP into ErrNeedsTLS.
type plain struct {
	addr string
	next http.RoundTripper
}

func (p plain) RoundTrip(r *http.Request) (*http.Response, error) {
	resp, err := p.next.RoundTrip(r)
	if err != nil || resp.StatusCode != http.StatusBadRequest {
		return resp, err
	}
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
	resp.Body.Close()
	if strings.Contains(string(b), "HTTP request to an HTTPS server") {
		return nil, fmt.Errorf("%s: %w", p.addr, ErrNeedsTLS)
	}
	resp.Body = io.NopCloser(bytes.NewReader(b))
	return resp, nil
}
