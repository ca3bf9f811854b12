package report

import (
	"encoding/json"
	"fmt"
	"strings"
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
	// DowntimeUnknown is set when the system reported no downtime (libvirt
	// after a post-copy migration): DowntimeMs is then in no median.
	DowntimeUnknown bool `json:"downtimeUnknown,omitempty"`
	// PauseMs is the guest's pause measured the same way for every system
	// that exposes both QEMUs' monitors: from the source QEMU's STOP event
	// to the destination QEMU's RESUME event, by the events' own
	// timestamps (one clock: both hosts are namespaces of this machine).
	// QEMU's own downtime figure ends when the source has sent its last
	// byte, before the destination has loaded and resumed. 0 when not
	// measured (libvirt owns its QEMUs' monitors).
	PauseMs int64 `json:"pauseMs,omitempty"`
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
	// DiskBytes is the local-disk data the system sent (Ferry:
	// diskBytesTransferred; libvirt: disk_processed); 0 without disks.
	DiskBytes int64 `json:"diskBytes,omitempty"`
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
	// StreamMiBps and StreamSource are the one-stream rate the plan used
	// and where it came from (learned or the planner's constant);
	// MirrorMiBps and MirrorSource the local disks' mirror rate (only
	// with local disks).
	StreamMiBps  float64 `json:"streamMibps,omitempty"`
	StreamSource string  `json:"streamSource,omitempty"`
	MirrorMiBps  float64 `json:"mirrorMibps,omitempty"`
	MirrorSource string  `json:"mirrorSource,omitempty"`
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
	// MeasuredMiBps is what bulk TCP achieved between the host namespaces
	// under that shaping (ProbeStreams parallel streams), measured before
	// the runs.
	MeasuredMiBps float64 `json:"measuredMiBps"`
	// DelayMs and LossPct are the link emulator's one-way delay and frame
	// loss (each direction); 0 for none.
	DelayMs float64 `json:"delayMs,omitempty"`
	LossPct float64 `json:"lossPct,omitempty"`
	// Flaps is how many times the link goes down for FlapDownMs during
	// each migration (first FlapFirstMs after it is issued, then
	// FlapGapMs after the link came back).
	Flaps       int   `json:"flaps,omitempty"`
	FlapDownMs  int64 `json:"flapDownMs,omitempty"`
	FlapFirstMs int64 `json:"flapFirstMs,omitempty"`
	FlapGapMs   int64 `json:"flapGapMs,omitempty"`
	// MemoryMiB is the guest's RAM in this scenario.
	MemoryMiB int64 `json:"memoryMiB,omitempty"`
	// DiskMiB is the virtual size of the guest's local disk (0: none),
	// DiskAllocMiB how much of it holds data before the guest boots, and
	// DiskKiBps the guest's disk writer (ferry.disk=RATE).
	DiskMiB      int64 `json:"diskMiB,omitempty"`
	DiskAllocMiB int64 `json:"diskAllocMiB,omitempty"`
	DiskKiBps    int64 `json:"diskKiBps,omitempty"`
}

// Shaped reports whether the scenario's link goes through the link
// emulator.
func (s Scenario) Shaped() bool {
	return s.ShapedMiBps > 0 || s.DelayMs > 0 || s.LossPct > 0 || s.Flaps > 0
}

// LinkString describes the scenario's link, e.g. "48 MiB/s, 20 ms, 0.1 % loss, 2× down 2 s".
func (s Scenario) LinkString() string {
	if !s.Shaped() {
		return "unshaped"
	}
	var parts []string
	if s.ShapedMiBps > 0 {
		parts = append(parts, fmt.Sprintf("%.0f MiB/s", s.ShapedMiBps))
	}
	if s.DelayMs > 0 {
		parts = append(parts, fmt.Sprintf("%g ms each way", s.DelayMs))
	}
	if s.LossPct > 0 {
		parts = append(parts, fmt.Sprintf("%g %% loss each way", s.LossPct))
	}
	if s.Flaps > 0 {
		parts = append(parts, fmt.Sprintf("down %d× for %.0f s", s.Flaps, float64(s.FlapDownMs)/1000))
	}
	return strings.Join(parts, ", ")
}

