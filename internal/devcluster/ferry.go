package devcluster

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"connectrpc.com/connect"
	ferryv1 "github.com/ferryvm/ferry/gen/ferry/v1"
	"github.com/ferryvm/ferry/gen/ferry/v1/ferryv1connect"
	"github.com/ferryvm/ferry/internal/failover"
)

// FerryOptions says how to run Ferry's daemons in a cluster.
type FerryOptions struct {
	// Binary is the ferry executable (default: this process's executable).
	Binary string
	// Accel is passed to every agent (auto, kvm or tcg).
	Accel string
	// ReadyTimeout bounds the wait for every host to be ready.
	ReadyTimeout time.Duration
	// Servers is the number of server replicas (default 1). With more than
	// one, each runs a member of one embedded etcd cluster.
	Servers int
	// LeaderTTL is passed to every server as --leader-ttl when set.
	LeaderTTL time.Duration
	// EtcdEndpoints, when set, makes every server use that etcd cluster
	// (--etcd-endpoints) instead of an embedded one.
	EtcdEndpoints string
	// AllowPaths are directories every agent lets VM specs name files in
	// (--allow-path), besides the ones DevAllowPaths always adds.
	AllowPaths []string
}

// DevAllowPaths lists the directories a dev cluster's agents accept
// kernels, initrds and disk images from, besides each agent's data dir:
// the cluster's state dir, $FERRY_GUEST_DIR and ./build/guest (the test
// guest, `make guest`) when they exist, and extra.
func (c *Cluster) DevAllowPaths(extra []string) []string {
	out := []string{c.Config.Dir}
	cands := append([]string{os.Getenv("FERRY_GUEST_DIR"), "build/guest"}, extra...)
	for _, d := range cands {
		if d == "" {
			continue
		}
		abs, err := filepath.Abs(d)
		if err != nil {
			continue
		}
		if fi, err := os.Stat(abs); err == nil && fi.IsDir() {
			out = append(out, abs)
		}
	}
	return out
}

// ServerURL is the first server's address in a cluster started by
// StartFerry: a unix socket, reachable from every namespace. ServerURLs
// lists every replica's.
func (c *Cluster) ServerURL() string {
	return "unix://" + filepath.Join(c.Config.Dir, "server.sock")
}

// EnvPath is the file StartFerry writes with FERRY_SERVER and friends.
func (c *Cluster) EnvPath() string { return filepath.Join(c.Config.Dir, "env") }

// StartFerry starts `ferry server` (embedded etcd, in the root namespace,
// listening on a unix socket) and one `ferry agent` per host namespace, each
// with its host's bridge, waits until every host is ready, and writes
// DIR/env. The processes are recorded, so Down stops them.
func (c *Cluster) StartFerry(ctx context.Context, opt FerryOptions) error {
	if opt.Binary == "" {
		exe, err := os.Executable()
		if err != nil {
			return fmt.Errorf("find ferry binary: %w", err)
		}
		opt.Binary = exe
	}
	if opt.Accel == "" {
		opt.Accel = "auto"
	}
	if opt.ReadyTimeout == 0 {
		opt.ReadyTimeout = 60 * time.Second
	}
	dir := c.Config.Dir
	if _, err := c.bootstrapPKI(); err != nil {
		return err
	}
	urls, err := c.startServers(opt)
	if err != nil {
		return err
	}
	server := strings.Join(urls, ",")
	if err := c.storeUserCredential(server); err != nil {
		return fmt.Errorf("store the dev admin credential: %w", err)
	}
	joins, err := c.joinTokens(ctx, server, opt.ReadyTimeout)
	if err != nil {
		return err
	}
	allow := c.DevAllowPaths(opt.AllowPaths)
	for _, h := range c.Hosts {
		argv := []string{
			opt.Binary, "agent", "--name", h.Name, "--server", server,
			"--listen", "unix://" + filepath.Join(dir, h.Name, "agent.sock"),
			"--data-dir", filepath.Join(dir, h.Name), "--bridge", h.Bridge,
			"--migration-ip", h.IP, "--accel", opt.Accel, "--join", "@" + joins[h.Name],
			// Touch DIR/<host>/health-degraded to make the host degraded.
			"--health-check", "file:" + c.HealthMarker(h.Name), "--health-period", "1s", "--health-threshold", "1",
		}
		for _, a := range allow {
			argv = append(argv, "--allow-path", a)
		}
		if _, err := c.StartProcess(h.Netns, filepath.Join(dir, "logs", h.Name+"-agent.log"), argv); err != nil {
			return err
		}
	}
	if err := c.WaitHostsReady(ctx, opt.ReadyTimeout); err != nil {
		return err
	}
	env := fmt.Sprintf("FERRY_SERVER=%s\nFERRY_CREDENTIALS=%s\nFERRY_DEV_PREFIX=%s\nFERRY_DEV_CLIENT_NETNS=%s\n", server, c.AdminCredentials(), c.Config.Prefix, c.Client)
	for _, h := range c.Hosts {
		env += fmt.Sprintf("FERRY_DEV_%s_NETNS=%s\nFERRY_DEV_%s_IP=%s\n", strings.ToUpper(h.Name), h.Netns, strings.ToUpper(h.Name), h.IP)
	}
	if err := os.WriteFile(c.EnvPath(), []byte(env), 0o644); err != nil {
		return fmt.Errorf("write %s: %w", c.EnvPath(), err)
	}
	return nil
}

