package relay

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"encoding/pem"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ferryvm/ferry/internal/pki"
)

// childEnv makes the test binary run as a relay process (RunProcess on
// its standard input's spec), as `ferry stream-relay` does.
const childEnv = "FERRY_RELAY_TEST_CHILD"

func TestMain(m *testing.M) {
	if os.Getenv(childEnv) == "1" {
		var spec ProcessSpec
		if err := json.NewDecoder(os.Stdin).Decode(&spec); err != nil {
			os.Exit(3)
		}
		log := slog.New(slog.NewTextHandler(os.Stderr, nil))
		if err := RunProcess(context.Background(), spec, os.Stdout, log); err != nil {
			log.Error("relay child", "err", err)
			os.Exit(2)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// pemCerts are h1's and h2's stream certificates and keys and the CA, as
// PEM (what an agent hands its relay processes).
type pemCerts struct {
	ca                 []byte
	h1c, h1k, h2c, h2k []byte
}

func newPEMCerts(t *testing.T) pemCerts {
	t.Helper()
	ca, err := pki.NewCA("relay-process-test")
	if err != nil {
		t.Fatal(err)
	}
	var p pemCerts
	p.ca = pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ca.Cert.Raw})
	if p.h1c, p.h1k, err = ca.IssueKeyPair(pki.KindQEMU, "h1", time.Hour); err != nil {
		t.Fatal(err)
	}
	if p.h2c, p.h2k, err = ca.IssueKeyPair(pki.KindQEMU, "h2", time.Hour); err != nil {
		t.Fatal(err)
	}
	return p
}

// startChild starts a relay process of the test binary and kills it at
// the test's end.
func startChild(t *testing.T, spec ProcessSpec) *Process {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	t.Setenv(childEnv, "1")
	p, err := StartProcess(context.Background(), []string{exe, "-test.run=^$"}, spec, spec.Control+".log", "")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = p.Close() })
	return p
}

// sleeper is a process standing in for QEMU (WatchPID), killed at the
// test's end.
func sleeper(t *testing.T) *exec.Cmd {
	t.Helper()
	c := exec.Command("sleep", "600")
	if err := c.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Process.Kill(); _ = c.Wait() })
	return c
}

