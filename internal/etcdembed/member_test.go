package etcdembed_test

import (
	"context"
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ferryvm/ferry/internal/etcdembed"
	clientv3 "go.etcd.io/etcd/client/v3"
)

func port(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// TestThreeMembersFormOneCluster starts three members in this process, as
// three `ferry server --initial-cluster` replicas would, and checks that a
// write through one is read through another.
func TestThreeMembersFormOneCluster(t *testing.T) {
	var ms []etcdembed.Member
	var initial []string
	for i := 1; i <= 3; i++ {
		m := etcdembed.Member{
			Name:         fmt.Sprintf("m%d", i),
			Dir:          t.TempDir(),
			ListenPeer:   fmt.Sprintf("http://127.0.0.1:%d", port(t)),
			ListenClient: fmt.Sprintf("http://127.0.0.1:%d", port(t)),
		}
		ms = append(ms, m)
		initial = append(initial, m.Name+"="+m.ListenPeer)
	}
	es := make([]*etcdembed.Etcd, 3)
	errs := make([]error, 3)
	var wg sync.WaitGroup
	for i := range ms {
		ms[i].InitialCluster = strings.Join(initial, ",")
		wg.Add(1)
		go func() {
			defer wg.Done()
			es[i], errs[i] = etcdembed.StartMember(context.Background(), ms[i])
		}()
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("member %d: %v", i+1, err)
		}
		t.Cleanup(es[i].Close)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c1, err := clientv3.New(clientv3.Config{Endpoints: []string{es[0].Endpoint}})
	if err != nil {
		t.Fatal(err)
	}
	defer c1.Close()
	c3, err := clientv3.New(clientv3.Config{Endpoints: []string{es[2].Endpoint}})
	if err != nil {
		t.Fatal(err)
	}
	defer c3.Close()
	ml, err := c1.MemberList(ctx)
	if err != nil || len(ml.Members) != 3 {
		t.Fatalf("member list = %v, %v; want 3 members", ml, err)
	}
	if _, err := c1.Put(ctx, "/k", "v"); err != nil {
		t.Fatal(err)
	}
	got, err := c3.Get(ctx, "/k")
	if err != nil || len(got.Kvs) != 1 || string(got.Kvs[0].Value) != "v" {
		t.Fatalf("read through member 3 = %v, %v; want v", got, err)
	}
}

func TestMemberValidation(t *testing.T) {
	_, err := etcdembed.StartMember(context.Background(), etcdembed.Member{
		Name: "a", InitialCluster: "b=http://127.0.0.1:1", ListenPeer: "http://127.0.0.1:2", InitialClusterState: "maybe",
	})
	if err == nil {
		t.Fatal("bad member config accepted")
	}
	for _, want := range []string{"--initial-cluster: no entry for --etcd-name \"a\"", "--initial-cluster-state", "--data-dir"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %s", err, want)
		}
	}
}
