// Package cmdline parses the kernel command line and the ferry.* parameters
// that configure the test guest.
package cmdline

import (
	"fmt"
	"net/netip"
	"regexp"
	"sort"
	"strconv"
	"strings"
)

// Config is the guest configuration derived from the kernel command line.
type Config struct {
	// IP is ferry.ip=A.B.C.D/P (address keeps its host bits). Invalid when unset.
	IP netip.Prefix
	// Gateway is ferry.gw=A.B.C.D. Invalid when unset.
	Gateway netip.Addr
	// WSSMiB and RateMiBps come from ferry.dirty=WSS_MiB:RATE_MiBps.
	WSSMiB    uint64
	RateMiBps uint64
	// DiskKiBps comes from ferry.disk=RATE_KiBps (0 = off).
	DiskKiBps uint64
	// MarkerSeed comes from ferry.marker=SEED (1-64 hex digits; "" = no
	// marker): the guest keeps guestapi.Marker(SEED) in its memory.
	MarkerSeed string
	// Errors lists every ferry.* parameter that could not be parsed; the
	// guest carries on with the parameter unset.
	Errors []string
}

var markerSeedRE = regexp.MustCompile(`^[0-9a-f]{1,64}$`)

// Limits to reject obviously wrong values before they take the guest down.
const (
	maxWSSMiB   = 1 << 20 // 1 TiB
	maxRateMiB  = 1 << 20
	maxDiskKiBs = 1 << 30
)

// Split splits a kernel command line into words the way the kernel does:
// whitespace separated, double quotes group (and are removed).
func Split(s string) []string {
	var words []string
	var cur strings.Builder
	inQuote, have := false, false
	for _, r := range s {
		switch {
		case r == '"':
			inQuote = !inQuote
			have = true
		case !inQuote && (r == ' ' || r == '\t' || r == '\n' || r == '\r'):
			if have {
				words = append(words, cur.String())
				cur.Reset()
				have = false
			}
		default:
			cur.WriteRune(r)
			have = true
		}
	}
	if have {
		words = append(words, cur.String())
	}
	return words
}

// Params returns key=value pairs from a command line. A word without '='
// maps to "". Later words override earlier ones, as for the kernel.
func Params(s string) map[string]string {
	m := map[string]string{}
	for _, w := range Split(s) {
		k, v, _ := strings.Cut(w, "=")
		m[k] = v
	}
	return m
}

// Parse parses the ferry.* parameters out of a kernel command line.
func Parse(s string) Config {
	var c Config
	p := Params(s)
	fail := func(k, v string, err error) {
		c.Errors = append(c.Errors, fmt.Sprintf("%s=%q: %v", k, v, err))
	}
	var keys []string
	for k := range p {
		if strings.HasPrefix(k, "ferry.") {
			keys = append(keys, k)
		}
	}
	sort.Strings(keys)
	for _, k := range keys {
		v := p[k]
		switch k {
		case "ferry.ip":
			pf, err := ParseIPv4Prefix(v)
			if err != nil {
				fail(k, v, err)
				continue
			}
			c.IP = pf
		case "ferry.gw":
			a, err := netip.ParseAddr(v)
			if err != nil || !a.Is4() {
				if err == nil {
					err = fmt.Errorf("not an IPv4 address")
				}
				fail(k, v, err)
				continue
			}
			c.Gateway = a
		case "ferry.dirty":
			w, r, err := ParseDirty(v)
			if err != nil {
				fail(k, v, err)
				continue
			}
			c.WSSMiB, c.RateMiBps = w, r
		case "ferry.marker":
			if !markerSeedRE.MatchString(v) {
				fail(k, v, fmt.Errorf("want 1-64 hex digits"))
				continue
			}
			c.MarkerSeed = v
		case "ferry.disk":
			r, err := parseUint(v, maxDiskKiBs)
			if err != nil {
				fail(k, v, err)
				continue
			}
			c.DiskKiBps = r
		default:
			c.Errors = append(c.Errors, fmt.Sprintf("%s: unknown ferry parameter", k))
		}
	}
	return c
}

// ParseIPv4Prefix parses "A.B.C.D/P", keeping the host bits of the address.
func ParseIPv4Prefix(v string) (netip.Prefix, error) {
	if !strings.Contains(v, "/") {
		return netip.Prefix{}, fmt.Errorf("want A.B.C.D/P")
	}
	pf, err := netip.ParsePrefix(v)
	if err != nil {
		return netip.Prefix{}, err
	}
	if !pf.Addr().Is4() {
		return netip.Prefix{}, fmt.Errorf("not an IPv4 prefix")
	}
	if pf.Bits() < 1 || pf.Bits() > 32 {
		return netip.Prefix{}, fmt.Errorf("prefix length %d out of range 1..32", pf.Bits())
	}
	return pf, nil
}

// ParseDirty parses "WSS_MiB:RATE_MiBps".
func ParseDirty(v string) (wss, rate uint64, err error) {
	ws, rs, ok := strings.Cut(v, ":")
	if !ok {
		return 0, 0, fmt.Errorf("want WSS_MiB:RATE_MiBps")
	}
	if wss, err = parseUint(ws, maxWSSMiB); err != nil {
		return 0, 0, fmt.Errorf("wss: %w", err)
	}
	if rate, err = parseUint(rs, maxRateMiB); err != nil {
		return 0, 0, fmt.Errorf("rate: %w", err)
	}
	if wss == 0 && rate != 0 {
		return 0, 0, fmt.Errorf("rate %d MiB/s needs a non-zero working set", rate)
	}
	return wss, rate, nil
}

func parseUint(s string, max uint64) (uint64, error) {
	n, err := strconv.ParseUint(s, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("not a non-negative integer")
	}
	if n > max {
		return 0, fmt.Errorf("%d exceeds limit %d", n, max)
	}
	return n, nil
}
