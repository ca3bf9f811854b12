// Package etcdtest starts embedded etcd for tests, on 127.0.0.1: one
// server with a store client of it, or a cluster of members
// (etcdembed.StartMember); everything it starts is closed when the test
// ends. It is imported by tests only.
package etcdtest

import (
	"context"
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"

	"github.com/ferryvm/ferry/internal/etcdembed"
	"github.com/ferryvm/ferry/internal/store"
)

// Store starts one embedded etcd with its data in dir and returns a
// store client of it; both are closed when the test ends.
func Store(t *testing.T, dir string) *store.Etcd {
	t.Helper()
	ctx := context.Background()
	e, err := etcdembed.Start(ctx, dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.Close)
	st, err := store.NewEtcd(ctx, []string{e.Endpoint})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return st
}

// Port returns a TCP port of 127.0.0.1 that was free a moment ago (its
// listener is closed again, for a member to bind).
func Port(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// URL returns scheme://127.0.0.1:PORT with a Port.
func URL(t *testing.T, scheme string) string {
	t.Helper()
	return fmt.Sprintf("%s://127.0.0.1:%d", scheme, Port(t))
}

// Start sets every member's InitialCluster to all of ms (by Name and
// ListenPeer), starts them together (each waits for its peers) and
// closes every member that started when the test ends. It fails the
// test, naming the member, when one does not start. ms is updated in
// place.
func Start(t *testing.T, ms []etcdembed.Member) []*etcdembed.Etcd {
	t.Helper()
	initial := make([]string, len(ms))
	for i, m := range ms {
		initial[i] = m.Name + "=" + m.ListenPeer
	}
	es := make([]*etcdembed.Etcd, len(ms))
	errs := make([]error, len(ms))
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
	for _, e := range es {
		if e != nil {
			t.Cleanup(e.Close)
		}
	}
	for i, err := range errs {
		if err != nil {
			t.Fatalf("member %d (%s): %v", i+1, ms[i].Name, err)
		}
	}
	return es
}
