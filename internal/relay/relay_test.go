package relay

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ferryvm/ferry/internal/pki"
	"golang.org/x/sys/unix"
)

// certs are the stream certificates of hosts h1 and h2 (and a third, h3)
// under one test CA.
type certs struct {
	ca         *pki.CA
	h1, h2, h3 tls.Certificate
}

func newCerts(t *testing.T) certs {
	t.Helper()
	ca, err := pki.NewCA("relay-test")
	if err != nil {
		t.Fatal(err)
	}
	issue := func(name string) tls.Certificate {
		c, k, err := ca.IssueKeyPair(pki.KindQEMU, name, time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		pair, err := tls.X509KeyPair(c, k)
		if err != nil {
			t.Fatal(err)
		}
		return pair
	}
	return certs{ca: ca, h1: issue("h1"), h2: issue("h2"), h3: issue("h3")}
}

// fakeDest is the destination QEMU's listening Unix socket: it hands each
// accepted channel to serve.
func fakeDest(t *testing.T, serve func(net.Conn)) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "in.sock")
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() { _ = ln.Close(); wg.Wait() })
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() { defer wg.Done(); defer c.Close(); serve(c) }()
		}
	}()
	return path
}

// pair starts an Inbound (h2, admitting h1) to dest and an Outbound (h1,
// expecting h2) to it.
func pair(t *testing.T, cs certs, dest string) (*Outbound, *Inbound) {
	t.Helper()
	in, err := ListenInbound("127.0.0.1:0", dest, pki.StreamServerTLS(cs.ca.Pool(), cs.h2, "h1"), nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = in.Close() })
	out, err := ListenOutbound(filepath.Join(t.TempDir(), "out.sock"), in.Addr(), pki.StreamClientTLS(cs.ca.Pool(), cs.h1, "h2"), -1, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = out.Close() })
	return out, in
}