// TestRelayProcesses: a source and a destination relay process carry a
// channel end to end on TLS; a new handle adopts a running process
// through its control socket (as a restarted agent does) and retargets
// it; the process ends when its QEMU does, and at Close.
func TestRelayProcesses(t *testing.T) {
	pc := newPEMCerts(t)
	dir := t.TempDir()
	got := make(chan []byte, 4)
	dest := fakeDest(t, func(c net.Conn) {
		b, _ := io.ReadAll(c)
		got <- b
	})
	qemuIn, qemuOut := sleeper(t), sleeper(t)
	in := startChild(t, ProcessSpec{Mode: ModeIn, Listen: "127.0.0.1:0", Target: dest, Peer: "h1", UID: -1,
		CA: pc.ca, Cert: pc.h2c, Key: pc.h2k, Control: filepath.Join(dir, "in.ctl"), WatchPID: qemuIn.Process.Pid})
	out := startChild(t, ProcessSpec{Mode: ModeOut, Listen: filepath.Join(dir, "out.sock"), Target: in.Endpoint(), Peer: "h2", UID: -1,
		CA: pc.ca, Cert: pc.h1c, Key: pc.h1k, Control: filepath.Join(dir, "out.ctl"), WatchPID: qemuOut.Process.Pid})
	if !strings.HasPrefix(out.Endpoint(), "unix:") {
		t.Fatalf("source endpoint %q, want unix:PATH", out.Endpoint())
	}

	send := func(payload []byte) []byte {
		t.Helper()
		c, err := net.Dial("unix", strings.TrimPrefix(out.Endpoint(), "unix:"))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := c.Write(payload); err != nil {
			t.Fatal(err)
		}
		_ = c.(*net.UnixConn).CloseWrite()
		defer c.Close()
		select {
		case b := <-got:
			return b
		case <-time.After(10 * time.Second):
			t.Fatal("nothing reached the destination socket within 10s")
			return nil
		}
	}
	payload := make([]byte, 3<<20)
	_, _ = rand.Read(payload)
	if b := send(payload); !bytes.Equal(b, payload) {
		t.Fatalf("the destination got %d bytes, want the %d sent", len(b), len(payload))
	}
	if s := out.Stats(); s.Channels != 1 || s.Sent != int64(len(payload)) {
		t.Errorf("source stats %+v, want 1 channel and %d bytes sent", s, len(payload))
	}

	// A restarted agent adopts the destination relay and retargets it.
	adopted, err := AdoptProcess(filepath.Join(dir, "in.ctl"))
	if err != nil {
		t.Fatal(err)
	}
	if adopted.PID() != in.PID() || adopted.Endpoint() != in.Endpoint() {
		t.Fatalf("adopted pid %d endpoint %s, want %d %s", adopted.PID(), adopted.Endpoint(), in.PID(), in.Endpoint())
	}
	got2 := make(chan []byte, 1)
	dest2 := fakeDest(t, func(c net.Conn) {
		b, _ := io.ReadAll(c)
		got2 <- b
	})
	if err := adopted.Retarget(dest2); err != nil {
		t.Fatal(err)
	}
	if err := adopted.Retarget(""); err == nil {
		t.Error("retarget to nothing: no error")
	}
	c, err := net.Dial("unix", strings.TrimPrefix(out.Endpoint(), "unix:"))
	if err != nil {
		t.Fatal(err)
	}
	_, _ = c.Write([]byte("second"))
	_ = c.(*net.UnixConn).CloseWrite()
	select {
	case b := <-got2:
		if string(b) != "second" {
			t.Errorf("after the retarget the new socket got %q", b)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("after the retarget nothing reached the new socket")
	}
	c.Close()

	// The source relay ends with its QEMU.
	_ = qemuOut.Process.Kill()
	if !out.wait(5 * time.Second) {
		t.Fatal("the source relay process still runs 5s after its QEMU ended")
	}
	if _, err := AdoptProcess(filepath.Join(dir, "out.ctl")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("adopting an ended relay: %v, want ErrNotExist", err)
	}
	// Close ends the destination relay.
	if err := adopted.Close(); err != nil {
		t.Fatal(err)
	}
	if !in.wait(5 * time.Second) {
		t.Fatal("the destination relay process still runs after Close")
	}
}

// TestRelayProcessBadSpec: a spec missing a field is refused before any
// process starts, naming the field.
func TestRelayProcessBadSpec(t *testing.T) {
	_, err := StartProcess(context.Background(), []string{"/bin/true"}, ProcessSpec{Mode: ModeOut, Listen: "x", Target: "h:1", Peer: "h2", Control: "c"}, filepath.Join(t.TempDir(), "log"), "")
	if err == nil || !strings.Contains(err.Error(), "ca, cert and key") {
		t.Fatalf("spec without certificates: %v, want an error naming ca, cert and key", err)
	}
	_, err = StartProcess(context.Background(), []string{"/bin/true"}, ProcessSpec{Mode: "sideways"}, filepath.Join(t.TempDir(), "log"), "")
	if err == nil || !strings.Contains(err.Error(), "mode") {
		t.Fatalf("bad mode: %v, want an error naming mode", err)
	}
	// A command that never writes its ready line is refused and reaped.
	pc := newPEMCerts(t)
	_, err = StartProcess(context.Background(), []string{"/bin/true"}, ProcessSpec{Mode: ModeOut, Listen: "x", Target: "h:1", Peer: "h2",
		CA: pc.ca, Cert: pc.h1c, Key: pc.h1k, Control: filepath.Join(t.TempDir(), "c")}, filepath.Join(t.TempDir(), "log"), "")
	if err == nil {
		t.Fatal("a relay command that exits at once: no error")
	}
}
