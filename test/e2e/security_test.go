package e2e

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	agentv1 "github.com/ferryvm/ferry/gen/ferry/agent/v1"
	"github.com/ferryvm/ferry/gen/ferry/agent/v1/agentv1connect"
	ferryv1 "github.com/ferryvm/ferry/gen/ferry/v1"
	"github.com/ferryvm/ferry/gen/ferry/v1/ferryv1connect"
	"github.com/ferryvm/ferry/internal/pki"
	"github.com/ferryvm/ferry/internal/rpcaddr"
)

// TestHostileSpecPathsRefused: through the real CLI, server and agent, a
// spec whose kernel or disk is /etc/shadow, /dev/sda or ../../x is refused
// with the field named, and no VM record is left.
func TestHostileSpecPathsRefused(t *testing.T) {
	c := upCluster(t, 1)
	base := fmt.Sprintf("name: %%s\nvcpus: 1\nmemoryMiB: 128\naccel: tcg\nboot:\n  kernel: %%s\n  initrd: %s\n%%s", filepath.Join(guestDir, "initrd.img"))
	kernel := filepath.Join(guestDir, "vmlinuz")
	for _, tc := range []struct {
		name, kernel, extra, field string
	}{
		{"shadow-kernel", "/etc/shadow", "", "spec.boot.kernel"},
		{"dotdot-kernel", "../../x", "", "spec.boot.kernel"},
		{"sda-disk", kernel, "disks:\n  - path: /dev/sda\n", "spec.disks[0].path"},
		{"shadow-disk", kernel, "disks:\n  - path: /etc/shadow\n    format: raw\n", "spec.disks[0].path"},
	} {
		path := filepath.Join(c.dir, tc.name+".yaml")
		if err := os.WriteFile(path, []byte(fmt.Sprintf(base, tc.name, tc.kernel, tc.extra)), 0o644); err != nil {
			t.Fatal(err)
		}
		out, errOut, err := c.ferry("vm", "create", "--host", "h1", "-f", path)
		if err == nil {
			t.Errorf("%s: vm create accepted the spec:\n%s", tc.name, out)
			continue
		}
		if !strings.Contains(errOut, tc.field) {
			t.Errorf("%s: refusal does not name %s:\n%s", tc.name, tc.field, errOut)
		}
		t.Logf("%s refused: %s", tc.name, strings.TrimSpace(errOut))
	}
	out := c.mustFerry("vm", "list")
	for _, n := range []string{"shadow-kernel", "dotdot-kernel", "sda-disk", "shadow-disk"} {
		if strings.Contains(out, n) {
			t.Errorf("refused VM %s is listed:\n%s", n, out)
		}
	}
}

