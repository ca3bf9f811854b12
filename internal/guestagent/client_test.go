package guestagent

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"
)

// fakeGuest answers commands on one end of a pipe like a guest agent
// would, after writing junk first (what a previous session left behind).
type fakeGuest struct {
	junk     string // written before the first answer
	stale    bool   // answer each sync first with a stale id
	pingErr  bool   // answer guest-ping with an error
	silent   bool   // read but never answer
	commands chan string
}

func (g *fakeGuest) serve(c net.Conn) {
	defer c.Close()
	br := bufio.NewReader(c)
	for {
		line, err := br.ReadBytes('\n')
		if err != nil {
			return
		}
		line = bytes.TrimLeft(line, "\xff")
		var cmd struct {
			Execute   string `json:"execute"`
			Arguments struct {
				ID int64 `json:"id"`
			} `json:"arguments"`
		}
		if err := json.Unmarshal(line, &cmd); err != nil {
			continue
		}
		if g.commands != nil {
			g.commands <- cmd.Execute
		}
		if g.silent {
			continue
		}
		switch cmd.Execute {
		case "guest-sync-delimited":
			if g.junk != "" { // (net.Pipe is synchronous: the junk goes out once the host reads)
				_, _ = c.Write([]byte(g.junk))
				g.junk = ""
			}
			if g.stale {
				fmt.Fprintf(c, "\xff{\"return\": %d}\n", cmd.Arguments.ID+1)
			}
			fmt.Fprintf(c, "\xff{\"return\": %d}\n", cmd.Arguments.ID)
		case "guest-ping":
			if g.pingErr {
				fmt.Fprint(c, `{"error": {"class": "GenericError", "desc": "frozen"}}`+"\n")
			} else {
				fmt.Fprint(c, `{"return": {}}`+"\n")
			}
		}
	}
}

func session(t *testing.T, g *fakeGuest, timeout time.Duration) error {
	t.Helper()
	host, guest := net.Pipe()
	go g.serve(guest)
	c := NewConn(host)
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	if err := c.Sync(ctx); err != nil {
		return err
	}
	return c.Ping(ctx)
}

func TestSyncPing(t *testing.T) {
	g := &fakeGuest{commands: make(chan string, 4)}
	if err := session(t, g, 5*time.Second); err != nil {
		t.Fatalf("sync+ping: %v", err)
	}
	if a, b := <-g.commands, <-g.commands; a != "guest-sync-delimited" || b != "guest-ping" {
		t.Errorf("commands = %s, %s; want guest-sync-delimited, guest-ping", a, b)
	}
}

func TestSyncSkipsStaleReplies(t *testing.T) {
	// Leftovers of an earlier session: a reply without delimiter, a stale
	// delimited one, then (per sync) a reply with another id.
	g := &fakeGuest{junk: "{\"return\": {}}\n\xff{\"return\": 7}\n", stale: true}
	if err := session(t, g, 5*time.Second); err != nil {
		t.Fatalf("sync+ping after stale data: %v", err)
	}
}

func TestSilentGuestIsNoReply(t *testing.T) {
	t0 := time.Now()
	err := session(t, &fakeGuest{silent: true}, 200*time.Millisecond)
	if !errors.Is(err, ErrNoReply) {
		t.Fatalf("silent guest: err = %v, want ErrNoReply", err)
	}
	if d := time.Since(t0); d > 3*time.Second {
		t.Errorf("silent guest: gave up after %v, want about the 200ms deadline", d)
	}
}

func TestPingError(t *testing.T) {
	err := session(t, &fakeGuest{pingErr: true}, 5*time.Second)
	if err == nil || !strings.Contains(err.Error(), "GenericError: frozen") || errors.Is(err, ErrNoReply) {
		t.Fatalf("ping error: err = %v, want the guest's GenericError", err)
	}
}

func TestBadReply(t *testing.T) {
	host, guest := net.Pipe()
	go func() {
		br := bufio.NewReader(guest)
		_, _ = br.ReadBytes('\n')
		_, _ = guest.Write([]byte("\xffnot json\n"))
	}()
	c := NewConn(host)
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := c.Sync(ctx); err == nil || !strings.Contains(err.Error(), "bad reply") {
		t.Fatalf("Sync on garbage: err = %v, want a bad reply error", err)
	}
}

func TestDialMissingSocket(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	err := SyncPing(ctx, t.TempDir()+"/none.sock")
	if err == nil || !strings.Contains(err.Error(), "none.sock") {
		t.Fatalf("SyncPing on a missing socket: err = %v, want one naming the path", err)
	}
}
