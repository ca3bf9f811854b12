package devcluster

import (
	"context"
	"errors"
	"fmt"
	"golang.org/x/sys/unix"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/ferryvm/ferry/internal/netdev"
	"github.com/ferryvm/ferry/internal/netnsutil"
	"github.com/ferryvm/ferry/internal/revert"
)

// Defaults and fixed names of the topology.
const (
	DefaultPrefix = "ferry"
	DefaultHosts  = 2
	// MaxHosts bounds Hosts: host i gets 198.18.0.i.
	MaxHosts = 200

	SegmentBridge = "seg0"          // bridge in P-seg
	HostBridge    = "br0"           // bridge in each host namespace
	HostUplink    = "uplink"        // veth end in each host namespace, on br0
	ClientLink    = "eth0"          // veth end in P-client
	ClientIP      = "198.18.0.250"  // address of ClientLink
	PrefixLen     = 15              // every address is on 198.18.0.0/15
	Subnet        = "198.18.0.0/15" // the only route in every namespace
)

var prefixRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_-]{0,31}$`)

// Config says which cluster to build or tear down.
type Config struct {
	// Prefix starts every namespace name: P-seg, P-h1..., P-client.
	// Default DefaultPrefix. Use a unique one for parallel runs.
	Prefix string
	// Hosts is the number of host namespaces, 1..MaxHosts. Default
	// DefaultHosts. Down ignores it.
	Hosts int
	// Dir holds cluster.json, its lock and default process logs.
	// Default DefaultDir(Prefix).
	Dir string
}

// DefaultDir is the state directory used when Config.Dir is empty.
func DefaultDir(prefix string) string { return filepath.Join("/run/ferry-dev", prefix) }

func (c Config) withDefaults() (Config, error) {
	if c.Prefix == "" {
		c.Prefix = DefaultPrefix
	}
	if !prefixRE.MatchString(c.Prefix) {
		return c, fmt.Errorf("invalid dev cluster prefix %q: use 1-32 letters, digits, '-' or '_'", c.Prefix)
	}
	if c.Hosts == 0 {
		c.Hosts = DefaultHosts
	}
	if c.Hosts < 1 || c.Hosts > MaxHosts {
		return c, fmt.Errorf("invalid dev cluster host count %d: must be 1-%d", c.Hosts, MaxHosts)
	}
	if c.Dir == "" {
		c.Dir = DefaultDir(c.Prefix)
	}
	return c, nil
}

// Host is one simulated host: a namespace whose bridge carries its address.
type Host struct {
	Name   string // "h1"
	Netns  string // "P-h1"
	IP     string // "198.18.0.1"
	Bridge string // HostBridge
}

// Cluster is a running dev cluster.
type Cluster struct {
	Config   Config
	Segment  string // "P-seg"
	Client   string // "P-client"
	ClientIP string // ClientIP
	Hosts    []Host

	mu sync.Mutex // serialises state updates within this process
}

func newCluster(cfg Config) *Cluster {
	c := &Cluster{
		Config:   cfg,
		Segment:  cfg.Prefix + "-seg",
		Client:   cfg.Prefix + "-client",
		ClientIP: ClientIP,
	}
	for i := 1; i <= cfg.Hosts; i++ {
		name := "h" + strconv.Itoa(i)
		c.Hosts = append(c.Hosts, Host{
			Name:   name,
			Netns:  cfg.Prefix + "-" + name,
			IP:     "198.18.0." + strconv.Itoa(i),
			Bridge: HostBridge,
		})
	}
	return c
}

// Namespaces returns every namespace of the cluster in creation order:
// segment, hosts, client.
func (c *Cluster) Namespaces() []string {
	names := []string{c.Segment}
	for _, h := range c.Hosts {
		names = append(names, h.Netns)
	}
	return append(names, c.Client)
}

// Host returns the host called name ("h1") or whose namespace is name.
func (c *Cluster) Host(name string) (Host, bool) {
	for _, h := range c.Hosts {
		if h.Name == name || h.Netns == name {
			return h, true
		}
	}
	return Host{}, false
}

// String describes the cluster for people, one namespace a line.
func (c *Cluster) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "dev cluster %q (state %s)\n", c.Config.Prefix, c.StatePath())
	fmt.Fprintf(&b, "  %-20s bridge %s (segment)\n", c.Segment, SegmentBridge)
	for _, h := range c.Hosts {
		fmt.Fprintf(&b, "  %-20s %s on %s (host %s)\n", h.Netns, h.IP, h.Bridge, h.Name)
	}
	fmt.Fprintf(&b, "  %-20s %s on %s (client)\n", c.Client, c.ClientIP, ClientLink)
	return b.String()
}

// StatePath returns the path of the cluster's state file.
func (c *Cluster) StatePath() string { return statePath(c.Config.Dir) }

// ownNamespaceRE matches the names Up gives namespaces for prefix.
func ownNamespaceRE(prefix string) *regexp.Regexp {
	return regexp.MustCompile(`^` + regexp.QuoteMeta(prefix) + `-(seg|client|h[1-9][0-9]*)$`)
}

func checkPrerequisites() error {
	if os.Geteuid() != 0 {
		return errors.New("dev cluster needs root to create network namespaces: run it with sudo")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		return fmt.Errorf("dev cluster needs iproute2's ip: %w (apt-get install iproute2)", err)
	}
	return nil
}

// upHook, when set by tests, runs after each namespace is made; an error
// makes Up fail there.
var upHook func(ns string) error

// Up creates the cluster described by cfg. It fails if the state file
// names a cluster that is still up or if any of its namespaces exists. On
// failure it removes everything it made.
func Up(ctx context.Context, cfg Config) (_ *Cluster, err error) {
	cfg, err = cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			err = fmt.Errorf("dev cluster %q up: %w", cfg.Prefix, err)
		}
	}()
	if err := checkPrerequisites(); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(cfg.Dir, 0o755); err != nil {
		return nil, fmt.Errorf("create dev cluster directory: %w", err)
	}
	// The agents' QEMUs run as an unprivileged user (--qemu-user) that
	// must reach its VM directories below: search, not list.
	if fi, err := os.Stat(cfg.Dir); err == nil && fi.Mode().Perm()&0o011 != 0o011 {
		if err := os.Chmod(cfg.Dir, fi.Mode().Perm()|0o011); err != nil {
			return nil, fmt.Errorf("dev cluster directory: let QEMU's user search it: %w", err)
		}
	}
	unlock, err := lockDir(cfg.Dir)
	if err != nil {
		return nil, err
	}
	defer unlock()

	c := newCluster(cfg)
	downHint := fmt.Sprintf("tear it down first (ferry dev cluster down --prefix %s)", cfg.Prefix)
	if old, err := readState(cfg.Dir); err == nil {
		for _, ns := range old.Namespaces {
			if netnsutil.Exists(ns) {
				return nil, fmt.Errorf("dev cluster %q is already up (namespace %s, state %s): %s", old.Prefix, ns, statePath(cfg.Dir), downHint)
			}
		}
	} else if !errors.Is(err, fs.ErrNotExist) {
		return nil, err
	}
	existing, err := netnsutil.List()
	if err != nil {
		return nil, err
	}
	own := ownNamespaceRE(cfg.Prefix)
	for _, ns := range existing {
		if own.MatchString(ns) {
			return nil, fmt.Errorf("network namespace %s already exists: %s", ns, downHint)
		}
	}

	// Record the plan before making anything, so that Down can clean up
	// after a crash half-way.
	st := &State{Version: stateVersion, Prefix: cfg.Prefix, Hosts: cfg.Hosts, Namespaces: c.Namespaces(), CreatedAt: time.Now().UTC()}
	if err := writeState(cfg.Dir, st); err != nil {
		return nil, err
	}
	r := revert.New()
	defer r.Fail()
	r.Add(func() { _ = removeState(cfg.Dir) })

	addNS := func(name string) error {
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("dev cluster up interrupted: %w", err)
		}
		if err := netnsutil.Add(name); err != nil {
			return err
		}
		r.Add(func() { _ = netnsutil.Delete(name) })
		if err := netnsutil.Do(name, prepareNamespace); err != nil {
			return fmt.Errorf("prepare namespace %s: %w", name, err)
		}
		if upHook != nil {
			return upHook(name)
		}
		return nil
	}

	if err := addNS(c.Segment); err != nil {
		return nil, err
	}
	if err := netnsutil.Do(c.Segment, func() error { return netdev.CreateBridge(SegmentBridge) }); err != nil {
		return nil, fmt.Errorf("create segment bridge in %s: %w", c.Segment, err)
	}
	for _, h := range c.Hosts {
		if err := addNS(h.Netns); err != nil {
			return nil, err
		}
		err := netnsutil.Do(h.Netns, func() error {
			if err := netdev.CreateBridge(HostBridge); err != nil {
				return err
			}
			return addAddr(HostBridge, h.IP)
		})
		if err != nil {
			return nil, fmt.Errorf("set up bridge in %s: %w", h.Netns, err)
		}
		if err := c.plug(h.Name, h.Netns, HostUplink, HostBridge); err != nil {
			return nil, err
		}
	}
	if err := addNS(c.Client); err != nil {
		return nil, err
	}
	if err := c.plug("client", c.Client, ClientLink, ""); err != nil {
		return nil, err
	}
	if err := netnsutil.Do(c.Client, func() error { return addAddr(ClientLink, ClientIP) }); err != nil {
		return nil, fmt.Errorf("address client in %s: %w", c.Client, err)
	}
	if err := c.waitReady(ctx); err != nil {
		return nil, err
	}
	r.Success()
	return c, nil
}

// ReadyTimeout bounds how long Up waits for every link to be operational.
const ReadyTimeout = 5 * time.Second

// waitReady waits until every veth end and bridge is operationally up.
// The kernel applies carrier changes in its linkwatch worker, which
// batches non-urgent events for up to a second; until it runs, a link
// has carrier but no queueing discipline and drops what is sent, and a
// bridge port stays "disabled". Without this wait the first packets
// (ARP, SYN) after Up are lost and connections stall for a TCP
// retransmission timeout.
func (c *Cluster) waitReady(ctx context.Context) error {
	links := map[string][]string{c.Segment: {SegmentBridge, "client"}, c.Client: {ClientLink}}
	for _, h := range c.Hosts {
		links[c.Segment] = append(links[c.Segment], h.Name)
		links[h.Netns] = []string{HostBridge, HostUplink}
	}
	deadline := time.Now().Add(ReadyTimeout)
	for _, ns := range c.Namespaces() {
		for _, name := range links[ns] {
			for {
				var state netlink.LinkOperState
				var lowerUp bool
				err := netnsutil.Do(ns, func() error {
					link, err := netlink.LinkByName(name)
					if err == nil {
						state = link.Attrs().OperState
						lowerUp = link.Attrs().RawFlags&unix.IFF_LOWER_UP != 0
					}
					return err
				})
				if err != nil {
					return fmt.Errorf("wait for %s in %s: %w", name, ns, err)
				}
				// A bridge whose MAC was set reports "unknown" with carrier.
				if state == netlink.OperUp || (state == netlink.OperUnknown && lowerUp) {
					break
				}
				if time.Now().After(deadline) {
					return fmt.Errorf("link %s in %s is still %s after %v: check `ip -n %s link`", name, ns, state, ReadyTimeout, ns)
				}
				select {
				case <-ctx.Done():
					return fmt.Errorf("dev cluster up interrupted while waiting for links: %w", ctx.Err())
				case <-time.After(10 * time.Millisecond):
				}
			}
		}
	}
	return nil
}

// prepareNamespace sets lo up and the sysctls that keep the segment a
// plain L2 network. IPv4 settings of a new namespace are copied from the
// root namespace, so they are set explicitly; "default" applies to links
// created afterwards.
func prepareNamespace() error {
	lo, err := netlink.LinkByName("lo")
	if err != nil {
		return fmt.Errorf("find lo: %w", err)
	}
	if err := netlink.LinkSetUp(lo); err != nil {
		return fmt.Errorf("set lo up: %w", err)
	}
	settings := []struct {
		path     string
		optional bool // absent unless br_netfilter is loaded
	}{
		{"net/ipv4/ip_forward", false},
		{"net/ipv4/conf/all/rp_filter", false},
		{"net/ipv4/conf/default/rp_filter", false},
		{"net/ipv4/conf/lo/rp_filter", false},
		{"net/bridge/bridge-nf-call-iptables", true},
		{"net/bridge/bridge-nf-call-ip6tables", true},
		{"net/bridge/bridge-nf-call-arptables", true},
	}
	for _, s := range settings {
		// /proc/sys/net resolves against the calling thread's namespace.
		err := os.WriteFile("/proc/sys/"+s.path, []byte("0\n"), 0o644)
		if err != nil && !(s.optional && errors.Is(err, fs.ErrNotExist)) {
			return fmt.Errorf("set sysctl %s=0: %w", s.path, err)
		}
	}
	return nil
}

// plug creates a veth pair: segName in the segment namespace, enslaved to
// SegmentBridge, and inner in namespace ns, enslaved to bridge (if not
// empty). Both ends are set up.
func (c *Cluster) plug(segName, ns, inner, bridge string) error {
	target, err := netns.GetFromName(ns)
	if err != nil {
		return fmt.Errorf("open namespace %s: %w", ns, err)
	}
	defer target.Close()
	err = netnsutil.Do(c.Segment, func() error {
		veth := &netlink.Veth{
			LinkAttrs:     netlink.LinkAttrs{Name: segName},
			PeerName:      inner,
			PeerNamespace: netlink.NsFd(int(target)),
		}
		if err := netlink.LinkAdd(veth); err != nil {
			return fmt.Errorf("create veth %s <-> %s/%s: %w", segName, ns, inner, err)
		}
		return enslaveUp(segName, SegmentBridge)
	})
	if err != nil {
		return fmt.Errorf("plug %s into the segment: %w", ns, err)
	}
	if err := netnsutil.Do(ns, func() error { return enslaveUp(inner, bridge) }); err != nil {
		return fmt.Errorf("plug %s into the segment: %w", ns, err)
	}
	return nil
}

// enslaveUp attaches link name to bridge (if not empty) and sets it up.
func enslaveUp(name, bridge string) error {
	link, err := netlink.LinkByName(name)
	if err != nil {
		return fmt.Errorf("find %s: %w", name, err)
	}
	if bridge != "" {
		br, err := netlink.LinkByName(bridge)
		if err != nil {
			return fmt.Errorf("find bridge %s: %w", bridge, err)
		}
		if err := netlink.LinkSetMaster(link, br); err != nil {
			return fmt.Errorf("attach %s to %s: %w", name, bridge, err)
		}
	}
	if err := netlink.LinkSetUp(link); err != nil {
		return fmt.Errorf("set %s up: %w", name, err)
	}
	return nil
}

// addAddr assigns ip/PrefixLen to link name; the kernel adds the connected
// route.
func addAddr(name, ip string) error {
	link, err := netlink.LinkByName(name)
	if err != nil {
		return fmt.Errorf("find %s: %w", name, err)
	}
	addr, err := netlink.ParseAddr(ip + "/" + strconv.Itoa(PrefixLen))
	if err != nil {
		return fmt.Errorf("parse address %s: %w", ip, err)
	}
	if err := netlink.AddrAdd(link, addr); err != nil {
		return fmt.Errorf("add %s to %s: %w", addr, name, err)
	}
	return nil
}

// Load opens the cluster recorded in dir (DefaultDir(prefix) if you used
// the default), for example to start more processes from another command.
// It fails with an error wrapping fs.ErrNotExist if there is no state file,
// and if any of the recorded namespaces is missing.
func Load(dir string) (*Cluster, error) {
	st, err := readState(dir)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("no dev cluster recorded in %s: %w (run ferry dev cluster up)", dir, err)
		}
		return nil, err
	}
	cfg, err := Config{Prefix: st.Prefix, Hosts: st.Hosts, Dir: dir}.withDefaults()
	if err != nil {
		return nil, fmt.Errorf("dev cluster state %s: %w", statePath(dir), err)
	}
	c := newCluster(cfg)
	if !slices.Equal(c.Namespaces(), st.Namespaces) {
		return nil, fmt.Errorf("dev cluster state %s lists namespaces %v, want %v: tear it down and bring it up again", statePath(dir), st.Namespaces, c.Namespaces())
	}
	for _, ns := range st.Namespaces {
		if !netnsutil.Exists(ns) {
			return nil, fmt.Errorf("dev cluster %q is not fully up: namespace %s is missing (run ferry dev cluster down, then up)", st.Prefix, ns)
		}
	}
	return c, nil
}

// Processes returns the processes recorded in the state file, dead or
// alive.
func (c *Cluster) Processes() ([]Process, error) {
	st, err := readState(c.Config.Dir)
	if err != nil {
		return nil, err
	}
	return st.Processes, nil
}

// Down tears the cluster down; see the package function Down.
func (c *Cluster) Down(ctx context.Context) error {
	return Down(ctx, Config{Prefix: c.Config.Prefix, Dir: c.Config.Dir})
}
