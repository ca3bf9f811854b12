package failover_test

import (
	"io"
	"net/http"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/ferryvm/ferry/internal/failover"
	"github.com/ferryvm/ferry/internal/rpcaddr"
)

// server is a real local listener answering with its name and counting the
// requests it served.
type server struct {
	name string
	addr string
	hs   *http.Server
	hits atomic.Int32
}

func serve(t *testing.T, name, addr string) *server {
	t.Helper()
	l, err := rpcaddr.Listen(addr)
	if err != nil {
		t.Fatal(err)
	}
	s := &server{name: name, addr: rpcaddr.URL(addr, l)}
	hs := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.hits.Add(1)
		b, _ := io.ReadAll(r.Body)
		io.WriteString(w, s.name+" "+r.URL.Path+" "+string(b))
	})}
	s.hs = hs
	go hs.Serve(l)
	t.Cleanup(func() { hs.Close() })
	return s
}

// kill closes the listener and every connection, like a dead process.
func (s *server) kill() { s.hs.Close() }

func post(t *testing.T, c *http.Client, base, body string) (string, error) {
	t.Helper()
	resp, err := c.Post(base+"/svc/Method", "text/plain", strings.NewReader(body))
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return string(b), err
}

func TestFailsOverInOrderAndSticks(t *testing.T) {
	dir := t.TempDir()
	a := serve(t, "a", "127.0.0.1:0")
	b := serve(t, "b", "unix://"+filepath.Join(dir, "b.sock"))
	c := serve(t, "c", "127.0.0.1:0")
	dead := "unix://" + filepath.Join(dir, "nobody.sock")
	hc, base := failover.Client(strings.Join([]string{dead, a.addr, b.addr, c.addr}, ","))

	got, err := post(t, hc, base, "one")
	if err != nil || got != "a /svc/Method one" {
		t.Fatalf("first request = %q, %v; want a to answer with the body", got, err)
	}
	got, _ = post(t, hc, base, "two")
	if got != "a /svc/Method two" || a.hits.Load() != 2 {
		t.Fatalf("second request = %q (a served %d); want it to stick to a", got, a.hits.Load())
	}
	a.kill()
	got, err = post(t, hc, base, "three")
	if err != nil || got != "b /svc/Method three" {
		t.Fatalf("after a died = %q, %v; want b, the next in order, with the body replayed", got, err)
	}
	b.kill()
	got, err = post(t, hc, base, "four")
	if err != nil || got != "c /svc/Method four" {
		t.Fatalf("after b died = %q, %v; want c", got, err)
	}
	if b.hits.Load() != 1 || c.hits.Load() != 1 {
		t.Fatalf("hits b=%d c=%d, want 1 each (no request sent twice)", b.hits.Load(), c.hits.Load())
	}
	c.kill()
	if _, err := post(t, hc, base, "five"); err == nil || !strings.Contains(err.Error(), "no control-plane address answered") {
		t.Fatalf("all dead: err = %v, want one naming every address", err)
	}
}

func TestEmptyList(t *testing.T) {
	hc, base := failover.Client(" , ")
	if _, err := hc.Get(base + "/x"); err == nil || !strings.Contains(err.Error(), "--server") {
		t.Fatalf("empty list: err = %v, want one naming --server", err)
	}
}

func TestSplit(t *testing.T) {
	got := failover.Split(" a:1, ,unix:///x.sock,http://b:2 ")
	want := []string{"a:1", "unix:///x.sock", "http://b:2"}
	if strings.Join(got, "|") != strings.Join(want, "|") {
		t.Fatalf("Split = %q, want %q", got, want)
	}
}
