// Package ewma is the one exponentially weighted moving average the
// project folds its learned figures with (link bandwidths, telemetry
// series, a migration's fixed time): the first observation is taken as
// is, every later one weighs alpha against (1 − alpha) for the past.
package ewma

// Step returns avg after folding in v with weight alpha for v:
// alpha·v + (1 − alpha)·avg. It is the step after the first
// observation; Average also takes the first one as is.
func Step(avg, v, alpha float64) float64 {
	return alpha*v + (1-alpha)*avg
}

// Average is a moving average of the observations added. The zero value
// with Alpha set is empty. It is not safe for concurrent use.
type Average struct {
	// Alpha is the weight of the newest observation, in (0, 1].
	Alpha float64
	// Value is the average; 0 before the first observation.
	Value float64
	// N counts the observations folded in.
	N int
}

// Add folds in v: the first observation is the average, every later one
// is a Step with weight Alpha.
func (a *Average) Add(v float64) {
	if a.N == 0 {
		a.Value = v
	} else {
		a.Value = Step(a.Value, v, a.Alpha)
	}
	a.N++
}