func dialOut(t *testing.T, o *Outbound) net.Conn {
	t.Helper()
	c, err := net.Dial("unix", o.path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

func random(t *testing.T, n int) []byte {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

// TestChannelsCarryBothWays: three channels at once each carry 4 MiB to
// the destination and a reply back, byte for byte, and the counters add
// up.
func TestChannelsCarryBothWays(t *testing.T) {
	cs := newCerts(t)
	const size = 4 << 20
	dest := fakeDest(t, func(c net.Conn) {
		h := sha256.New()
		if _, err := io.Copy(h, c); err != nil {
			t.Errorf("destination read: %v", err)
			return
		}
		_, _ = c.Write(h.Sum(nil)) // the "return path": after the source's end of stream
	})
	out, in := pair(t, cs, dest)
	var wg sync.WaitGroup
	for i := 0; i < 3; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := net.Dial("unix", out.path)
			if err != nil {
				t.Error(err)
				return
			}
			defer c.Close()
			data := make([]byte, size)
			_, _ = rand.Read(data)
			if _, err := c.Write(data); err != nil {
				t.Errorf("source write: %v", err)
				return
			}
			_ = c.(*net.UnixConn).CloseWrite()
			got, err := io.ReadAll(c)
			if err != nil {
				t.Errorf("source read: %v", err)
			}
			want := sha256.Sum256(data)
			if !bytes.Equal(got, want[:]) {
				t.Errorf("the destination received other bytes than were sent (digest %x, want %x)", got, want)
			}
		}()
	}
	wg.Wait()
	waitFor(t, "counters", func() bool { return out.Stats().Sent == 3*size && in.Stats().Received == 3*size })
	if s := out.Stats(); s.Channels != 3 || s.Received != 3*32 {
		t.Errorf("outbound stats %+v, want 3 channels and 96 bytes received", s)
	}
}

// TestTailSurvivesImmediateClose: the source sends its last bytes and
// closes its socket at once while the destination keeps talking back —
// the TCP connection must not be reset before the last bytes arrived.
func TestTailSurvivesImmediateClose(t *testing.T) {
	cs := newCerts(t)
	data := random(t, 2<<20)
	got := make(chan []byte, 1)
	dest := fakeDest(t, func(c net.Conn) {
		stop := make(chan struct{})
		go func() { // chatter until the stream ends, like a return path
			for {
				select {
				case <-stop:
					return
				default:
				}
				if _, err := c.Write(make([]byte, 512)); err != nil {
					return
				}
				time.Sleep(time.Millisecond)
			}
		}()
		b, _ := io.ReadAll(c)
		close(stop)
		got <- b
	})
	out, _ := pair(t, cs, dest)
	c := dialOut(t, out)
	if _, err := c.Write(data); err != nil {
		t.Fatal(err)
	}
	_ = c.Close()
	select {
	case b := <-got:
		if !bytes.Equal(b, data) {
			t.Fatalf("destination received %d bytes of %d (or others)", len(b), len(data))
		}
	case <-time.After(20 * time.Second):
		t.Fatal("the destination never saw the stream end")
	}
}

// TestWrongPeerRefused: a relay whose peer presents another host's
// certificate carries nothing: QEMU's channel is closed and the
// destination's socket never sees a connection.
func TestWrongPeerRefused(t *testing.T) {
	cs := newCerts(t)
	var mu sync.Mutex
	reached := 0
	dest := fakeDest(t, func(net.Conn) { mu.Lock(); reached++; mu.Unlock() })
	// h3 pretends to be h2.
	in, err := ListenInbound("127.0.0.1:0", dest, pki.StreamServerTLS(cs.ca.Pool(), cs.h3, "h1"), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	out, err := ListenOutbound(filepath.Join(t.TempDir(), "o.sock"), in.Addr(), pki.StreamClientTLS(cs.ca.Pool(), cs.h1, "h2"), -1, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	c := dialOut(t, out)
	_ = c.SetReadDeadline(time.Now().Add(15 * time.Second))
	if _, err := c.Read(make([]byte, 1)); !errors.Is(err, io.EOF) {
		t.Errorf("QEMU's channel to a wrong peer: read %v, want EOF (closed)", err)
	}
	// And an intruder without h1's certificate, straight at the Inbound.
	in2, _ := pair(t, cs, dest)
	_ = in2
	intr, err := tls.Dial("tcp", in.Addr(), pki.StreamClientTLS(cs.ca.Pool(), cs.h3, "h3"))
	if err == nil {
		_ = intr.SetReadDeadline(time.Now().Add(5 * time.Second))
		_, _ = intr.Read(make([]byte, 1))
		intr.Close()
	}
	time.Sleep(200 * time.Millisecond)
	mu.Lock()
	defer mu.Unlock()
	if reached != 0 {
		t.Errorf("the destination's socket got %d connection(s) through a refused relay", reached)
	}
}

// TestPeerFailureClosesQEMUsChannel: when the far end goes away mid-stream
// the source QEMU's socket fails at once (so a pre-copy fails and a
// post-copy pauses), and Close ends every open channel.
func TestPeerFailureClosesQEMUsChannel(t *testing.T) {
	cs := newCerts(t)
	dest := fakeDest(t, func(c net.Conn) { _, _ = io.Copy(io.Discard, c) })
	out, in := pair(t, cs, dest)
	c := dialOut(t, out)
	if _, err := c.Write(random(t, 1<<20)); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "bytes at the destination", func() bool { return in.Stats().Received > 0 })
	if err := in.Close(); err != nil {
		t.Fatal(err)
	}
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	var err error
	for err == nil {
		_, err = c.Write(make([]byte, 64<<10))
	}
	if isTimeout(err) {
		t.Fatalf("QEMU's channel stayed open after the destination's relay closed: %v", err)
	}

	// Close of the source relay ends an open channel too.
	out2, _ := pair(t, cs, dest)
	c2 := dialOut(t, out2)
	if _, err := c2.Write([]byte("x")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "a channel", func() bool { return out2.Stats().Channels == 1 })
	done := make(chan error, 1)
	go func() { done <- out2.Close() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Close did not return")
	}
	_ = c2.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := c2.Read(make([]byte, 1)); isTimeout(err) {
		t.Fatal("the channel stayed open after Close")
	}
}

// TestRetarget: channels opened after Retarget go to the new address (a
// post-copy recovery), on both ends.
func TestRetarget(t *testing.T) {
	cs := newCerts(t)
	mark := func(b byte) func(net.Conn) { return func(c net.Conn) { _, _ = c.Write([]byte{b}) } }
	first, second := fakeDest(t, mark('1')), fakeDest(t, mark('2'))
	out, in := pair(t, cs, first)
	read := func() byte {
		c := dialOut(t, out)
		_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
		b := make([]byte, 1)
		if _, err := io.ReadFull(c, b); err != nil {
			t.Fatal(err)
		}
		return b[0]
	}
	if got := read(); got != '1' {
		t.Fatalf("first channel reached %q", got)
	}
	if err := in.Retarget(second); err != nil {
		t.Fatal(err)
	}
	if got := read(); got != '2' {
		t.Fatalf("after the destination's Retarget the channel reached %q", got)
	}
	in2, err := ListenInbound("127.0.0.1:0", first, pki.StreamServerTLS(cs.ca.Pool(), cs.h2, "h1"), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer in2.Close()
	if err := out.Retarget(in2.Addr()); err != nil {
		t.Fatal(err)
	}
	if got := read(); got != '1' {
		t.Fatalf("after the source's Retarget the channel reached %q", got)
	}
	if err := out.Retarget("nonsense"); err == nil {
		t.Error("Retarget accepted an address without a port")
	}
}

func waitFor(t *testing.T, what string, ok func() bool) {
	t.Helper()
	for end := time.Now().Add(10 * time.Second); time.Now().Before(end); time.Sleep(5 * time.Millisecond) {
		if ok() {
			return
		}
	}
	t.Fatalf("timed out waiting for %s", what)
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// BenchmarkRelay is one channel's throughput through an Outbound and an
// Inbound on loopback (TLS both ways), with the CPU both ends cost.
func BenchmarkRelay(b *testing.B) {
	t := &testing.T{}
	cs := newCerts(t)
	got := make(chan int64, 1)
	path := filepath.Join(b.TempDir(), "in.sock")
	ln, err := net.Listen("unix", path)
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				n, _ := io.Copy(io.Discard, c)
				c.Close()
				got <- n
			}()
		}
	}()
	in, err := ListenInbound("127.0.0.1:0", path, pki.StreamServerTLS(cs.ca.Pool(), cs.h2, "h1"), nil)
	if err != nil {
		b.Fatal(err)
	}
	defer in.Close()
	out, err := ListenOutbound(filepath.Join(b.TempDir(), "out.sock"), in.Addr(), pki.StreamClientTLS(cs.ca.Pool(), cs.h1, "h2"), -1, nil)
	if err != nil {
		b.Fatal(err)
	}
	defer out.Close()
	const size = 256 << 20
	chunk := make([]byte, 32<<10)
	b.SetBytes(size)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		c, err := net.Dial("unix", out.path)
		if err != nil {
			b.Fatal(err)
		}
		for sent := 0; sent < size; sent += len(chunk) {
			if _, err := c.Write(chunk); err != nil {
				b.Fatal(err)
			}
		}
		_ = c.(*net.UnixConn).CloseWrite()
		if n := <-got; n != size {
			b.Fatalf("carried %d of %d bytes", n, size)
		}
		c.Close()
	}
}