// WaitHostsReady waits until the server lists every host of the cluster as
// ready; the error names the hosts that are not and where their logs are.
func (c *Cluster) WaitHostsReady(ctx context.Context, timeout time.Duration) error {
	hc, base := failover.Client(strings.Join(c.ServerURLs(), ","))
	client := ferryv1connect.NewHostServiceClient(hc, base)
	deadline := time.Now().Add(timeout)
	var missing []string
	var lastErr error
	for {
		rctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		resp, err := client.ListHosts(rctx, connect.NewRequest(&ferryv1.ListHostsRequest{}))
		cancel()
		missing = missing[:0]
		lastErr = err
		ready := map[string]bool{}
		if err == nil {
			for _, h := range resp.Msg.Hosts {
				ready[h.Name] = h.State == "ready"
			}
		}
		for _, h := range c.Hosts {
			if !ready[h.Name] {
				missing = append(missing, h.Name)
			}
		}
		if len(missing) == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			break
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
	if lastErr != nil {
		return fmt.Errorf("server %s not answering after %s: %w (see %s)", c.ServerURL(), timeout, lastErr, filepath.Join(c.Config.Dir, "logs", "server.log"))
	}
	return fmt.Errorf("hosts %s not ready after %s (see %s)", strings.Join(missing, ", "), timeout, filepath.Join(c.Config.Dir, "logs"))
}

// removeFerryState deletes what StartFerry's daemons kept in dir (the
// server's etcd, the agents' VM directories, sockets, env), so the next Up
// in the same dir starts empty. Logs stay.
func removeFerryState(dir string, hosts int) error {
	removeUserCredential(dir)
	paths := []string{filepath.Join(dir, "env"), filepath.Join(dir, pkiDirName), filepath.Join(dir, adminCredName)}
	servers, _ := filepath.Glob(filepath.Join(dir, "server*"))
	paths = append(paths, servers...)
	for i := 1; i <= hosts; i++ {
		paths = append(paths, filepath.Join(dir, fmt.Sprintf("h%d", i)))
	}
	for _, p := range paths {
		if err := os.RemoveAll(p); err != nil {
			return fmt.Errorf("remove %s: %w", p, err)
		}
	}
	return nil
}

// HealthMarker is the file whose presence makes a dev host's agent report
// the host degraded (its --health-check).
func (c *Cluster) HealthMarker(host string) string {
	return filepath.Join(c.Config.Dir, host, "health-degraded")
}
