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
