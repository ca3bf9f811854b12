// Package etcdtls decides when Ferry's etcd traffic must be encrypted and
// builds its TLS settings: the client's configuration for an external etcd
// (`--etcd-ca/--etcd-cert/--etcd-key`), and the certificates of an
// embedded member issued from the cluster CA. Traffic that stays on this
// machine (loopback addresses, unix sockets) may stay plaintext; traffic
// across the network is refused in plaintext unless the operator asked
// for it (`--etcd-insecure`).
package etcdtls

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"strings"
)

// Endpoint is one etcd URL as Ferry reads it.
type Endpoint struct {
	// Raw is the URL as given.
	Raw string
	// Scheme is http, https, unix, unixs, or "" (host:port without one).
	Scheme string
	// Host is the host without the port ("" for unix sockets).
	Host string
}

// ParseEndpoint reads an etcd URL: scheme://host:port, unix://path, or a
// bare host:port.
func ParseEndpoint(field, raw string) (Endpoint, error) {
	raw = strings.TrimSpace(raw)
	if !strings.Contains(raw, "://") {
		h, _, err := net.SplitHostPort(raw)
		if err != nil {
			return Endpoint{}, fmt.Errorf("%s: %q is not a URL (want https://host:port): %w", field, raw, err)
		}
		return Endpoint{Raw: raw, Host: h}, nil
	}
	u, err := url.Parse(raw)
	if err != nil {
		return Endpoint{}, fmt.Errorf("%s: %q is not a URL (want https://host:port): %w", field, raw, err)
	}
	switch u.Scheme {
	case "http", "https":
		if u.Hostname() == "" {
			return Endpoint{}, fmt.Errorf("%s: %q has no host (want %s://host:port)", field, raw, u.Scheme)
		}
		return Endpoint{Raw: raw, Scheme: u.Scheme, Host: u.Hostname()}, nil
	case "unix", "unixs":
		return Endpoint{Raw: raw, Scheme: u.Scheme}, nil
	}
	return Endpoint{}, fmt.Errorf("%s: %q: scheme %q is not http, https, unix or unixs", field, raw, u.Scheme)
}

// Local reports whether traffic to e stays on this machine: a unix
// socket, a loopback address or "localhost".
func (e Endpoint) Local() bool {
	if e.Scheme == "unix" || e.Scheme == "unixs" {
		return true
	}
	return LocalHost(e.Host)
}

// Secure reports whether e is dialled with TLS; a bare host:port is when
// the client has TLS settings (tlsGiven), as etcd's client does.
func (e Endpoint) Secure(tlsGiven bool) bool {
	switch e.Scheme {
	case "https", "unixs":
		return true
	case "":
		return tlsGiven
	}
	return false
}

// LocalHost reports whether host (no port) is this machine only.
func LocalHost(host string) bool {
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// Client is the TLS configuration of Ferry's client of an external etcd
// (`ferry server --etcd-endpoints`).
type Client struct {
	// CA is a PEM file of the CA(s) the etcd servers' certificates are
	// verified against; empty uses the system's roots.
	CA string
	// Cert and Key are a PEM client certificate and its key, for an etcd
	// that checks client certificates; both or neither.
	Cert, Key string
	// Insecure allows http:// endpoints on other machines (plaintext
	// across the network).
	Insecure bool
}

// tlsGiven reports whether any TLS file was given.
func (c Client) tlsGiven() bool { return c.CA != "" || c.Cert != "" || c.Key != "" }

// Check validates endpoints against c. It returns the endpoints whose
// traffic crosses the network in plaintext (allowed only with Insecure:
// log a warning about them) and an error naming the flag and the fix.
func (c Client) Check(endpoints []string) (plaintext []string, err error) {
	var errs []error
	if (c.Cert == "") != (c.Key == "") {
		errs = append(errs, errors.New("--etcd-cert and --etcd-key: give both (the client certificate and its key) or neither"))
	}
	var secure, plain []string
	for _, raw := range endpoints {
		e, err := ParseEndpoint("--etcd-endpoints", raw)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if e.Secure(c.tlsGiven()) {
			secure = append(secure, raw)
			continue
		}
		plain = append(plain, raw)
		if !e.Local() {
			plaintext = append(plaintext, raw)
		}
	}
	switch {
	case len(secure) > 0 && len(plain) > 0:
		errs = append(errs, fmt.Errorf("--etcd-endpoints: %s use TLS but %s do not: use https:// for every endpoint", strings.Join(secure, ","), strings.Join(plain, ",")))
	case len(plain) > 0 && c.tlsGiven():
		errs = append(errs, fmt.Errorf("--etcd-ca/--etcd-cert/--etcd-key given but --etcd-endpoints %s are plaintext: use https:// endpoints", strings.Join(plain, ",")))
	case len(plaintext) > 0 && !c.Insecure:
		errs = append(errs, fmt.Errorf("--etcd-endpoints: %s would carry the cluster's state across the network in plaintext: use https:// endpoints with --etcd-ca FILE (and --etcd-cert/--etcd-key if etcd checks client certificates), or pass --etcd-insecure to accept plaintext", strings.Join(plaintext, ",")))
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return plaintext, nil
}

// Config returns the client's TLS configuration for endpoints (already
// checked), or nil when they are plaintext.
func (c Client) Config(endpoints []string) (*tls.Config, error) {
	secure := false
	for _, raw := range endpoints {
		if e, err := ParseEndpoint("--etcd-endpoints", raw); err == nil && e.Secure(c.tlsGiven()) {
			secure = true
		}
	}
	if !secure {
		return nil, nil
	}
	cfg := &tls.Config{MinVersion: tls.VersionTLS12}
	if c.CA != "" {
		b, err := os.ReadFile(c.CA)
		if err != nil {
			return nil, fmt.Errorf("--etcd-ca: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(b) {
			return nil, fmt.Errorf("--etcd-ca: %s holds no PEM certificate", c.CA)
		}
		cfg.RootCAs = pool
	}
	if c.Cert != "" {
		kp, err := tls.LoadX509KeyPair(c.Cert, c.Key)
		if err != nil {
			return nil, fmt.Errorf("--etcd-cert/--etcd-key: %w", err)
		}
		cfg.Certificates = []tls.Certificate{kp}
	}
	return cfg, nil
}
