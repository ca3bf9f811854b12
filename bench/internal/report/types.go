package report

import (
	"encoding/json"
	"time"
)

// Migration is a system's own account of one migration, in common units.
type Migration struct {
	// Status is "completed", "aborted" (the benchmark hit its time cap),
	// "failed" or "cancelled" (the system gave up by itself).
	Status string `json:"status"`
	// WallMs is the time the benchmark waited, from issuing the migration
	// until the system said it had finished.
	WallMs int64 `json:"wallMs"`
	// TotalMs and DowntimeMs are the system's own figures (Ferry: totalMs
	// and downtimePhases.totalMs; QEMU: total-time and downtime; libvirt:
	// domjobinfo time_elapsed and downtime).
	TotalMs    int64 `json:"totalMs"`
	DowntimeMs int64 `json:"downtimeMs"`
	// TransferredBytes is what went over the wire; Rounds is QEMU's
	// dirty-sync count (libvirt: memory_iteration).
	TransferredBytes int64 `json:"transferredBytes"`
	Rounds           int64 `json:"rounds"`
	// BandwidthMiBps is the system's own figure of its transfer rate.
	BandwidthMiBps float64 `json:"bandwidthMibps,omitempty"`
	// Samples are remaining/transferred bytes over time since the
	// migration was issued.
	Samples []Sample `json:"samples"`
	// Error is the system's own failure message, if any.
	Error string `json:"error,omitempty"`
	// Raw is the system's final report as it printed it.
	Raw json.RawMessage `json:"raw,omitempty"`

	// Ferry only (from its report): the strategy that ran, the report's
	// own prediction (the migration plans again when it starts), the
	// planning time (outside TotalMs), the post-copy phase and its pause,
	// and the adaptive controller's decisions.
	Strategy         string     `json:"strategy,omitempty"`
	Predicted        *Predicted `json:"predicted,omitempty"`
	BandwidthSource  string     `json:"bandwidthSource,omitempty"`
	PlanningMs       int64      `json:"planningMs,omitempty"`
	PostcopyMs       int64      `json:"postcopyMs,omitempty"`
	PostcopyPausedMs int64      `json:"postcopyPausedMs,omitempty"`
	Decisions        []string   `json:"decisions,omitempty"`
}

// Predicted is one strategy's forecast (Ferry's StrategyPrediction).
type Predicted struct {
	Strategy   string `json:"strategy"`
	Converges  bool   `json:"converges"`
	TotalMs    int64  `json:"totalMs"`
	DowntimeMs int64  `json:"downtimeMs"`
	Bytes      int64  `json:"bytes,omitempty"`
}

// DryRun is `ferry migrate VM --to H --dry-run -o json`, run with the same
// flags just before the measured migration.
type DryRun struct {
	// Choice is the plan's choice (auto); Predicted the prediction of the
	// strategy the real run uses (the choice, or the -strategy given).
	Choice    string     `json:"choice"`
	Predicted *Predicted `json:"predicted,omitempty"`
	// The plan's inputs.
	BandwidthMiBps  float64 `json:"bandwidthMibps"`
	BandwidthSource string  `json:"bandwidthSource"`
	DirtyRateMiBps  float64 `json:"dirtyRateMibps"`
	NonZeroBytes    int64   `json:"nonZeroBytes"`
	// WallMs is how long the dry run took.
	WallMs int64 `json:"wallMs"`
	// Error is why there is no prediction.
	Error string `json:"error,omitempty"`
	// Plan is the dry run's output as printed.
	Plan json.RawMessage `json:"plan,omitempty"`
}

// Completed reports whether the migration finished.
func (m Migration) Completed() bool { return m.Status == "completed" }

// Sample is one progress observation.
type Sample struct {
	TMs              int64 `json:"tMs"`
	RemainingBytes   int64 `json:"remainingBytes"`
	TransferredBytes int64 `json:"transferredBytes"`
}

