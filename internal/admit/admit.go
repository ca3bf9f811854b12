// Package admit is the leader's admission of migrations against the
// cluster's migration policy: how many may be in flight in the cluster,
// out of one host and into one host, and how the per-host bandwidth is
// shared among the migrations touching a host. Every migration — manual,
// evacuation or balancer — passes through it. It is pure: no I/O, no
// clock; the server gives it the migrations in flight and applies what it
// decides.
package admit

import (
	"errors"
	"fmt"
	"math"
	"sort"
	"strings"
)

// ErrLimit is wrapped by every refusal for a parallelism limit; callers
// branch on it (an evacuation waits, the CLI's --wait retries).
var ErrLimit = errors.New("migration limit reached")

// Limits are the cluster-wide limits of the migration policy (defaults
// already applied: every parallelism limit is at least 1).
type Limits struct {
	// MaxParallelCluster bounds migrations in flight in the whole cluster.
	MaxParallelCluster int
	// MaxParallelPerSource bounds migrations in flight out of one host.
	MaxParallelPerSource int
	// MaxParallelPerDest bounds migrations in flight into one host.
	MaxParallelPerDest int
	// BandwidthPerHost bounds the sum of the bandwidth caps of the
	// migrations touching one host, as source or destination (bytes/s;
	// 0: no cap).
	BandwidthPerHost float64
}

// Flight is one migration in flight (or the one asking to start).
type Flight struct {
	// ID names the migration.
	ID string
	// From and To are its source and destination hosts.
	From, To string
	// Cap is its own bandwidth cap (bytes/s: --bandwidth or the policy's
	// bandwidthPerMigration); 0: none.
	Cap float64
}

// LimitError is a refusal: which limit, on which host, and the
// migrations holding it.
type LimitError struct {
	// Limit is the policy field, e.g. "maxParallelPerSource".
	Limit string
	// Host is the host it is counted on ("" for the cluster limit).
	Host string
	// Value is the limit; InFlight the migrations counted against it.
	Value    int
	InFlight []string
}

// Error says what is full and what the operator can do.
func (e *LimitError) Error() string {
	where := "in the cluster"
	switch e.Limit {
	case "maxParallelPerSource":
		where = "out of host " + e.Host
	case "maxParallelPerDest":
		where = "into host " + e.Host
	}
	return fmt.Sprintf("%v: policy %s = %d, and %d migration(s) are in flight %s (%s): wait for one to finish (ferry migration list; ferry migrate --wait-limits DURATION retries until then), raise the limit (ferry policy set), or start it anyway with --ignore-limits",
		ErrLimit, e.Limit, e.Value, len(e.InFlight), where, strings.Join(e.InFlight, ", "))
}

// Unwrap makes errors.Is(err, ErrLimit) hold.
func (e *LimitError) Unwrap() error { return ErrLimit }

// Check says whether req may start with flights in flight: nil, or a
// *LimitError for the first limit it would exceed (the cluster's, then
// the source's, then the destination's).
func Check(l Limits, flights []Flight, req Flight) error {
	var all, out, in []string
	for _, f := range flights {
		if f.ID == req.ID {
			continue
		}
		all = append(all, f.ID)
		if f.From == req.From {
			out = append(out, f.ID)
		}
		if f.To == req.To {
			in = append(in, f.ID)
		}
	}
	switch {
	case l.MaxParallelCluster > 0 && len(all) >= l.MaxParallelCluster:
		return &LimitError{Limit: "maxParallelCluster", Value: l.MaxParallelCluster, InFlight: sorted(all)}
	case l.MaxParallelPerSource > 0 && len(out) >= l.MaxParallelPerSource:
		return &LimitError{Limit: "maxParallelPerSource", Host: req.From, Value: l.MaxParallelPerSource, InFlight: sorted(out)}
	case l.MaxParallelPerDest > 0 && len(in) >= l.MaxParallelPerDest:
		return &LimitError{Limit: "maxParallelPerDest", Host: req.To, Value: l.MaxParallelPerDest, InFlight: sorted(in)}
	}
	return nil
}

func sorted(s []string) []string {
	sort.Strings(s)
	return s
}

// Shares gives every flight its bandwidth cap (bytes/s, by ID; 0: no cap)
// so that the caps of the flights touching one host never sum above
// l.BandwidthPerHost and no flight exceeds its own Cap. The host's
// bandwidth is shared max-min fairly: every flight gets as much as the
// others unless its own cap or another of its hosts holds it lower, and
// what such a flight leaves goes to the rest.
func Shares(l Limits, flights []Flight) map[string]float64 {
	out := make(map[string]float64, len(flights))
	if l.BandwidthPerHost <= 0 {
		for _, f := range flights {
			out[f.ID] = f.Cap
		}
		return out
	}
	rate := make([]float64, len(flights))
	active := make([]bool, len(flights))
	for i := range flights {
		active[i] = true
	}
	// Progressive filling: raise every active flight's rate together until
	// a host is full or a flight reaches its own cap; freeze those; repeat.
	for range len(flights) + 1 { // each round freezes at least one flight
		used := map[string]float64{}
		count := map[string]int{}
		for i, f := range flights {
			for _, h := range hostsOf(f) {
				used[h] += rate[i]
				if active[i] {
					count[h]++
				}
			}
		}
		step := math.Inf(1)
		for h, n := range count {
			if n > 0 {
				step = min(step, (l.BandwidthPerHost-used[h])/float64(n))
			}
		}
		for i, f := range flights {
			if active[i] && f.Cap > 0 {
				step = min(step, f.Cap-rate[i])
			}
		}
		if math.IsInf(step, 1) {
			break // no active flight left
		}
		step = max(step, 0)
		for i := range flights {
			if active[i] {
				rate[i] += step
			}
		}
		for h := range count {
			used[h] = 0
		}
		for i, f := range flights {
			for _, h := range hostsOf(f) {
				used[h] += rate[i]
			}
		}
		for i, f := range flights {
			if !active[i] {
				continue
			}
			if f.Cap > 0 && rate[i] >= f.Cap*(1-1e-9) {
				active[i] = false
				continue
			}
			for _, h := range hostsOf(f) {
				if used[h] >= l.BandwidthPerHost*(1-1e-9) {
					active[i] = false
				}
			}
		}
	}
	for i, f := range flights {
		out[f.ID] = math.Floor(rate[i])
	}
	return out
}

// hostsOf is the hosts a flight's streams touch (one for a migration to
// its own host, which Check's callers refuse anyway).
func hostsOf(f Flight) []string {
	if f.From == f.To {
		return []string{f.From}
	}
	return []string{f.From, f.To}
}
