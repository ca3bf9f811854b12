package etcdembed

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// TestRestartWaitsForItsPort: a restart keeps its remembered ports and
// waits while one is still held (a socket of the process before), rather
// than failing at once.
func TestRestartWaitsForItsPort(t *testing.T) {
	dir := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	e, err := Start(ctx, dir)
	if err != nil {
		t.Fatal(err)
	}
	e.Close()
	b, err := os.ReadFile(filepath.Join(dir, "ports.json"))
	if err != nil {
		t.Fatal(err)
	}
	var p ports
	if err := json.Unmarshal(b, &p); err != nil {
		t.Fatal(err)
	}
	hold, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", p.Peer))
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		time.Sleep(time.Second)
		_ = hold.Close()
	}()
	start := time.Now()
	e, err = Start(ctx, dir)
	if err != nil {
		t.Fatalf("restart with its peer port held for 1s: %v", err)
	}
	defer e.Close()
	if took := time.Since(start); took < 900*time.Millisecond {
		t.Errorf("restart took %v: it cannot have waited for the held port", took)
	}
	b2, _ := os.ReadFile(filepath.Join(dir, "ports.json"))
	if string(b2) != string(b) {
		t.Errorf("ports changed on restart: %s -> %s", b, b2)
	}
}
