// Package qemutls gives QEMU the cluster PKI for an encrypted stream
// between two hosts (a migration, an NBD storage mirror): a
// tls-creds-x509 directory in the layout QEMU reads, and the QMP
// object-add arguments of the credentials (and of the authz object that
// makes a listening side accept only the expected peer host).
//
// Both sides verify: the connecting side checks the listener's
// certificate names the peer host (tls-hostname), the listening side
// checks the connecting side's distinguished name (tls-authz).
package qemutls

import (
	"fmt"
	"os"
	"path/filepath"

	"github.com/ferryvm/ferry/internal/pki"
)

// Endpoint is the side of a stream: the listener (server) or the side
// that connects (client).
type Endpoint string

// Endpoints.
const (
	Server Endpoint = "server"
	Client Endpoint = "client"
)

// Files of a tls-creds-x509 directory.
const (
	caFile         = "ca-cert.pem"
	serverCertFile = "server-cert.pem"
	serverKeyFile  = "server-key.pem"
	clientCertFile = "client-cert.pem"
	clientKeyFile  = "client-key.pem"
	dhParamsFile   = "dh-params.pem"
)

// ffdhe2048 is the RFC 7919 ffdhe2048 group (PKCS#3 PEM): a listening
// QEMU without dh-params.pem generates 2048-bit Diffie-Hellman parameters
// while adding its credentials, which took over a second on a busy host
// (seen as PrepareIncoming outlasting a 1 s stall timeout). The group is a
// public standard, so every host may share it.
const ffdhe2048 = `-----BEGIN DH PARAMETERS-----
MIIBCAKCAQEA//////////+t+FRYortKmq/cViAnPTzx2LnFg84tNpWp4TZBFGQz
+8yTnc4kmz75fS/jY2MMddj2gbICrsRhetPfHtXV/WVhJDP1H18GbtCFY2VVPe0a
87VXE15/V8k1mE8McODmi3fipona8+/och3xWKE2rec1MKzKT0g6eXq8CrGCsyT7
YdEIqUuyyOP7uWrat2DX9GgdT0Kj3jlN9K5W7edjcrsZCwenyO4KbXCeAvzhzffi
7MA0BM0oNC9hkXL+nOmFg/+OTxIy7vKBg8P+OxtMb61zO7X8vC7CIAXFjvGDfRaD
ssbzSibBsu/6iGtCOGEoXJf//////////wIBAg==
-----END DH PARAMETERS-----
`

// WriteDir writes a host's stream certificate and key (pki.KindQEMU), and
// the cluster CA, into dir for QEMU, with the Diffie-Hellman group a
// listener uses: the same certificate serves both endpoints (it carries
// server and client usage and the host name). Every file gets mode 0600
// and dir 0700: only QEMU's user reads them, and only while QEMU loads the
// credentials (object-add reads them at once; callers delete dir then).
func WriteDir(dir string, caPEM, certPEM, keyPEM []byte) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("QEMU TLS dir: %w", err)
	}
	for _, f := range []struct {
		name string
		data []byte
		mode os.FileMode
	}{
		{caFile, caPEM, 0o600},
		{serverCertFile, certPEM, 0o600}, {serverKeyFile, keyPEM, 0o600},
		{clientCertFile, certPEM, 0o600}, {clientKeyFile, keyPEM, 0o600},
		{dhParamsFile, []byte(ffdhe2048), 0o600},
	} {
		if err := pki.WriteFile(filepath.Join(dir, f.name), f.data, f.mode); err != nil {
			return fmt.Errorf("QEMU TLS dir: %w", err)
		}
	}
	return nil
}

// Creds are one QEMU TLS endpoint toward a peer host.
type Creds struct {
	// ID is the QOM id of the tls-creds-x509 object.
	ID       string
	Dir      string
	Endpoint Endpoint
	// Peer is the host at the other end: a client verifies that the
	// listener's certificate names it (tls-hostname); a listener admits
	// only its distinguished name (AuthzID's identity).
	Peer string
}

// ForPair returns the credentials for self's endpoint of a stream to
// peer, reading the certificates in dir (WriteDir). id names the QOM
// objects (e.g. "ferry-tls-mig").
func ForPair(dir, id, peer string, ep Endpoint) Creds {
	return Creds{ID: id, Dir: dir, Endpoint: ep, Peer: peer}
}

// ObjectArgs are the object-add arguments of the tls-creds-x509 object.
func (c Creds) ObjectArgs() map[string]any {
	return map[string]any{"qom-type": "tls-creds-x509", "id": c.ID, "dir": c.Dir, "endpoint": string(c.Endpoint), "verify-peer": true}
}

// AuthzID is the QOM id of the listener's authz object ("" for a client).
func (c Creds) AuthzID() string {
	if c.Endpoint != Server {
		return ""
	}
	return c.ID + "-authz"
}

// PeerDN is the distinguished name of the peer host's stream certificate
// (pki.KindQEMU: a host's QEMU never holds its agent's certificate), as
// QEMU's authz-simple compares it: GnuTLS's gnutls_x509_crt_get_dn, which
// lists the attributes in the certificate's order (O, OU, CN), not in
// RFC 4514's reversed one (seen with QEMU 10.0: "TLS x509 authz check for
// O=ferry,OU=ferry-agent,CN=h1", an agent certificate of before).
func (c Creds) PeerDN() string {
	return "O=ferry,OU=" + string(pki.KindQEMU) + ",CN=" + c.Peer
}

// AuthzArgs are the object-add arguments of the listener's authz-simple
// object admitting only the peer; nil for a client.
func (c Creds) AuthzArgs() map[string]any {
	if c.Endpoint != Server {
		return nil
	}
	return map[string]any{"qom-type": "authz-simple", "id": c.AuthzID(), "identity": c.PeerDN()}
}

// MigrationParameters are the migrate-set-parameters fields that put a
// migration (its main and multifd channels) on these credentials:
// tls-creds, and tls-hostname (client) or tls-authz (server).
func (c Creds) MigrationParameters() map[string]any {
	p := map[string]any{"tls-creds": c.ID}
	if c.Endpoint == Client {
		p["tls-hostname"] = c.Peer
	} else {
		p["tls-authz"] = c.AuthzID()
	}
	return p
}
