package qmp

import (
	"encoding/json"
	"errors"
	"net"
	"strings"
	"testing"
	"time"
)

// FuzzDecode feeds arbitrary bytes from "QEMU" to the session reader:
// it must neither panic nor hang, a waiting command gets a reply or a
// transport error, and events reach a subscriber intact. A reply is then
// decoded as the types the monitor decodes most (query-migrate, query-status).
// Seeds: testdata/fuzz/FuzzDecode.
func FuzzDecode(f *testing.F) {
	f.Add([]byte(`{"return": {}, "id": "ferry-1"}` + "\r\n"))
	f.Add([]byte(`{"event": "STOP", "timestamp": {"seconds": 1, "microseconds": 2}}` + "\n" + `{"error": {"class": "GenericError", "desc": "x"}, "id": "ferry-1"}` + "\n"))
	f.Add([]byte(`{"return": {"status": "active", "ram": {"transferred": 1, "remaining": -5, "total": 0}}, "id": "ferry-1"}`))
	f.Add([]byte(`{"id": ["ferry-1"], "return": 3}` + "\n" + `{"event": 7}`))
	f.Add([]byte(`{"event": "MIGRATION", "data": null, "timestamp": {"seconds": -1, "microseconds": 99999999999}}`))
	f.Add([]byte(`{"return": {}}` + strings.Repeat(" ", 64) + `{`))
	f.Fuzz(func(t *testing.T, data []byte) {
		client, peer := net.Pipe()
		hub := newEventHub(4)
		sub := hub.subscribe()
		w := newWire(client, nil, hub)
		ch := make(chan reply, 1)
		w.pending["ferry-1"] = ch
		go func() {
			_ = peer.SetWriteDeadline(time.Now().Add(5 * time.Second))
			_, _ = peer.Write(data)
			_ = peer.Close()
		}()
		done := make(chan struct{})
		go func() {
			w.readLoop(nil)
			close(done)
		}()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Fatal("reader did not stop after the stream ended")
		}
		if w.err() == nil {
			t.Fatal("session still alive after the stream ended")
		}
		select {
		case r := <-ch:
			if r.fail == nil && r.qerr == nil {
				var mi MigrationInfo
				if json.Unmarshal(r.ret, &mi) == nil {
					_ = mi.CurrentStatus().Finished()
				}
				var st StatusInfo
				_ = json.Unmarshal(r.ret, &st)
			}
		default:
			t.Fatal("the waiting command got neither a reply nor the session's end")
		}
		for ev := range sub.C() {
			if ev.Name == "" {
				t.Fatalf("event without a name: %+v", ev)
			}
		}
	})
}

// TestOverlongLineEndsSession: a message longer than MaxLineBytes ends the
// session with ErrProtocol instead of being buffered.
func TestOverlongLineEndsSession(t *testing.T) {
	client, peer := net.Pipe()
	w := newWire(client, nil, newEventHub(1))
	ch := make(chan reply, 1)
	w.pending["ferry-1"] = ch
	go func() {
		chunk := []byte(`{"return": "` + strings.Repeat("a", 1<<16))
		for sent := 0; sent <= MaxLineBytes+len(chunk); sent += len(chunk) {
			if _, err := peer.Write(chunk); err != nil {
				return
			}
			chunk = []byte(strings.Repeat("a", 1<<16))
		}
		_ = peer.Close()
	}()
	w.readLoop(nil)
	r := <-ch
	if !errors.Is(r.fail, ErrProtocol) {
		t.Fatalf("reply after an overlong line: %+v, want ErrProtocol", r)
	}
}