// TestAuthRefusals: with the dev cluster's PKI, a request without a
// token, with an expired token or with a viewer token to migrate is
// refused (unauthenticated / permission denied); an agent certificate
// reporting another host is refused; a call to an agent without a server
// certificate is refused; a second agent claiming a joined host name is
// refused; /healthz stays open.
func TestAuthRefusals(t *testing.T) {
	c := upCluster(t, 2)
	url := c.c.ServerURL()
	admin, err := rpcaddr.ReadEntry(c.c.AdminCredentials())
	if err != nil {
		t.Fatal(err)
	}
	// A user with a config dir of its own: nothing stored yet.
	user := func(cfg string, args ...string) (string, string, error) {
		cmd := exec.Command(ferryBin, args...)
		cmd.Env = append(os.Environ(), "FERRY_SERVER="+url, "FERRY_CONFIG_DIR="+cfg, "FERRY_CREDENTIALS=")
		var o, e bytes.Buffer
		cmd.Stdout, cmd.Stderr = &o, &e
		err := cmd.Run()
		return o.String(), e.String(), err
	}

	// No token: the CA is pinned, no credential sent.
	noTok := t.TempDir()
	if err := rpcaddr.WriteEntry(filepath.Join(noTok, "servers", filepath.Base(rpcaddr.UserEntryPath(url))), rpcaddr.Entry{CA: admin.CA}); err != nil {
		t.Fatal(err)
	}
	if _, errOut, err := user(noTok, "vm", "list"); err == nil || !strings.Contains(errOut, "unauthenticated") {
		t.Errorf("vm list without a token: err %v, stderr %q; want unauthenticated", err, errOut)
	}

	// A viewer token: login pins the CA, reads work, migrate is refused.
	viewer := strings.TrimSpace(c.mustFerry("token", "create", "--role", "viewer"))
	vcfg := t.TempDir()
	if out, errOut, err := user(vcfg, "login", url, "--token", viewer); err != nil {
		t.Fatalf("login with a viewer token: %v\n%s%s", err, out, errOut)
	}
	if out, errOut, err := user(vcfg, "vm", "list"); err != nil {
		t.Errorf("viewer vm list: %v\n%s%s", err, out, errOut)
	}
	if _, errOut, err := user(vcfg, "migrate", "nosuchvm", "--to", "h2"); err == nil || !strings.Contains(errOut, "permission_denied") {
		t.Errorf("viewer migrate: err %v, stderr %q; want permission_denied", err, errOut)
	}
	if _, errOut, err := user(vcfg, "token", "create", "--role", "admin"); err == nil || !strings.Contains(errOut, "permission_denied") {
		t.Errorf("viewer token create: err %v, stderr %q; want permission_denied", err, errOut)
	}

	// An expired token.
	short := strings.TrimSpace(c.mustFerry("token", "create", "--role", "operator", "--ttl", "1s"))
	time.Sleep(2 * time.Second)
	if _, errOut, err := user(t.TempDir(), "login", url, "--token", short); err == nil || !strings.Contains(errOut, "unauthenticated") {
		t.Errorf("login with an expired token: err %v, stderr %q; want unauthenticated", err, errOut)
	}

	ca, err := pki.LoadCA(c.c.CADir())
	if err != nil {
		t.Fatal(err)
	}
	mint := func(kind pki.Kind, name string, peer ...pki.Kind) *rpcaddr.Credentials {
		cert, key, err := ca.IssueKeyPair(kind, name, time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		kp, err := pki.NewKeypair(cert, key, ca.CertPEM)
		if err != nil {
			t.Fatal(err)
		}
		return &rpcaddr.Credentials{TLS: pki.ClientTLS(ca.Pool(), kp, peer...)}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	// h2's agent certificate reporting h1.
	hc, base := rpcaddr.ClientWith(url, mint(pki.KindAgent, "h2", pki.KindServer))
	_, err = ferryv1connect.NewHostServiceClient(hc, base).Heartbeat(ctx, connect.NewRequest(&ferryv1.HeartbeatRequest{Host: &ferryv1.Host{Name: "h1", Address: "unix:///evil.sock"}}))
	if connect.CodeOf(err) != connect.CodePermissionDenied {
		t.Errorf("h2's certificate heartbeating as h1: %v, want permission_denied", err)
	}
	// ... and an agent certificate may not use the user API.
	_, err = ferryv1connect.NewVMServiceClient(hc, base).ListVMs(ctx, connect.NewRequest(&ferryv1.ListVMsRequest{}))
	if connect.CodeOf(err) != connect.CodePermissionDenied {
		t.Errorf("agent certificate listing VMs: %v, want permission_denied", err)
	}

	// Calls to an agent: only a server certificate is accepted.
	agentSock := "unix://" + filepath.Join(c.dir, "h1", "agent.sock")
	for what, creds := range map[string]*rpcaddr.Credentials{
		"no client certificate": {TLS: pki.ClientTLS(ca.Pool(), nil, pki.KindAgent)},
		"an admin certificate":  mint(pki.KindAdmin, "someone", pki.KindAgent),
		"another agent's":       mint(pki.KindAgent, "h2", pki.KindAgent),
		"plaintext":             nil,
	} {
		hc, base := rpcaddr.ClientWith(agentSock, creds)
		_, err := agentv1connect.NewAgentServiceClient(hc, base).ListVMs(ctx, connect.NewRequest(&agentv1.AgentListVMsRequest{}))
		if err == nil {
			t.Errorf("agent API accepted a call with %s", what)
		} else {
			t.Logf("agent API refused %s: %v", what, err)
		}
	}
	hc, base = rpcaddr.ClientWith(agentSock, mint(pki.KindServer, "test", pki.KindAgent))
	if _, err := agentv1connect.NewAgentServiceClient(hc, base).ListVMs(ctx, connect.NewRequest(&agentv1.AgentListVMsRequest{})); err != nil {
		t.Errorf("agent API refused a server certificate: %v", err)
	}

	// A second agent claiming h1.
	join := strings.TrimSpace(c.mustFerry("token", "create", "--role", "agent"))
	csr, _, err := pki.NewCSR("h1")
	if err != nil {
		t.Fatal(err)
	}
	hc, base = rpcaddr.ClientWith(url, &rpcaddr.Credentials{TLS: pki.ClientTLS(ca.Pool(), nil, pki.KindServer)})
	_, err = ferryv1connect.NewAuthServiceClient(hc, base).Join(ctx, connect.NewRequest(&ferryv1.JoinRequest{Token: join, Host: "h1", Csr: csr}))
	if connect.CodeOf(err) != connect.CodeAlreadyExists {
		t.Errorf("second agent joining as h1: %v, want already_exists", err)
	}

	// /healthz stays open (no credential, TLS verified against the CA).
	hc, base = rpcaddr.ClientWith(url, &rpcaddr.Credentials{TLS: pki.ClientTLS(ca.Pool(), nil, pki.KindServer)})
	resp, err := hc.Get(base + "/healthz")
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Errorf("/healthz without a credential: %v %v", resp, err)
	} else {
		resp.Body.Close()
	}
}
