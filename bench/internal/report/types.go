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
	// Error is why the harness could not complete the run (boot failure,
	// unreachable guest...), separate from a failed migration.
	Error string `json:"error,omitempty"`
}

// OK reports whether the run completed cleanly: migrated, no reboot,
// intact stream, no harness error.
func (r Run) OK() bool {
	return r.Error == "" && r.Migration.Completed() && !r.Rebooted && !r.StreamBroken
}
