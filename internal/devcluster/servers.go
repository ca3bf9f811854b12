package devcluster

import (
	"fmt"
	"math/rand/v2"
	"net"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
)

// MaxServers bounds FerryOptions.Servers.
const MaxServers = 7

// serverSock is the API socket of replica i (1-based): server.sock for the
// first (where a single server listens), serverI.sock for the others.
func (c *Cluster) serverSock(i int) string {
	if i == 1 {
		return c.ServerURL()
	}
	return "unix://" + filepath.Join(c.Config.Dir, "server"+strconv.Itoa(i)+".sock")
}

// serverDir is replica i's data directory.
func (c *Cluster) serverDir(i int) string {
	if i == 1 {
		return filepath.Join(c.Config.Dir, "server")
	}
	return filepath.Join(c.Config.Dir, "server"+strconv.Itoa(i))
}

// ServerName is replica i's name (s1, s2, ...) in a cluster with several
// servers.
func ServerName(i int) string { return "s" + strconv.Itoa(i) }

// ServerURLs lists the API address of every server replica StartFerry
// started, in order (the first is ServerURL).
func (c *Cluster) ServerURLs() []string {
	ps, err := c.Processes()
	var urls []string
	if err == nil {
		for _, p := range ps {
			if len(p.Argv) < 2 || p.Argv[1] != "server" {
				continue
			}
			if i := slices.Index(p.Argv, "--listen"); i >= 0 && i+1 < len(p.Argv) && !slices.Contains(urls, p.Argv[i+1]) {
				urls = append(urls, p.Argv[i+1])
			}
		}
	}
	if len(urls) == 0 {
		return []string{c.ServerURL()}
	}
	return urls
}

// ServerLog is the log of replica i.
func (c *Cluster) ServerLog(i int) string {
	if i == 1 {
		return filepath.Join(c.Config.Dir, "logs", "server.log")
	}
	return filepath.Join(c.Config.Dir, "logs", "server"+strconv.Itoa(i)+".log")
}

// startServers starts opt.Servers replicas in the root namespace: all on
// opt.EtcdEndpoints when set; else one with an embedded single-member etcd,
// or several whose embedded members form one etcd cluster on loopback
// ports. It returns their API addresses.
func (c *Cluster) startServers(opt FerryOptions) ([]string, error) {
	n := opt.Servers
	if n == 0 {
		n = 1
	}
	if n < 1 || n > MaxServers {
		return nil, fmt.Errorf("--servers: must be 1-%d, got %d", MaxServers, n)
	}
	extra := []string{"--ca", c.CADir()}
	if opt.LeaderTTL > 0 {
		extra = append(extra, "--leader-ttl", opt.LeaderTTL.String())
	}
	if opt.EtcdEndpoints != "" {
		var urls []string
		for i := 1; i <= n; i++ {
			url := c.serverSock(i)
			argv := append([]string{opt.Binary, "server", "--listen", url, "--data-dir", c.serverDir(i),
				"--name", ServerName(i), "--etcd-endpoints", opt.EtcdEndpoints}, extra...)
			if _, err := c.StartProcess("", c.ServerLog(i), argv); err != nil {
				return nil, err
			}
			urls = append(urls, url)
		}
		return urls, nil
	}
	if n == 1 {
		url := c.serverSock(1)
		argv := append([]string{opt.Binary, "server", "--listen", url, "--data-dir", c.serverDir(1)}, extra...)
		if _, err := c.StartProcess("", c.ServerLog(1), argv); err != nil {
			return nil, err
		}
		return []string{url}, nil
	}
	peers, clients := make([]string, n), make([]string, n)
	var initial []string
	for i := range n {
		pp, err := freeLoopbackPort()
		if err != nil {
			return nil, err
		}
		cp, err := freeLoopbackPort()
		if err != nil {
			return nil, err
		}
		peers[i] = fmt.Sprintf("http://127.0.0.1:%d", pp)
		clients[i] = fmt.Sprintf("http://127.0.0.1:%d", cp)
		initial = append(initial, ServerName(i+1)+"="+peers[i])
	}
	var urls []string
	for i := range n {
		url := c.serverSock(i + 1)
		argv := append([]string{opt.Binary, "server", "--listen", url, "--data-dir", c.serverDir(i + 1),
			"--name", ServerName(i + 1), "--etcd-name", ServerName(i + 1),
			"--initial-cluster", strings.Join(initial, ","),
			"--listen-peer", peers[i], "--listen-client", clients[i]}, extra...)
		if _, err := c.StartProcess("", c.ServerLog(i+1), argv); err != nil {
			return nil, err
		}
		urls = append(urls, url)
	}
	return urls, nil
}

// Ports for the etcd members are picked below Linux's default ephemeral
// range (32768-60999): a port the kernel handed out as ephemeral could be
// taken by an outgoing connection before the member binds it.
const (
	portLow  = 20000
	portHigh = 32000
)

var (
	portsMu   sync.Mutex
	portsUsed = map[int]bool{}
)

func freeLoopbackPort() (int, error) {
	portsMu.Lock()
	defer portsMu.Unlock()
	for range 200 {
		p := portLow + rand.IntN(portHigh-portLow)
		if portsUsed[p] {
			continue
		}
		l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", p))
		if err != nil {
			continue
		}
		l.Close()
		portsUsed[p] = true
		return p, nil
	}
	return 0, fmt.Errorf("pick a loopback port for etcd: no free port in %d-%d after 200 tries", portLow, portHigh)
}
