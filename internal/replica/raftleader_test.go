package replica_test

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/ferryvm/ferry/internal/etcdembed"
	"github.com/ferryvm/ferry/internal/etcdembed/etcdtest"
	"github.com/ferryvm/ferry/internal/leader"
	"github.com/ferryvm/ferry/internal/replica"
	"github.com/ferryvm/ferry/internal/store"
)

// fakeEngine runs until its context ends and counts its runs.
type fakeEngine struct {
	mu   sync.Mutex
	runs int
}

func (f *fakeEngine) RunEngine(ctx context.Context) error {
	f.mu.Lock()
	f.runs++
	f.mu.Unlock()
	<-ctx.Done()
	return nil
}

// TestLeaderShedsRaftLeadership: a replica elected while its own embedded
// member is etcd's raft leader moves raft leadership to another member.
func TestLeaderShedsRaftLeadership(t *testing.T) {
	var ms []etcdembed.Member
	for i := 1; i <= 3; i++ {
		ms = append(ms, etcdembed.Member{Name: fmt.Sprintf("m%d", i), Dir: t.TempDir(),
			ListenPeer: etcdtest.URL(t, "http"), ListenClient: etcdtest.URL(t, "http")})
	}
	es := etcdtest.Start(t, ms)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	probe, err := store.NewEtcd(ctx, []string{es[0].Endpoint})
	if err != nil {
		t.Fatal(err)
	}
	defer probe.Close()
	raftLeader := func() string {
		sctx, c := context.WithTimeout(ctx, 2*time.Second)
		defer c()
		for _, e := range es {
			st, err := probe.Client().Status(sctx, e.Endpoint)
			if err == nil && st.Leader == st.Header.MemberId {
				return e.Endpoint
			}
		}
		return ""
	}
	var local string
	for deadline := time.Now().Add(10 * time.Second); local == "" && time.Now().Before(deadline); {
		local = raftLeader()
		time.Sleep(50 * time.Millisecond)
	}
	if local == "" {
		t.Fatal("no raft leader")
	}
	st, err := store.NewEtcd(ctx, []string{local})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	eng := &fakeEngine{}
	r, err := replica.New(replica.Config{Self: leader.Info{Name: "r1", URL: "http://r1"}, Store: st, Engine: eng, TTL: 2 * time.Second, LocalMember: local})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	deadline := time.Now().Add(15 * time.Second)
	for !r.Leading() || raftLeader() == local {
		if time.Now().After(deadline) {
			t.Fatalf("leading %v; raft leader still the replica's own member %s after 15s", r.Leading(), local)
		}
		time.Sleep(100 * time.Millisecond)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Run: %v", err)
	}
	eng.mu.Lock()
	defer eng.mu.Unlock()
	if eng.runs != 1 {
		t.Fatalf("engine ran %d times, want 1", eng.runs)
	}
}
