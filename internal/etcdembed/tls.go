package etcdembed

import (
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"strings"

	"github.com/ferryvm/ferry/internal/etcdtls"
	"github.com/ferryvm/ferry/internal/pki"
	"go.etcd.io/etcd/client/pkg/v3/transport"
	"go.etcd.io/etcd/server/v3/embed"
)

// memberTLS is what a member's URLs ask for.
type memberTLS struct {
	peer, client bool     // peer / client URLs are https
	plaintext    []string // http URLs on other machines (allowed by Insecure)
	hosts        []string // hosts of this member's own URLs
}

// urlList is one flag's URLs.
type urlList struct {
	field string
	urls  []string
}

// scan reads lists' URLs: whether they use TLS (all or none: a mix is
// refused), and which plaintext ones cross the network.
func scan(lists []urlList, t *memberTLS) (secure bool, err error) {
	var tlsURLs, plain []string
	var errs []error
	for _, l := range lists {
		for _, raw := range l.urls {
			if raw = strings.TrimSpace(raw); raw == "" {
				continue
			}
			e, err := etcdtls.ParseEndpoint(l.field, raw)
			if err != nil {
				errs = append(errs, err)
				continue
			}
			if e.Scheme != "http" && e.Scheme != "https" {
				errs = append(errs, fmt.Errorf("%s: %q: want http:// or https://", l.field, raw))
				continue
			}
			if e.Scheme == "https" {
				tlsURLs = append(tlsURLs, raw)
			} else {
				plain = append(plain, raw)
				if !e.Local() {
					t.plaintext = append(t.plaintext, l.field+" "+raw)
				}
			}
		}
	}
	if len(tlsURLs) > 0 && len(plain) > 0 {
		errs = append(errs, fmt.Errorf("%s: %s are https but %s are http: use https:// for all of them", lists[0].field, strings.Join(tlsURLs, ","), strings.Join(plain, ",")))
	}
	return len(tlsURLs) > 0, errors.Join(errs...)
}

// security checks which of m's traffic uses TLS and refuses plaintext
// across the network (without Insecure) and TLS without a CA, naming the
// flag and the fix.
func (m *Member) security() (memberTLS, error) {
	var t memberTLS
	var peers []string
	for _, e := range strings.Split(m.InitialCluster, ",") {
		if _, u, ok := strings.Cut(strings.TrimSpace(e), "="); ok {
			peers = append(peers, u)
		}
	}
	split := func(s string) []string { return strings.Split(s, ",") }
	var errs []error
	var err error
	t.peer, err = scan([]urlList{{"--initial-cluster", peers}, {"--listen-peer", split(m.ListenPeer)}, {"--advertise-peer", split(m.AdvertisePeer)}}, &t)
	errs = append(errs, err)
	t.client, err = scan([]urlList{{"--listen-client", split(m.ListenClient)}, {"--advertise-client", split(m.AdvertiseClient)}}, &t)
	errs = append(errs, err)
	if len(t.plaintext) > 0 && !m.Insecure {
		errs = append(errs, fmt.Errorf("embedded etcd: %s would carry the cluster's state across the network in plaintext: use https:// URLs (the member's certificate is issued from --ca DIR), a loopback --listen-client, or pass --etcd-insecure to accept plaintext", strings.Join(t.plaintext, ", ")))
	}
	if (t.peer || t.client) && m.CA == nil {
		errs = append(errs, errors.New("embedded etcd: https:// member URLs need the cluster CA before etcd starts: pass --ca DIR (the same CA directory, or a copy, on every replica)"))
	}
	if t.client {
		for _, raw := range split(m.AdvertiseClient) {
			if e, err := etcdtls.ParseEndpoint("", strings.TrimSpace(raw)); err == nil && net.ParseIP(e.Host) != nil && net.ParseIP(e.Host).IsUnspecified() {
				errs = append(errs, fmt.Errorf("--advertise-client: %s is not an address a TLS client can verify: give --advertise-client https://<this machine's address>:port", raw))
			}
		}
	}
	for _, s := range []string{m.ListenPeer, m.AdvertisePeer, m.ListenClient, m.AdvertiseClient} {
		for _, raw := range split(s) {
			if e, err := etcdtls.ParseEndpoint("", strings.TrimSpace(raw)); err == nil {
				t.hosts = append(t.hosts, e.Host)
			}
		}
	}
	return t, errors.Join(errs...)
}

// applyTLS issues the member's certificate and sets cfg's peer and client
// TLS: certificates verified against the cluster CA (ClientCertAuth) and
// required to name pki.EtcdName. It returns the TLS configuration of the
// member's own client when its client URLs are https.
func (m *Member) applyTLS(cfg *embed.Config, t memberTLS) (*tls.Config, error) {
	if !t.peer && !t.client {
		return nil, nil
	}
	f, err := etcdtls.IssueMember(m.CA, filepath.Join(m.Dir, "tls"), m.Name, t.hosts)
	if err != nil {
		return nil, err
	}
	info := transport.TLSInfo{
		CertFile:         f.Cert,
		KeyFile:          f.Key,
		TrustedCAFile:    f.CA,
		ClientCertAuth:   true,
		AllowedHostnames: []string{pki.EtcdName},
		MinVersion:       tls.VersionTLS13,
	}
	if t.peer {
		cfg.PeerTLSInfo = info
	}
	if !t.client {
		return nil, nil
	}
	cfg.ClientTLSInfo = info
	return f.ClientConfig()
}
