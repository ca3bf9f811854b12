package packaging

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/ferryvm/ferry/internal/pki"
	"github.com/ferryvm/ferry/internal/rpcaddr"
)

// startInstalledServer starts root/usr/bin/ferry server with the shipped
// /etc/ferry/server.yaml (flags override its data-dir and listen address)
// and a cluster CA made here, waits until it answers, and returns the API
// address and the environment a client needs. It stops the server by PID
// at cleanup.
func startInstalledServer(t *testing.T, root string) (server string, env []string) {
	t.Helper()
	dir := t.TempDir()
	ca, _, err := pki.LoadOrCreateCA(filepath.Join(dir, "ca"))
	if err != nil {
		t.Fatal(err)
	}
	cert, key, err := ca.IssueKeyPair(pki.KindAdmin, "package-test", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	creds := filepath.Join(dir, "admin.json")
	if err := rpcaddr.WriteEntry(creds, rpcaddr.Entry{CA: string(ca.CertPEM), Cert: string(cert), Key: string(key)}); err != nil {
		t.Fatal(err)
	}
	server = "unix://" + filepath.Join(dir, "api.sock")
	env = append(os.Environ(), "FERRY_CREDENTIALS="+creds, "FERRY_SERVER="+server)
	var log bytes.Buffer
	cmd := exec.Command(filepath.Join(root, "usr/bin/ferry"), "server",
		"--config", filepath.Join(root, "etc/ferry/server.yaml"),
		"--data-dir", filepath.Join(dir, "data"), "--listen", server, "--ca", filepath.Join(dir, "ca"), "--log-format", "json")
	cmd.Stdout, cmd.Stderr = &log, &log
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(15 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
		if t.Failed() {
			t.Logf("installed server's log:\n%s", log.String())
		}
	})
	deadline := time.Now().Add(30 * time.Second)
	for {
		c := exec.Command(filepath.Join(root, "usr/bin/ferry"), "host", "list", "-o", "json")
		c.Env = env
		out, err := c.CombinedOutput()
		if err == nil {
			return server, env
		}
		select {
		case <-done:
			t.Fatalf("installed ferry server exited:\n%s", log.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("installed ferry server did not answer host list within 30s: %v\n%s", err, out)
		}
		time.Sleep(200 * time.Millisecond)
	}
}
