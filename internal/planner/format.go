package planner

import (
	"strconv"
	"strings"
	"time"
)

const (
	kib = 1 << 10
	mib = 1 << 20
	gib = 1 << 30
)

// trim formats v with prec decimals and drops trailing zeros.
func trim(v float64, prec int) string {
	s := strconv.FormatFloat(v, 'f', prec, 64)
	if strings.Contains(s, ".") {
		s = strings.TrimRight(strings.TrimRight(s, "0"), ".")
	}
	return s
}

// fmtBytes formats a byte count for reasons: "512 KiB", "27.5 MiB", "1.25 GiB".
func fmtBytes(b float64) string {
	switch {
	case b < mib:
		return trim(b/kib, 0) + " KiB"
	case b < gib:
		return trim(b/mib, 1) + " MiB"
	default:
		return trim(b/gib, 2) + " GiB"
	}
}

// fmtRate formats a rate in bytes per second.
func fmtRate(r float64) string { return fmtBytes(r) + "/s" }

// fmtSec formats seconds: "132.4ms" below a second, "10.47s" above.
func fmtSec(s float64) string {
	if s < 1 {
		return trim(s*1000, 1) + "ms"
	}
	return trim(s, 2) + "s"
}

// fmtDur formats a Duration like fmtSec.
func fmtDur(d time.Duration) string { return fmtSec(d.Seconds()) }
