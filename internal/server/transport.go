package server

import (
	"encoding/json"
	"fmt"
	"slices"

	ferryv1 "github.com/ferryvm/ferry/gen/ferry/v1"
	"github.com/ferryvm/ferry/internal/pki"
	"github.com/ferryvm/ferry/internal/policy"
	"github.com/ferryvm/ferry/internal/store"
)

// checkStreamTransport refuses, before any byte is sent, a migration on
// TLS (not insecureTransport) between hosts whose agent does not announce
// pki.FeatureTLSStreams (an older agent, which would send or receive in
// plaintext). A cold migration without local disks sends no stream.
func checkStreamTransport(opt *ferryv1.MigrationOptions, src, dst *ferryv1.Host, localDisks int) error {
	if opt.GetInsecureTransport() || (opt.GetStrategy() == "cold" && localDisks == 0) {
		return nil
	}
	for _, h := range []struct {
		role string
		host *ferryv1.Host
	}{{"source", src}, {"destination", dst}} {
		if !slices.Contains(h.host.GetAgentFeatures(), pki.FeatureTLSStreams) {
			v := h.host.GetFerryVersion()
			if v == "" {
				v = "unknown"
			}
			return precondition("%s host %s: its agent (version %s) does not send migration streams on TLS: upgrade it, or migrate with insecureTransport (ferry migrate --insecure-transport, or ferry policy set insecureTransport=true)",
				h.role, h.host.GetName(), v)
		}
	}
	return checkStreamCerts(src, dst)
}

// checkStreamCerts refuses a TLS migration between a host whose QEMU uses
// stream certificates (pki.FeatureQEMUStreamCert) and one whose QEMU
// still uses its agent's certificate: the destination's QEMU admits only
// the kind of certificate its own agent version expects, so the handshake
// would fail after the destination was prepared.
func checkStreamCerts(src, dst *ferryv1.Host) error {
	s := slices.Contains(src.GetAgentFeatures(), pki.FeatureQEMUStreamCert)
	d := slices.Contains(dst.GetAgentFeatures(), pki.FeatureQEMUStreamCert)
	if s == d {
		return nil
	}
	old, oldRole := dst, "destination"
	if d {
		old, oldRole = src, "source"
	}
	v := old.GetFerryVersion()
	if v == "" {
		v = "unknown"
	}
	return precondition("%s host %s: its agent (version %s) gives QEMU its own agent certificate for TLS streams, the other host's QEMU uses a stream certificate (%s): the two cannot authenticate each other; upgrade %s's agent first, or migrate with insecureTransport",
		oldRole, old.GetName(), v, pki.FeatureQEMUStreamCert, old.GetName())
}

// transportPolicyEvent is the event of a change of the cluster policy's
// insecureTransport (states tls and plain); other policy changes make none.
func transportPolicyEvent(e *ferryv1.Event, c store.StateChange) (*ferryv1.Event, bool, error) {
	transport := func(raw []byte) (string, error) {
		var set policy.Set
		if raw != nil {
			if err := json.Unmarshal(raw, &set); err != nil {
				return "", fmt.Errorf("event of the cluster policy: decode: %w", err)
			}
		}
		if set.Cluster.InsecureTransport {
			return "plain", nil
		}
		return "tls", nil
	}
	from, err := transport(c.Prev)
	if err != nil {
		return nil, false, err
	}
	to, err := transport(c.Cur)
	if err != nil {
		return nil, false, err
	}
	if from == to {
		return nil, false, nil
	}
	e.FromState, e.ToState = from, to
	e.Message = "cluster policy insecureTransport: migrations' streams now on TLS"
	if to == "plain" {
		e.Message = "cluster policy insecureTransport: true: every migration's streams now cross the network in plaintext"
	}
	return e, true, nil
}

// checkPostcopyHost keeps post-copy away from a destination whose QEMU
// user cannot open userfaultfd (its agent reports why, with the fix, in
// qemu.postcopy_unavailable): strategies postcopy and hybrid are refused
// naming the reason; auto plans without post-copy.
func checkPostcopyHost(opt *ferryv1.MigrationOptions, dst *ferryv1.Host) error {
	why := dst.GetQemu().GetPostcopyUnavailable()
	if why == "" {
		return nil
	}
	switch opt.GetStrategy() {
	case "postcopy", "hybrid":
		return precondition("destination host %s cannot take a post-copy migration (strategy %s): %s", dst.GetName(), opt.GetStrategy(), why)
	case "auto":
		opt.NoPostcopy = true
	}
	return nil
}