// CPU is the CPU time (utime+stime from /proc, seconds) processes used on
// the two hosts from the migration's start to its end.
type CPU struct {
	// QEMU processes (source and destination guest) per host.
	SrcQEMUS float64 `json:"srcQemuS"`
	DstQEMUS float64 `json:"dstQemuS"`
	// The system's migration daemons per host (Ferry's agents, libvirtd;
	// none for plain QEMU).
	SrcDaemonS float64 `json:"srcDaemonS"`
	DstDaemonS float64 `json:"dstDaemonS"`
	// ControlPlaneS is Ferry's server (root namespace, not on a host).
	ControlPlaneS float64 `json:"controlPlaneS,omitempty"`
	// Processes names what was counted ("h1 qemu-system-x86 1234: 3.21 s").
	Processes []string `json:"processes,omitempty"`
}

// HostsS is the CPU used on both hosts (QEMU and daemons).
func (c CPU) HostsS() float64 { return c.SrcQEMUS + c.DstQEMUS + c.SrcDaemonS + c.DstDaemonS }

// LinkEvent is something the harness did to the link during a migration.
type LinkEvent struct {
	// TMs is since the migration was issued.
	TMs  int64  `json:"tMs"`
	What string `json:"what"`
}

// ClientGap is one silence on the guest's counter stream.
type ClientGap struct {
	// EndMs is when it ended, in ms after the migration was issued.
	EndMs int64 `json:"endMs"`
	// Ms is its length.
	Ms int64 `json:"ms"`
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
	ClientGapMs int64 `json:"clientGapMs"`
	// ClientGaps are the silences of 100 ms or more that ended after the
	// migration was issued (up to 0.5 s after it ended), in order: where
	// in the migration the client waited.
	ClientGaps   []ClientGap `json:"clientGaps,omitempty"`
	StreamLines  int64       `json:"streamLines"`
	StreamBroken bool        `json:"streamBroken"`
	StreamError  string      `json:"streamError,omitempty"`
	// AchievedMiBps is the guest's achieved_mibps after the migration
	// (average since its dirtier started); WindowMiBps the rate during the
	// migration alone (pages dirtied between the two /status reads).
	AchievedMiBps float64   `json:"achievedMiBps"`
	WindowMiBps   float64   `json:"windowMiBps"`
	Migration     Migration `json:"migration"`
	// UptimeMs is how long the VM had been running (from its boot) when
	// the migration was issued.
	UptimeMs int64 `json:"uptimeMs,omitempty"`
	// CPU is the hosts' CPU time during the migration (nil if unmeasured).
	CPU *CPU `json:"cpu,omitempty"`
	// LinkEvents are the link flaps the harness caused (flaky).
	LinkEvents []LinkEvent `json:"linkEvents,omitempty"`
	// QEMUBinary is the source QEMU's /proc/PID/exe and its version.
	QEMUBinary string `json:"qemuBinary,omitempty"`
	// DiskVerify is the guest's disk check after the migration (disk scenario).
	DiskVerify *DiskVerify `json:"diskVerify,omitempty"`
	// Spec is the scenario as run (for -resummarize).
	Spec *Scenario `json:"scenarioSpec,omitempty"`
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
	return r.Error == "" && r.Migration.Completed() && !r.Rebooted && !r.StreamBroken && (r.DiskVerify == nil || r.DiskVerify.OK)
}

// DiskVerify is the guest's GET /verify after a migration with a local
// disk: every record its writer made durable read back.
type DiskVerify struct {
	OK      bool   `json:"ok"`
	LastSeq uint64 `json:"lastSeq"`
	Checked uint64 `json:"checked"`
	Problem string `json:"problem,omitempty"`
	Error   string `json:"error,omitempty"`
}
