package planner

import "time"

// StreamRun is what a completed single-stream pre-copy showed of its
// stream, for StreamRateOf: the figures the pre-copy model composes its
// total from.
type StreamRun struct {
	// Total is the migration's time from its start to completed, without
	// its local disks' mirroring (MirrorTime is subtracted).
	Total time.Duration
	// Bytes is everything the stream carried: RAM of every round,
	// including the final one, plus the device state (the model's
	// Prediction.Bytes).
	Bytes int64
	// MirrorTime is the time the local disks' mirrors took until ready (0:
	// none); it is left out of Total.
	MirrorTime time.Duration
	// Raises is how many times the controller raised the downtime target
	// (each costs the model about nearFor).
	Raises int
	// SetupSeconds, SwitchoverSeconds and FinishSeconds are the fixed
	// parts the plans use (0: the planner's defaults, as in Inputs).
	SetupSeconds, SwitchoverSeconds, FinishSeconds float64
}

// MinStreamSeconds is the least time a StreamRun's bytes must have taken
// once the model's fixed parts are taken off its total: a shorter remainder
// is mostly the fixed parts' own error, and the rate it gives would be off
// by as much.
const MinStreamSeconds = 0.05

// StreamRateOf is the stream rate at which the pre-copy model reproduces
// the run's total. A pre-copy's predicted total is
//
//	setup + Σ D_i/B + D_final/B + S/B + switchover + raises·nearFor + finish
//
// (Predict: rounds, the final round and the device state at the stream's
// rate B; the fixed setup, switchover and finish; the stepped controller's
// raises), which is setup + switchover + finish + raises·nearFor + Bytes/B.
// So B = Bytes / (Total − setup − switchover − finish − raises·nearFor −
// mirror time): the rate the next plan needs to predict this run's total
// from its bytes. The naive Bytes/Total would charge the fixed parts twice
// (once in the rate, once as themselves) and undershoot most on the short
// migrations that teach it. It returns false when the remainder is under
// MinStreamSeconds or the figures are not usable.
func StreamRateOf(r StreamRun) (float64, bool) {
	if r.Total <= 0 || r.Bytes <= 0 || r.Raises < 0 || r.MirrorTime < 0 {
		return 0, false
	}
	fixed := orF(r.SetupSeconds, DefaultSetupSeconds) + orF(r.SwitchoverSeconds, DefaultSwitchoverSeconds) +
		orF(r.FinishSeconds, DefaultFinishSeconds) + float64(r.Raises)*nearFor.Seconds() + r.MirrorTime.Seconds()
	t := r.Total.Seconds() - fixed
	if t < MinStreamSeconds {
		return 0, false
	}
	return float64(r.Bytes) / t, true
}

// MirrorRateOf is the mirror rate at which the model's mirroring time
// (Inputs.DiskBytes over the mirror's rate, with no disk writes known)
// reproduces a migration's: diskBytes (the plan's DiskBytes, what the next
// plan divides too) over the time the mirrors took until ready. It returns
// false when either is not positive.
func MirrorRateOf(diskBytes int64, mirror time.Duration) (float64, bool) {
	if diskBytes <= 0 || mirror <= 0 {
		return 0, false
	}
	return float64(diskBytes) / mirror.Seconds(), true
}
