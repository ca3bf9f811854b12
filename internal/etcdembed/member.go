package etcdembed

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/ferryvm/ferry/internal/pki"
	"go.etcd.io/etcd/server/v3/embed"
)

// Member describes this process's member of a multi-member etcd cluster
// (`ferry server --etcd-name --initial-cluster ...`).
type Member struct {
	// Name is the member's name in InitialCluster.
	Name string
	// Dir holds the member's data and etcd.log.
	Dir string
	// InitialCluster lists every member as name=peerURL, comma-separated.
	// It is read only when the member starts with an empty data dir.
	InitialCluster string
	// InitialClusterState is "new" (default) or "existing" (joining a
	// running cluster after `etcdctl member add`).
	InitialClusterState string
	// ListenPeer / AdvertisePeer are the peer URLs (AdvertisePeer defaults
	// to ListenPeer and must match this member's InitialCluster entry).
	ListenPeer, AdvertisePeer string
	// ListenClient / AdvertiseClient are the client URLs (AdvertiseClient
	// defaults to ListenClient).
	ListenClient, AdvertiseClient string
	// ReadyTimeout bounds the wait for the member to join a quorum
	// (default 60s).
	ReadyTimeout time.Duration
	// CA is the cluster CA (`--ca DIR`), needed when the member's URLs
	// are https://: the member's certificate is issued from it and peers
	// and clients must present one of its etcd member certificates.
	CA *pki.CA
	// Insecure allows http:// URLs on other machines (plaintext across
	// the network, `--etcd-insecure`).
	Insecure bool
}

func parseURLs(field, s string) ([]url.URL, error) {
	var out []url.URL
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p == "" {
			continue
		}
		u, err := url.Parse(p)
		if err != nil || u.Scheme == "" || u.Host == "" {
			return nil, fmt.Errorf("%s: %q is not a URL (want http://host:port)", field, p)
		}
		out = append(out, *u)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("%s: required (http://host:port)", field)
	}
	return out, nil
}

// validate checks m and fills defaults.
func (m *Member) validate() error {
	var errs []error
	if m.Name == "" {
		errs = append(errs, errors.New("--etcd-name: required with --initial-cluster (this member's name in it)"))
	}
	if m.AdvertisePeer == "" {
		m.AdvertisePeer = m.ListenPeer
	}
	if m.AdvertiseClient == "" {
		m.AdvertiseClient = m.ListenClient
	}
	switch m.InitialClusterState {
	case "":
		m.InitialClusterState = embed.ClusterStateFlagNew
	case embed.ClusterStateFlagNew, embed.ClusterStateFlagExisting:
	default:
		errs = append(errs, fmt.Errorf("--initial-cluster-state: must be new or existing, got %q", m.InitialClusterState))
	}
	found := false
	for _, e := range strings.Split(m.InitialCluster, ",") {
		name, u, ok := strings.Cut(strings.TrimSpace(e), "=")
		if !ok || name == "" || u == "" {
			errs = append(errs, fmt.Errorf("--initial-cluster: entry %q is not name=http://host:port", e))
			continue
		}
		if name == m.Name {
			found = true
			if m.AdvertisePeer != "" && u != m.AdvertisePeer {
				errs = append(errs, fmt.Errorf("--initial-cluster: %s=%s but --advertise-peer is %s: they must match", name, u, m.AdvertisePeer))
			}
		}
	}
	if !found && m.Name != "" {
		errs = append(errs, fmt.Errorf("--initial-cluster: no entry for --etcd-name %q", m.Name))
	}
	if m.Dir == "" {
		errs = append(errs, errors.New("--data-dir: required for the embedded etcd member"))
	}
	return errors.Join(errs...)
}

// StartMember starts (or restarts) this process's member of a multi-member
// cluster and waits until it has joined a quorum.
func StartMember(ctx context.Context, m Member) (*Etcd, error) {
	if err := m.validate(); err != nil {
		return nil, err
	}
	sec, err := m.security()
	if err != nil {
		return nil, err
	}
	cfg := embed.NewConfig()
	cfg.Name = m.Name
	cfg.Dir = filepath.Join(m.Dir, "data")
	cfg.LogLevel = "error"
	if err := os.MkdirAll(m.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("embedded etcd: create %s: %w", m.Dir, err)
	}
	cfg.LogOutputs = []string{filepath.Join(m.Dir, "etcd.log")}
	urls := []struct {
		field string
		val   string
		dst   *[]url.URL
	}{
		{"--listen-peer", m.ListenPeer, &cfg.ListenPeerUrls},
		{"--advertise-peer", m.AdvertisePeer, &cfg.AdvertisePeerUrls},
		{"--listen-client", m.ListenClient, &cfg.ListenClientUrls},
		{"--advertise-client", m.AdvertiseClient, &cfg.AdvertiseClientUrls},
	}
	for _, u := range urls {
		if *u.dst, err = parseURLs(u.field, u.val); err != nil {
			return nil, err
		}
	}
	cfg.InitialCluster = m.InitialCluster
	cfg.ClusterState = m.InitialClusterState
	cfg.InitialClusterToken = "ferry"
	clientTLS, err := m.applyTLS(cfg, sec)
	if err != nil {
		return nil, err
	}
	e, err := embed.StartEtcd(cfg)
	if err != nil {
		return nil, fmt.Errorf("embedded etcd member %s: start in %s (log %s): %w", m.Name, m.Dir, cfg.LogOutputs[0], err)
	}
	timeout := m.ReadyTimeout
	if timeout == 0 {
		timeout = 60 * time.Second
	}
	select {
	case <-e.Server.ReadyNotify():
	case <-time.After(timeout):
		e.Close()
		return nil, fmt.Errorf("embedded etcd member %s: no quorum after %s (are the other members of --initial-cluster running? log %s)", m.Name, timeout, cfg.LogOutputs[0])
	case <-ctx.Done():
		e.Close()
		return nil, fmt.Errorf("embedded etcd member %s: %w", m.Name, ctx.Err())
	}
	return &Etcd{e: e, Endpoint: cfg.AdvertiseClientUrls[0].String(), ClientTLS: clientTLS, Plaintext: sec.plaintext}, nil
}
