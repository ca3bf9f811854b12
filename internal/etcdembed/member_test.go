package etcdembed_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/ferryvm/ferry/internal/etcdembed"
	"github.com/ferryvm/ferry/internal/etcdembed/etcdtest"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// TestThreeMembersFormOneCluster starts three members in this process, as
// three `ferry server --initial-cluster` replicas would, and checks that a
// write through one is read through another.
func TestThreeMembersFormOneCluster(t *testing.T) {
	var ms []etcdembed.Member
	for i := 1; i <= 3; i++ {
		ms = append(ms, etcdembed.Member{
			Name:         fmt.Sprintf("m%d", i),
			Dir:          t.TempDir(),
			ListenPeer:   etcdtest.URL(t, "http"),
			ListenClient: etcdtest.URL(t, "http"),
		})
	}
	es := etcdtest.Start(t, ms)
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
