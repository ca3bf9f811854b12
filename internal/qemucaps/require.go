package qemucaps

import (
	"errors"
	"fmt"
)

// Feature is a QEMU migration feature Ferry may ask for.
type Feature string

// Features Require knows.
const (
	// PostcopyPreempt: faulted pages overtake the background stream on a
	// channel of their own (capability postcopy-preempt).
	PostcopyPreempt Feature = "postcopy-preempt"
	// MultifdZeroPageDetection: multifd threads detect zero pages
	// (parameter zero-page-detection=multifd).
	MultifdZeroPageDetection Feature = "multifd-zero-page-detection"
	// AvailSwitchoverBandwidth: the bandwidth QEMU assumes when it sizes
	// the final round (parameter avail-switchover-bandwidth).
	AvailSwitchoverBandwidth Feature = "avail-switchover-bandwidth"
	// DirtyLimit: per-vCPU dirty-page rate limiting instead of auto-converge
	// throttling (capability dirty-limit, parameter vcpu-dirty-limit).
	DirtyLimit Feature = "dirty-limit"
	// MultifdZstd: multifd channels compress with zstd (parameter
	// multifd-zstd-level, multifd-compression=zstd).
	MultifdZstd Feature = "multifd-zstd"
)

// requirement is what a feature needs from a binary.
type requirement struct {
	capability string // migration capability, if any
	parameter  string // migrate-set-parameters member, if any
	// since is the first QEMU release Ferry uses the feature with. It can
	// be later than the release that introduced the capability when the
	// early implementation is not used.
	major, minor int
	note         string
}

// requirements is the feature table; versions are those of QEMU's QAPI
// documentation ("since") unless a note says otherwise.
var requirements = map[Feature]requirement{
	PostcopyPreempt: {capability: "postcopy-preempt", major: 8, minor: 0,
		note: "the capability exists since 7.1; Ferry uses it only with the preempt channel set up at the start of the migration (8.0)"},
	MultifdZeroPageDetection: {parameter: "zero-page-detection", major: 9, minor: 0},
	AvailSwitchoverBandwidth: {parameter: "avail-switchover-bandwidth", major: 8, minor: 2},
	DirtyLimit:               {capability: "dirty-limit", parameter: "vcpu-dirty-limit", major: 8, minor: 1},
	MultifdZstd: {parameter: "multifd-zstd-level", major: 5, minor: 0,
		note: "and a QEMU built with zstd, as Debian's is"},
}

// Features returns every feature Require knows, in a fixed order.
func Features() []Feature {
	return []Feature{PostcopyPreempt, MultifdZeroPageDetection, AvailSwitchoverBandwidth, DirtyLimit, MultifdZstd}
}

// ErrUnsupported is wrapped by Require when the binary lacks a feature.
var ErrUnsupported = errors.New("QEMU feature not supported")

// ErrUnknownFeature is returned for a feature Require does not know.
var ErrUnknownFeature = errors.New("unknown QEMU feature")

// Require returns nil if c supports feature f, otherwise an error wrapping
// ErrUnsupported that names the QEMU version which has it.
func Require(c Caps, f Feature) error {
	req, ok := requirements[f]
	if !ok {
		return fmt.Errorf("%w %q (known: %v)", ErrUnknownFeature, f, Features())
	}
	need := fmt.Sprintf("needs QEMU %d.%d or later", req.major, req.minor)
	if req.note != "" {
		need += " (" + req.note + ")"
	}
	if !c.Version.AtLeast(req.major, req.minor) {
		return fmt.Errorf("%w: %s %s, this host has QEMU %s", ErrUnsupported, f, need, c.Version)
	}
	if req.capability != "" && !c.HasCapability(req.capability) {
		return fmt.Errorf("%w: %s %s and migration capability %q, which this host's QEMU %s does not offer", ErrUnsupported, f, need, req.capability, c.Version)
	}
	if req.parameter != "" && !c.HasParameter(req.parameter) {
		return fmt.Errorf("%w: %s %s and migration parameter %q, which this host's QEMU %s does not offer", ErrUnsupported, f, need, req.parameter, c.Version)
	}
	return nil
}

// Supported returns the features c supports, in Features order.
func Supported(c Caps) []Feature {
	var out []Feature
	for _, f := range Features() {
		if Require(c, f) == nil {
			out = append(out, f)
		}
	}
	return out
}
