package linkemu

import (
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"
)

// Params describe the emulated link, the same in both directions.
type Params struct {
	// Delay is the one-way latency added to every frame.
	Delay time.Duration `json:"delay"`
	// Jitter spreads the delay uniformly over [Delay-Jitter, Delay+Jitter].
	// Frames are never reordered: a frame is not delivered before the one
	// ahead of it.
	Jitter time.Duration `json:"jitter"`
	// Loss is the probability (0..1) that a frame is dropped.
	Loss float64 `json:"loss"`
	// Rate is the link's rate in bytes (whole frames) per second; 0 means
	// unlimited.
	Rate int64 `json:"rate"`
	// QueueBytes bounds the bytes waiting for the transmitter; a frame that
	// does not fit is dropped (tail drop). 0 means DefaultQueueBytes.
	QueueBytes int64 `json:"queue_bytes"`
	// Down drops every frame, including those already queued.
	Down bool `json:"down"`
}

// ErrInvalidParams is wrapped by every validation error.
var ErrInvalidParams = errors.New("invalid link parameters")

// Validate checks p and names the bad field.
func (p Params) Validate() error {
	switch {
	case p.Delay < 0:
		return fmt.Errorf("%w: delay %v is negative", ErrInvalidParams, p.Delay)
	case p.Delay > time.Minute:
		return fmt.Errorf("%w: delay %v is longer than a minute", ErrInvalidParams, p.Delay)
	case p.Jitter < 0:
		return fmt.Errorf("%w: jitter %v is negative", ErrInvalidParams, p.Jitter)
	case p.Jitter > p.Delay:
		return fmt.Errorf("%w: jitter %v is larger than the delay %v (set --delay at least as large)", ErrInvalidParams, p.Jitter, p.Delay)
	case math.IsNaN(p.Loss) || p.Loss < 0 || p.Loss > 1:
		return fmt.Errorf("%w: loss %v must be between 0 and 1 (0%% and 100%%)", ErrInvalidParams, p.Loss)
	case p.Rate < 0:
		return fmt.Errorf("%w: rate %d is negative", ErrInvalidParams, p.Rate)
	case p.Rate > 0 && p.Rate < 1500:
		return fmt.Errorf("%w: rate %d B/s is below one frame per second", ErrInvalidParams, p.Rate)
	case p.QueueBytes < 0:
		return fmt.Errorf("%w: queue %d bytes is negative", ErrInvalidParams, p.QueueBytes)
	}
	return nil
}

// MinQueueBytes is the smallest default queue.
const MinQueueBytes = 128 << 10

// DefaultQueueBytes is the queue used when QueueBytes is 0: what the link
// carries in twice the delay plus 20 ms (a round trip's worth, so one TCP
// flow can fill the link), at least MinQueueBytes.
func (p Params) DefaultQueueBytes() int64 {
	if p.Rate == 0 {
		return 0
	}
	q := int64(float64(p.Rate) * (2*p.Delay + 20*time.Millisecond).Seconds())
	return max(q, MinQueueBytes)
}

func (p Params) queueLimit() int64 {
	if p.QueueBytes > 0 {
		return p.QueueBytes
	}
	return p.DefaultQueueBytes()
}

// String describes p in the CLI's terms.
func (p Params) String() string {
	if p.Down {
		return "down"
	}
	rate := "unlimited"
	if p.Rate > 0 {
		rate = FormatRate(p.Rate)
	}
	return fmt.Sprintf("delay %v jitter %v loss %s rate %s", p.Delay, p.Jitter, strconv.FormatFloat(p.Loss*100, 'g', -1, 64)+"%", rate)
}

var rateUnits = []struct {
	suffix string
	mult   float64
}{
	// Longest suffixes first.
	{"gibit", 1 << 30 / 8}, {"mibit", 1 << 20 / 8}, {"kibit", 1 << 10 / 8},
	{"gbit", 1e9 / 8}, {"mbit", 1e6 / 8}, {"kbit", 1e3 / 8}, {"bit", 1.0 / 8},
	{"gib", 1 << 30}, {"mib", 1 << 20}, {"kib", 1 << 10},
	{"gb", 1e9}, {"mb", 1e6}, {"kb", 1e3},
	{"g", 1 << 30}, {"m", 1 << 20}, {"k", 1 << 10}, {"b", 1}, {"", 1},
}

// ParseRate parses a rate such as "48MiB" (bytes per second, binary
// units), "48MiB/s", "100Mbit" (bits per second) or "0" (unlimited).
func ParseRate(s string) (int64, error) {
	t := strings.ToLower(strings.TrimSpace(s))
	t = strings.TrimSuffix(strings.TrimSuffix(t, "/s"), "ps")
	i := 0
	for i < len(t) && (t[i] >= '0' && t[i] <= '9' || t[i] == '.') {
		i++
	}
	num, unit := t[:i], strings.TrimSpace(t[i:])
	v, err := strconv.ParseFloat(num, 64)
	if num == "" || err != nil {
		return 0, fmt.Errorf("%w: rate %q must be a number with a unit, e.g. 48MiB (bytes/s) or 100Mbit", ErrInvalidParams, s)
	}
	for _, u := range rateUnits {
		if unit == u.suffix {
			r := v * u.mult
			if r > math.MaxInt64/2 {
				return 0, fmt.Errorf("%w: rate %q is too large", ErrInvalidParams, s)
			}
			return int64(r), nil
		}
	}
	return 0, fmt.Errorf("%w: rate %q has unknown unit %q (use B, KiB, MiB, GiB per second, or kbit, Mbit, Gbit)", ErrInvalidParams, s, unit)
}

// FormatRate prints a byte rate the way ParseRate reads it.
func FormatRate(r int64) string {
	switch {
	case r >= 1<<30 && r%(1<<30) == 0:
		return fmt.Sprintf("%dGiB/s", r>>30)
	case r >= 1<<20:
		return strconv.FormatFloat(float64(r)/(1<<20), 'g', 4, 64) + "MiB/s"
	case r >= 1<<10:
		return strconv.FormatFloat(float64(r)/(1<<10), 'g', 4, 64) + "KiB/s"
	}
	return fmt.Sprintf("%dB/s", r)
}

// ParseLoss parses a loss probability given as a percentage ("0.1%") or a
// fraction ("0.001").
func ParseLoss(s string) (float64, error) {
	t := strings.TrimSpace(s)
	pct := strings.HasSuffix(t, "%")
	v, err := strconv.ParseFloat(strings.TrimSpace(strings.TrimSuffix(t, "%")), 64)
	if err != nil {
		return 0, fmt.Errorf("%w: loss %q must be a percentage like 0.1%% or a fraction like 0.001", ErrInvalidParams, s)
	}
	if pct {
		v /= 100
	}
	if math.IsNaN(v) || v < 0 || v > 1 {
		return 0, fmt.Errorf("%w: loss %q must be between 0%% and 100%%", ErrInvalidParams, s)
	}
	return v, nil
}
