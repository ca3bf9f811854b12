package server

import (
	"slices"

	ferryv1 "github.com/ferryvm/ferry/gen/ferry/v1"
	"github.com/ferryvm/ferry/internal/pki"
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
	return nil
}
