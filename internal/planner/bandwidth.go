package planner

import (
	"encoding/json"
	"math"
	"sort"

	"github.com/ferryvm/ferry/internal/ewma"
)

// EWMAAlpha is the weight of a new observation in BandwidthEstimator.
const EWMAAlpha = 0.3

// BandwidthEstimator learns the migration bandwidth of each directed host
// pair from past migrations: an exponentially weighted moving average with
// weight EWMAAlpha for the newest observation (the first observation is
// taken as is). h1→h2 and h2→h1 are distinct pairs. The zero value is ready
// to use; it is not safe for concurrent use. It marshals to JSON as a list
// of Links sorted by (From, To).
type BandwidthEstimator struct {
	links map[pair]Link
}

type pair struct{ from, to string }

// Link is one directed host pair's learned bandwidth.
type Link struct {
	// From is the source host.
	From string `json:"from"`
	// To is the destination host.
	To string `json:"to"`
	// BytesPerSec is the moving average.
	BytesPerSec float64 `json:"bytesPerSec"`
	// Samples counts the observations folded in.
	Samples int `json:"samples"`
}

// Observe folds in one migration's measured bandwidth from → to. Values
// that are not finite and positive are ignored.
func (e *BandwidthEstimator) Observe(from, to string, bytesPerSec float64) {
	if !(bytesPerSec > 0) || math.IsInf(bytesPerSec, 0) {
		return
	}
	if e.links == nil {
		e.links = map[pair]Link{}
	}
	k := pair{from, to}
	l, ok := e.links[k]
	if !ok {
		l = Link{From: from, To: to, BytesPerSec: bytesPerSec}
	} else {
		l.BytesPerSec = ewma.Step(l.BytesPerSec, bytesPerSec, EWMAAlpha)
	}
	l.Samples++
	e.links[k] = l
}

// Forget drops what was learned from → to (a link that changed: its past
// migrations no longer say what it carries).
func (e *BandwidthEstimator) Forget(from, to string) {
	delete(e.links, pair{from, to})
}

// Estimate returns the learned bandwidth from → to, and false if that pair
// was never observed.
func (e BandwidthEstimator) Estimate(from, to string) (float64, bool) {
	l, ok := e.links[pair{from, to}]
	return l.BytesPerSec, ok
}

// Links returns every learned pair, sorted by (From, To).
func (e BandwidthEstimator) Links() []Link {
	out := make([]Link, 0, len(e.links))
	for _, l := range e.links {
		out = append(out, l)
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].From != out[j].From {
			return out[i].From < out[j].From
		}
		return out[i].To < out[j].To
	})
	return out
}

// MarshalJSON encodes the estimator as its sorted Links.
func (e BandwidthEstimator) MarshalJSON() ([]byte, error) {
	return json.Marshal(e.Links())
}

// UnmarshalJSON replaces the estimator's state with encoded Links, skipping
// entries whose bandwidth is not finite and positive.
func (e *BandwidthEstimator) UnmarshalJSON(data []byte) error {
	var links []Link
	if err := json.Unmarshal(data, &links); err != nil {
		return err
	}
	e.links = map[pair]Link{}
	for _, l := range links {
		if l.BytesPerSec > 0 && !math.IsInf(l.BytesPerSec, 0) {
			e.links[pair{l.From, l.To}] = l
		}
	}
	return nil
}
