package cli

import (
	"strings"
	"testing"
	"time"
)

func TestServerFlagsValidate(t *testing.T) {
	ok := serverFlags{listen: []string{"127.0.0.1:7100"}, dataDir: "/tmp/x", leaderTTL: 4 * time.Second}
	ok.member.Name = "s1"
	ok.member.InitialCluster = "s1=http://127.0.0.1:2380"
	if err := ok.validate(); err != nil {
		t.Fatalf("valid flags: %v", err)
	}
	if ok.name != "s1" {
		t.Fatalf("--name defaults to --etcd-name: got %q", ok.name)
	}
	bad := serverFlags{endpoints: "http://e:2379", leaderTTL: 100 * time.Millisecond}
	bad.member.InitialCluster = "s1=http://127.0.0.1:2380"
	err := bad.validate()
	if err == nil {
		t.Fatal("bad flags accepted")
	}
	for _, want := range []string{"--etcd-endpoints and --initial-cluster", "--leader-ttl", "--listen"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not name %s", err, want)
		}
	}
	stray := serverFlags{listen: []string{"x"}, dataDir: "/d", leaderTTL: time.Second}
	stray.member.ListenPeer = "http://127.0.0.1:2380"
	if err := stray.validate(); err == nil || !strings.Contains(err.Error(), "only with --initial-cluster") {
		t.Fatalf("--listen-peer without --initial-cluster: %v", err)
	}
}

// TestServerFlagsEtcdTLS: a plaintext external etcd on another machine
// needs --etcd-insecure; loopback and https endpoints do not; the TLS
// files go with https endpoints only.
func TestServerFlagsEtcdTLS(t *testing.T) {
	base := func(eps string) serverFlags {
		return serverFlags{listen: []string{"127.0.0.1:7100"}, dataDir: "/tmp/x", leaderTTL: 4 * time.Second, endpoints: eps}
	}
	f := base("http://10.0.0.5:2379,http://10.0.0.6:2379")
	err := f.validate()
	if err == nil {
		t.Fatal("plaintext remote etcd accepted without --etcd-insecure")
	}
	for _, want := range []string{"--etcd-endpoints", "http://10.0.0.5:2379,http://10.0.0.6:2379", "plaintext", "https://", "--etcd-ca FILE", "--etcd-insecure"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %q", err, want)
		}
	}
	f = base("http://10.0.0.5:2379")
	f.etcdTLS.Insecure = true
	if err := f.validate(); err != nil {
		t.Errorf("--etcd-insecure: %v", err)
	}
	for _, eps := range []string{"http://127.0.0.1:2379", "http://localhost:2379,http://[::1]:2379", "unix:///run/etcd.sock", "https://10.0.0.5:2379"} {
		f = base(eps)
		if err := f.validate(); err != nil {
			t.Errorf("%s: %v", eps, err)
		}
	}
	f = base("http://127.0.0.1:2379")
	f.etcdTLS.CA = "/etc/etcd/ca.crt"
	if err := f.validate(); err == nil || !strings.Contains(err.Error(), "use https:// endpoints") {
		t.Errorf("--etcd-ca with an http endpoint: %v", err)
	}
	f = base("https://10.0.0.5:2379")
	f.etcdTLS.Cert = "/c.pem"
	if err := f.validate(); err == nil || !strings.Contains(err.Error(), "--etcd-cert and --etcd-key: give both") {
		t.Errorf("--etcd-cert without --etcd-key: %v", err)
	}
	f = base("")
	f.etcdTLS.CA = "/etc/etcd/ca.crt"
	if err := f.validate(); err == nil || !strings.Contains(err.Error(), "only with --etcd-endpoints") {
		t.Errorf("--etcd-ca with the embedded etcd: %v", err)
	}
}
