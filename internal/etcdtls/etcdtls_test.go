package etcdtls_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ferryvm/ferry/internal/etcdtls"
	"github.com/ferryvm/ferry/internal/pki"
)

func TestLocal(t *testing.T) {
	for raw, want := range map[string]bool{
		"http://127.0.0.1:2379": true, "http://127.3.0.1:2379": true, "http://[::1]:2379": true,
		"http://localhost:2379": true, "unix:///run/etcd.sock": true, "127.0.0.1:2379": true,
		"http://10.0.0.1:2379": false, "https://etcd.example:2379": false, "e1:2379": false,
	} {
		e, err := etcdtls.ParseEndpoint("--etcd-endpoints", raw)
		if err != nil {
			t.Fatalf("%s: %v", raw, err)
		}
		if e.Local() != want {
			t.Errorf("%s: local = %v, want %v", raw, e.Local(), want)
		}
	}
	if _, err := etcdtls.ParseEndpoint("--etcd-endpoints", "ftp://x:1"); err == nil || !strings.Contains(err.Error(), "--etcd-endpoints") {
		t.Errorf("ftp scheme: %v", err)
	}
}

func TestClientConfig(t *testing.T) {
	// A bare host:port is TLS once a TLS file is given, as etcd's client
	// dials it.
	ca, err := pki.NewCA("test CA")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	caFile := filepath.Join(dir, "ca.crt")
	if err := os.WriteFile(caFile, ca.CertPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	c := etcdtls.Client{CA: caFile}
	if _, err := c.Check([]string{"10.0.0.1:2379"}); err != nil {
		t.Fatalf("bare endpoint with --etcd-ca: %v", err)
	}
	cfg, err := c.Config([]string{"10.0.0.1:2379"})
	if err != nil || cfg == nil || cfg.RootCAs == nil {
		t.Fatalf("config = %v, %v; want TLS with the CA as roots", cfg, err)
	}
	// https without --etcd-ca: the system's roots.
	cfg, err = etcdtls.Client{}.Config([]string{"https://10.0.0.1:2379"})
	if err != nil || cfg == nil || cfg.RootCAs != nil {
		t.Fatalf("https without --etcd-ca = %v, %v; want TLS with system roots", cfg, err)
	}
	if cfg, err := (etcdtls.Client{}).Config([]string{"http://127.0.0.1:2379"}); cfg != nil || err != nil {
		t.Fatalf("plaintext endpoint = %v, %v; want no TLS", cfg, err)
	}
	if _, err := (etcdtls.Client{CA: filepath.Join(dir, "missing")}).Config([]string{"https://e:1"}); err == nil || !strings.Contains(err.Error(), "--etcd-ca") {
		t.Fatalf("missing CA file: %v", err)
	}
	plain, err := etcdtls.Client{Insecure: true}.Check([]string{"http://10.0.0.1:2379", "http://127.0.0.1:2379"})
	if err != nil || len(plain) != 1 || plain[0] != "http://10.0.0.1:2379" {
		t.Fatalf("insecure check = %v, %v; want the remote endpoint listed", plain, err)
	}
}
