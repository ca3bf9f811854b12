// Package etcdembed runs a single-member etcd inside the Ferry server
// process, with its data and chosen ports kept in the server's data dir so a
// restart finds the same cluster, or one member of a multi-member cluster
// whose https:// peer and client traffic uses certificates issued from the
// cluster CA.
package etcdembed

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"go.etcd.io/etcd/server/v3/embed"
)

// Etcd is a running embedded etcd.
type Etcd struct {
	e *embed.Etcd
	// Endpoint is the client URL (http://127.0.0.1:PORT).
	Endpoint string
	// ClientTLS is the TLS configuration for Endpoint when it is https
	// (a member with https client URLs), else nil.
	ClientTLS *tls.Config
	// Plaintext lists the member's URLs that carry plaintext across the
	// network (allowed by Member.Insecure): log a warning about them.
	Plaintext []string
}

type ports struct {
	Client int `json:"client"`
	Peer   int `json:"peer"`
}

// RestartBindWait bounds how long a restart waits for its remembered
// ports to be free.
const RestartBindWait = 10 * time.Second

// Start starts (or restarts) the embedded etcd whose data lives in dir.
// Its ports are chosen once and remembered in dir/ports.json.
func Start(ctx context.Context, dir string) (*Etcd, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("embedded etcd: create %s: %w", dir, err)
	}
	portsPath := filepath.Join(dir, "ports.json")
	_, statErr := os.Stat(portsPath)
	picked := os.IsNotExist(statErr) // fresh ports: another process may take one before etcd binds it
	deadline := time.Now().Add(RestartBindWait)
	for attempt := 1; ; attempt++ {
		e, err := start(ctx, dir, portsPath)
		if err == nil || !errors.Is(err, syscall.EADDRINUSE) {
			return e, err
		}
		if !picked {
			// A restart keeps its ports (its peers and clients know them):
			// a socket of the process before may still hold one for a
			// moment (CI saw a restarted server's peer port taken once).
			if time.Now().After(deadline) {
				return nil, fmt.Errorf("%w (still after %v)", err, RestartBindWait)
			}
			select {
			case <-ctx.Done():
				return nil, errors.Join(err, ctx.Err())
			case <-time.After(250 * time.Millisecond):
			}
			continue
		}
		if attempt == 3 {
			return e, err
		}
		if rerr := os.Remove(portsPath); rerr != nil {
			return nil, errors.Join(err, fmt.Errorf("embedded etcd: pick new ports: %w", rerr))
		}
	}
}

// start runs etcd once on the ports of portsPath (picked when missing).
func start(ctx context.Context, dir, portsPath string) (*Etcd, error) {
	p, err := loadOrPickPorts(portsPath)
	if err != nil {
		return nil, err
	}
	cfg := embed.NewConfig()
	cfg.Name = "ferry"
	cfg.Dir = filepath.Join(dir, "data")
	cfg.LogLevel = "error"
	cfg.LogOutputs = []string{filepath.Join(dir, "etcd.log")}
	cu := url.URL{Scheme: "http", Host: fmt.Sprintf("127.0.0.1:%d", p.Client)}
	pu := url.URL{Scheme: "http", Host: fmt.Sprintf("127.0.0.1:%d", p.Peer)}
	cfg.ListenClientUrls = []url.URL{cu}
	cfg.AdvertiseClientUrls = []url.URL{cu}
	cfg.ListenPeerUrls = []url.URL{pu}
	cfg.AdvertisePeerUrls = []url.URL{pu}
	cfg.InitialCluster = cfg.InitialClusterFromName(cfg.Name)
	e, err := embed.StartEtcd(cfg)
	if err != nil {
		return nil, fmt.Errorf("embedded etcd: start in %s (log %s): %w", dir, cfg.LogOutputs[0], err)
	}
	select {
	case <-e.Server.ReadyNotify():
	case <-time.After(30 * time.Second):
		e.Close()
		return nil, errors.New("embedded etcd: not ready after 30s")
	case <-ctx.Done():
		e.Close()
		return nil, fmt.Errorf("embedded etcd: %w", ctx.Err())
	}
	return &Etcd{e: e, Endpoint: cu.String()}, nil
}

// Close stops etcd.
func (e *Etcd) Close() { e.e.Close() }

func loadOrPickPorts(path string) (ports, error) {
	var p ports
	if b, err := os.ReadFile(path); err == nil {
		if err := json.Unmarshal(b, &p); err != nil {
			return p, fmt.Errorf("embedded etcd: parse %s: %w (delete it to pick new ports)", path, err)
		}
		return p, nil
	} else if !os.IsNotExist(err) {
		return p, fmt.Errorf("embedded etcd: %w", err)
	}
	var err error
	if p.Client, err = freePort(); err != nil {
		return p, err
	}
	if p.Peer, err = freePort(); err != nil {
		return p, err
	}
	b, _ := json.Marshal(p)
	if err := os.WriteFile(path, b, 0o600); err != nil {
		return p, fmt.Errorf("embedded etcd: save ports: %w", err)
	}
	return p, nil
}

// freePort picks a free loopback port outside the kernel's ephemeral
// range, so that no outgoing connection of another process can hold it
// when etcd restarts on it (a restart reuses ports.json's ports; CI once
// saw "bind: address already in use" on a port from the ephemeral range).
// With no room outside that range it takes an ephemeral port.
func freePort() (int, error) {
	lo, hi := ephemeralRange()
	first, last := stablePorts(lo, hi)
	for i := 0; i < 64 && last >= first; i++ {
		port := first + rand.IntN(last-first+1)
		l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port))
		if err != nil {
			continue // taken: try another
		}
		l.Close()
		return port, nil
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("embedded etcd: pick a port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// ephemeralRange reads net.ipv4.ip_local_port_range (Linux's default,
// 32768-60999, when it cannot).
func ephemeralRange() (lo, hi int) {
	lo, hi = 32768, 60999
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err != nil {
		return lo, hi
	}
	var a, z int
	if n, err := fmt.Sscan(string(b), &a, &z); err != nil || n != 2 || a < 1 || z > 65535 || a > z {
		return lo, hi
	}
	return a, z
}

// stablePorts is the range freePort picks from: below the ephemeral range
// (from 10000), else above it; empty (last < first) when neither has 1000
// ports.
func stablePorts(lo, hi int) (first, last int) {
	switch {
	case lo-10000 >= 1000:
		return 10000, lo - 1
	case 65535-hi >= 1000:
		return hi + 1, 65535
	}
	return 1, 0
}
