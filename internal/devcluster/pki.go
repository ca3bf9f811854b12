package devcluster

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"connectrpc.com/connect"
	ferryv1 "github.com/ferryvm/ferry/gen/ferry/v1"
	"github.com/ferryvm/ferry/gen/ferry/v1/ferryv1connect"
	"github.com/ferryvm/ferry/internal/failover"
	"github.com/ferryvm/ferry/internal/pki"
	"github.com/ferryvm/ferry/internal/rpcaddr"
)

// The dev cluster's PKI: the cluster CA in DIR/pki (every server replica
// runs with --ca DIR/pki), an admin credential in DIR/admin.json, also
// stored as the user's credential for every server address (so `ferry`
// and Go clients made with rpcaddr.Client find it), and one join token
// per agent in its data dir.
const (
	pkiDirName    = "pki"
	adminCredName = "admin.json"
	// userEntries lists the server address keys whose user credential
	// StartFerry stored; removeFerryState removes them.
	userEntries = "user-entries"
)

// CADir is the dev cluster's CA directory.
func (c *Cluster) CADir() string { return filepath.Join(c.Config.Dir, pkiDirName) }

// AdminCredentials is the path of the admin credential (FERRY_CREDENTIALS).
func (c *Cluster) AdminCredentials() string { return filepath.Join(c.Config.Dir, adminCredName) }

// bootstrapPKI creates the CA and the admin credential.
func (c *Cluster) bootstrapPKI() (*pki.CA, error) {
	ca, _, err := pki.LoadOrCreateCA(c.CADir())
	if err != nil {
		return nil, fmt.Errorf("dev cluster CA: %w", err)
	}
	cert, key, err := ca.IssueKeyPair(pki.KindAdmin, "dev-admin", 30*24*time.Hour)
	if err != nil {
		return nil, err
	}
	if err := rpcaddr.WriteEntry(c.AdminCredentials(), rpcaddr.Entry{CA: string(ca.CertPEM), Cert: string(cert), Key: string(key)}); err != nil {
		return nil, fmt.Errorf("write %s: %w", c.AdminCredentials(), err)
	}
	return ca, nil
}

// storeUserCredential stores the admin credential as the user's for the
// servers (and records it for removal at Down).
func (c *Cluster) storeUserCredential(servers string) error {
	e, err := rpcaddr.ReadEntry(c.AdminCredentials())
	if err != nil {
		return err
	}
	if err := rpcaddr.SaveUserEntry(servers, e); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(c.CADir(), userEntries), []byte(servers+"\n"), 0o600)
}

// removeUserCredential undoes storeUserCredential for the cluster in dir.
func removeUserCredential(dir string) {
	b, err := os.ReadFile(filepath.Join(dir, pkiDirName, userEntries))
	if err != nil {
		return
	}
	for _, l := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		if l != "" {
			rpcaddr.RemoveUserEntry(l)
		}
	}
}

// joinTokens asks the servers for one agent join token per host (retrying
// until they answer or timeout) and writes each into its host's data dir
// (mode 0600); it returns the token files.
func (c *Cluster) joinTokens(ctx context.Context, servers string, timeout time.Duration) (map[string]string, error) {
	e, err := rpcaddr.ReadEntry(c.AdminCredentials())
	if err != nil {
		return nil, err
	}
	creds, err := e.Credentials()
	if err != nil {
		return nil, err
	}
	files := map[string]string{}
	deadline := time.Now().Add(timeout)
	for _, h := range c.Hosts {
		var tok string
		for {
			addr := failover.Split(servers)[0]
			hc, base := rpcaddr.ClientWith(addr, creds)
			rctx, cancel := context.WithTimeout(ctx, 3*time.Second)
			resp, err := ferryv1connect.NewAuthServiceClient(hc, base).CreateToken(rctx, connect.NewRequest(&ferryv1.CreateTokenRequest{Role: "agent"}))
			cancel()
			if err == nil {
				tok = resp.Msg.Token
				break
			}
			if time.Now().After(deadline) {
				return nil, fmt.Errorf("create a join token for %s: %w (see %s)", h.Name, err, c.ServerLog(1))
			}
			select {
			case <-ctx.Done():
				return nil, ctx.Err()
			case <-time.After(200 * time.Millisecond):
			}
		}
		dir := filepath.Join(c.Config.Dir, h.Name)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return nil, err
		}
		f := filepath.Join(dir, "join.token")
		if err := os.WriteFile(f, []byte(tok+"\n"), 0o600); err != nil {
			return nil, err
		}
		files[h.Name] = f
	}
	return files, nil
}

// ServerCredentials returns credentials of a server certificate minted
// from the dev cluster's CA: what a test uses to call an agent directly
// (agents accept only server certificates).
func (c *Cluster) ServerCredentials() (*rpcaddr.Credentials, error) {
	ca, err := pki.LoadCA(c.CADir())
	if err != nil {
		return nil, err
	}
	cert, key, err := ca.IssueKeyPair(pki.KindServer, "dev-test", time.Hour)
	if err != nil {
		return nil, err
	}
	kp, err := pki.NewKeypair(cert, key, ca.CertPEM)
	if err != nil {
		return nil, err
	}
	return &rpcaddr.Credentials{TLS: pki.ClientTLS(ca.Pool(), kp, pki.KindAgent, pki.KindServer)}, nil
}
