//go:build linux

package agent

import (
	"bytes"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ferryvm/ferry/guest/guestapi"
	"github.com/ferryvm/ferry/guest/internal/cmdline"
)

// fakeStops counts stop requests instead of crashing the kernel.
type fakeStops struct {
	mu      sync.Mutex
	n       int
	at      time.Time // the last stop
	console bytes.Buffer
}

func (f *fakeStops) stop() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.n++
	f.at = time.Now()
	return nil
}
func (f *fakeStops) Write(b []byte) (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.console.Write(b)
}
func (f *fakeStops) count() (int, string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.n, f.console.String()
}

func stopAgent(t *testing.T, withStop bool) (*Agent, *fakeStops, *httptest.Server) {
	t.Helper()
	a := New([16]byte{1}, "", cmdline.Parse(""), nil, "/nonexistent/vda", func() time.Duration { return time.Second })
	f := &fakeStops{}
	a.Console = f
	if withStop {
		a.StopKernel = f.stop
	}
	srv := httptest.NewServer(a.Handler())
	t.Cleanup(srv.Close)
	return a, f, srv
}

func post(t *testing.T, url string) int {
	t.Helper()
	resp, err := http.Post(url, "", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

func TestStopKernelAtGuestAgentContact(t *testing.T) {
	a, f, srv := stopAgent(t, true)
	a.GuestAgentCommand("guest-ping") // not armed: nothing happens
	if n, _ := f.count(); n != 0 {
		t.Fatalf("stopped %d times before being armed", n)
	}
	if c := post(t, srv.URL+guestapi.StopKernelPath+"?on=guest-agent"); c != http.StatusAccepted {
		t.Fatalf("POST on=guest-agent: %d, want 202", c)
	}
	if n, _ := f.count(); n != 0 {
		t.Fatalf("stopped at once; want at the next guest agent command")
	}
	a.GuestAgentCommand("guest-sync-delimited")
	n, console := f.count()
	if n != 1 || !strings.HasPrefix(console, guestapi.StopKernelLine+"guest agent command guest-sync-delimited") {
		t.Fatalf("after a guest agent command: %d stops, console %q", n, console)
	}
}

// A timed stop comes after its reply, also at delay_ms=0: the real guest
// answers nothing once stopped (CI saw the caller time out waiting for
// the 202 when the stop ran first).
func TestStopKernelAfterDelay(t *testing.T) {
	for _, d := range []string{"0", "20"} {
		_, f, srv := stopAgent(t, true)
		if c := post(t, srv.URL+guestapi.StopKernelPath+"?delay_ms="+d); c != http.StatusAccepted {
			t.Fatalf("POST delay_ms=%s: %d, want 202", d, c)
		}
		replied := time.Now()
		deadline := replied.Add(5 * time.Second)
		for n, _ := f.count(); n == 0; n, _ = f.count() {
			if time.Now().After(deadline) {
				t.Fatalf("no stop within 5s of delay_ms=%s", d)
			}
			time.Sleep(5 * time.Millisecond)
		}
		f.mu.Lock()
		at := f.at
		f.mu.Unlock()
		if !at.After(replied) {
			t.Errorf("delay_ms=%s: the stop ran %v before the reply arrived", d, replied.Sub(at))
		}
	}
}

func TestStopKernelRefusals(t *testing.T) {
	_, _, srv := stopAgent(t, false)
	if c := post(t, srv.URL+guestapi.StopKernelPath); c != http.StatusNotImplemented {
		t.Errorf("without StopKernel: %d, want 501", c)
	}
	_, f, srv := stopAgent(t, true)
	for _, q := range []string{"?delay_ms=-1", "?delay_ms=x", "?delay_ms=99999999", "?on=reboot"} {
		if c := post(t, srv.URL+guestapi.StopKernelPath+q); c != http.StatusBadRequest {
			t.Errorf("POST %s: %d, want 400", q, c)
		}
	}
	if n, _ := f.count(); n != 0 {
		t.Errorf("a refused request stopped the kernel")
	}
}