// Scenario describes the conditions of a scenario's runs.
type Scenario struct {
	Name string `json:"name"`
	// WSSMiB and DirtyMiBps are the guest's ferry.dirty=WSS:RATE.
	WSSMiB     int64 `json:"wssMiB"`
	DirtyMiBps int64 `json:"dirtyMiBps"`
	// ShapedMiBps is the host-to-host rate limit (0 = unshaped).
	ShapedMiBps float64 `json:"shapedMiBps"`
	// MeasuredMiBps is what a bulk TCP stream achieved between the host
	// namespaces under that shaping, measured before the runs.
	MeasuredMiBps float64 `json:"measuredMiBps"`
}

// Run is one migration of one system in one scenario, measured from the
// outside as well as by the system itself.
type Run struct {
	Scenario string    `json:"scenario"`
	System   string    `json:"system"`
	Index    int       `json:"run"`
	Started  time.Time `json:"started"`
	Guest    any       `json:"guest"`
	// Link: the scenario's shaping and measured bandwidth.
	ShapedMiBps   float64 `json:"shapedMiBps"`
	MeasuredMiBps float64 `json:"measuredMiBps"`
	// NonZeroBytes is the guest RAM that is not zero pages, counted in the
	// source QEMU just before the migration.
	NonZeroBytes int64 `json:"nonZeroBytes"`
	// Guest-side checks.
	BootIDBefore string `json:"bootIdBefore"`
	BootIDAfter  string `json:"bootIdAfter"`
	Rebooted     bool   `json:"rebooted"`
	// ClientGapMs is the longest gap between two counter lines the client
	// saw from just before the migration to 0.5 s after it ended.
	ClientGapMs  int64  `json:"clientGapMs"`
	StreamLines  int64  `json:"streamLines"`
	StreamBroken bool   `json:"streamBroken"`
	StreamError  string `json:"streamError,omitempty"`
	// AchievedMiBps is the guest's achieved_mibps after the migration
	// (average since its dirtier started); WindowMiBps the rate during the
	// migration alone (pages dirtied between the two /status reads).
	AchievedMiBps float64   `json:"achievedMiBps"`
	WindowMiBps   float64   `json:"windowMiBps"`
	Migration     Migration `json:"migration"`
	// DryRun is the system's prediction made just before the migration
	// (Ferry only).
	DryRun *DryRun `json:"dryRun,omitempty"`
	// Error is why the harness could not complete the run (boot failure,
	// unreachable guest...), separate from a failed migration.
	Error string `json:"error,omitempty"`
}

// TotalErrorPct is the dry run's predicted total time relative to the
// actual one, in percent (+ = predicted too long); false when the run has
// no prediction or did not complete.
func (r Run) TotalErrorPct() (float64, bool) {
	if r.DryRun == nil || r.DryRun.Predicted == nil || r.DryRun.Predicted.TotalMs <= 0 ||
		r.Error != "" || !r.Migration.Completed() || r.Migration.TotalMs <= 0 {
		return 0, false
	}
	return pctError(r.DryRun.Predicted.TotalMs, r.Migration.TotalMs), true
}

// ReportTotalErrorPct is the same for the migration report's own
// prediction (made when the migration started).
func (r Run) ReportTotalErrorPct() (float64, bool) {
	p := r.Migration.Predicted
	if p == nil || p.TotalMs <= 0 || r.Error != "" || !r.Migration.Completed() || r.Migration.TotalMs <= 0 {
		return 0, false
	}
	return pctError(p.TotalMs, r.Migration.TotalMs), true
}

func pctError(predicted, actual int64) float64 {
	return (float64(predicted) - float64(actual)) / float64(actual) * 100
}

// OK reports whether the run completed cleanly: migrated, no reboot,
// intact stream, no harness error.
func (r Run) OK() bool {
	return r.Error == "" && r.Migration.Completed() && !r.Rebooted && !r.StreamBroken
}