// TestCloseEndsADialInFlight: a channel whose dial to the peer hangs (its
// SYNs dropped, as on a cut link: here a listener whose backlog is full)
// does not hold Close until DialTimeout.
func TestCloseEndsADialInFlight(t *testing.T) {
	cs := newCerts(t)
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = unix.Close(fd) })
	if err := unix.Bind(fd, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatal(err)
	}
	if err := unix.Listen(fd, 0); err != nil {
		t.Fatal(err)
	}
	sa, err := unix.Getsockname(fd)
	if err != nil {
		t.Fatal(err)
	}
	addr := fmt.Sprintf("127.0.0.1:%d", sa.(*unix.SockaddrInet4).Port)
	// Fill the backlog: later SYNs are dropped.
	for range 3 {
		c, err := net.DialTimeout("tcp", addr, 200*time.Millisecond)
		if err == nil {
			t.Cleanup(func() { _ = c.Close() })
		}
	}
	out, err := ListenOutbound(filepath.Join(t.TempDir(), "o.sock"), addr, pki.StreamClientTLS(cs.ca.Pool(), cs.h1, "h2"), -1, nil)
	if err != nil {
		t.Fatal(err)
	}
	local, err := net.Dial("unix", strings.TrimPrefix(out.URI(), "unix:"))
	if err != nil {
		t.Fatal(err)
	}
	defer local.Close()
	time.Sleep(300 * time.Millisecond) // the channel is dialing
	start := time.Now()
	if err := out.Close(); err != nil {
		t.Fatal(err)
	}
	if took := time.Since(start); took > 2*time.Second {
		t.Fatalf("Close took %v with a dial in flight, want it cut short (DialTimeout %v)", took, DialTimeout)
	}
}
