package dashboard

import (
	"sort"
	"time"

	ferryv1 "github.com/ferryvm/ferry/gen/ferry/v1"
	"github.com/ferryvm/ferry/internal/migplot"
)

// Limits of a Snapshot.
const (
	// MaxFinished is how many finished migrations a snapshot lists.
	MaxFinished = 20
	// MaxEvents is how many events a snapshot lists.
	MaxEvents = 50
)

// Input is the cluster state a Snapshot is made from.
type Input struct {
	Hosts      []*ferryv1.Host
	VMs        []*ferryv1.VM
	Migrations []*ferryv1.Migration // without samples
	Events     []*ferryv1.Event     // oldest first
	// Evacuations are the hosts' maintenance records; Balance the
	// balancer's last plan (nil: none yet, or no balancer).
	Evacuations []*ferryv1.Evacuation
	Balance     *ferryv1.BalanceResponse
}

// Snapshot is what the page shows, ready to render (JSON).
type Snapshot struct {
	At       time.Time   `json:"at"`
	Hosts    []Host      `json:"hosts"`
	VMs      []VM        `json:"vms"`
	Live     []Migration `json:"live"`     // in flight, oldest first
	Finished []Migration `json:"finished"` // newest first, at most MaxFinished
	Events   []Event     `json:"events"`   // newest first, at most MaxEvents
	// Evacuations are by host name; Balancer is the balancer's last plan
	// (absent before its first).
	Evacuations []Evacuation `json:"evacuations"`
	Balancer    *Balancer    `json:"balancer,omitempty"`
}

// Host is one host's row.
type Host struct {
	Name  string `json:"name"`
	State string `json:"state"`
	// CPUs and VCPUs are the host's CPUs and the vCPUs of its VMs.
	CPUs  int32 `json:"cpus"`
	VCPUs int32 `json:"vcpus"`
	// MemoryMiB and UsedMemoryMiB are its memory and its VMs'.
	MemoryMiB     int64 `json:"memoryMiB"`
	UsedMemoryMiB int64 `json:"usedMemoryMiB"`
	VMs           int32 `json:"vms"`
	// CPUUse and MemoryUse are the fractions allocated (0..1, more when
	// overcommitted): the capacity bars.
	CPUUse    float64 `json:"cpuUse"`
	MemoryUse float64 `json:"memoryUse"`
	// HeartbeatAgeSeconds is the time since its agent last reported (-1:
	// never).
	HeartbeatAgeSeconds float64 `json:"heartbeatAgeSeconds"`
	Version             string  `json:"version,omitempty"`
	QEMU                string  `json:"qemu,omitempty"`
	// Health is healthy, degraded, failed (the agent's checks) or
	// unreachable (its lease expired); HealthDetail the checks' reasons.
	Health       string `json:"health"`
	HealthDetail string `json:"healthDetail,omitempty"`
	// Maintenance is set while the host has a maintenance record; its
	// evacuation's state is Evacuation (running, cancelling, completed,
	// incomplete, cancelled).
	Maintenance bool   `json:"maintenance"`
	Evacuation  string `json:"evacuation,omitempty"`
}

// VM is one VM's row.
type VM struct {
	Name      string `json:"name"`
	Host      string `json:"host"`
	State     string `json:"state"`
	VCPUs     int32  `json:"vcpus"`
	MemoryMiB int64  `json:"memoryMiB"`
	// UptimeSeconds is since its QEMU last started (0: not running).
	UptimeSeconds float64 `json:"uptimeSeconds"`
	MigrationID   string  `json:"migrationId,omitempty"`
	Message       string  `json:"message,omitempty"`
}

// Migration is one migration's row or report.
type Migration struct {
	ID       string `json:"id"`
	VM       string `json:"vm"`
	From     string `json:"from"`
	To       string `json:"to"`
	Strategy string `json:"strategy"`
	Status   string `json:"status"`
	State    string `json:"state"`
	Error    string `json:"error,omitempty"`
	// Progress is the fraction of the RAM sent (0..1): transferred over
	// transferred plus remaining. Done is 1 for a completed migration.
	Progress         float64 `json:"progress"`
	RemainingBytes   int64   `json:"remainingBytes"`
	TransferredBytes int64   `json:"transferredBytes"`
	DirtyRateMiBps   float64 `json:"dirtyRateMiBps"`
	BandwidthMiBps   float64 `json:"bandwidthMiBps"`
	Rounds           int64   `json:"rounds"`
	// ElapsedMs is the migration's age while it runs, its total after.
	ElapsedMs int64 `json:"elapsedMs"`
	// DowntimeMs is the measured pause (its parts in Phases).
	DowntimeMs int64   `json:"downtimeMs"`
	Phases     *Phases `json:"phases,omitempty"`
	// PredictedTotalMs and PredictedDowntimeMs are the planner's forecast
	// (0: none).
	PredictedTotalMs    int64 `json:"predictedTotalMs"`
	PredictedDowntimeMs int64 `json:"predictedDowntimeMs"`
	// Predicted says the planner forecast the strategy that ran; it
	// predicted no convergence when PredictedConverges is false (the
	// forecast's times are then 0 and PredictionReason says why).
	Predicted          bool   `json:"predicted"`
	PredictedConverges bool   `json:"predictedConverges"`
	PredictionReason   string `json:"predictionReason,omitempty"`
	// PlannedDirtyRateMiBps and PlannedBandwidthMiBps are the plan's
	// inputs (0: no plan).
	PlannedDirtyRateMiBps float64    `json:"plannedDirtyRateMiBps"`
	PlannedBandwidthMiBps float64    `json:"plannedBandwidthMiBps"`
	Warnings              []string   `json:"warnings,omitempty"`
	StartedAt             *time.Time `json:"startedAt,omitempty"`
	FinishedAt            *time.Time `json:"finishedAt,omitempty"`
}

// Phases are the parts of the pause (ferryv1.DowntimePhases), in ms.
type Phases struct {
	StopMs          int64 `json:"stopMs"`
	FinalRoundMs    int64 `json:"finalRoundMs"`
	SwitchoverMs    int64 `json:"switchoverMs"`
	DeviceStateMs   int64 `json:"deviceStateMs"`
	ResumeMs        int64 `json:"resumeMs"`
	TotalMs         int64 `json:"totalMs"`
	FinalRoundBytes int64 `json:"finalRoundBytes"`
}

// Event is one state change.
type Event struct {
	ID      string    `json:"id"`
	Time    time.Time `json:"time"`
	Kind    string    `json:"kind"`
	Name    string    `json:"name"`
	VM      string    `json:"vm,omitempty"`
	From    string    `json:"from"`
	To      string    `json:"to"`
	Message string    `json:"message,omitempty"`
}

// Build makes the snapshot of in at now. It is pure.
func Build(in Input, now time.Time) Snapshot {
	s := Snapshot{At: now, Hosts: []Host{}, VMs: []VM{}, Live: []Migration{}, Finished: []Migration{}, Events: []Event{}, Evacuations: []Evacuation{},
		Balancer: balancerView(in.Balance)}
	evac := map[string]string{}
	for _, e := range in.Evacuations {
		evac[e.GetHost()] = e.GetState()
		s.Evacuations = append(s.Evacuations, evacuationRow(e, now))
	}
	sort.Slice(s.Evacuations, func(i, j int) bool { return s.Evacuations[i].Host < s.Evacuations[j].Host })
	for _, h := range in.Hosts {
		r := hostRow(h, now)
		if st, ok := evac[r.Name]; ok {
			r.Maintenance, r.Evacuation = true, st
		}
		s.Hosts = append(s.Hosts, r)
	}
	sort.Slice(s.Hosts, func(i, j int) bool { return s.Hosts[i].Name < s.Hosts[j].Name })
	for _, v := range in.VMs {
		s.VMs = append(s.VMs, vmRow(v, now))
	}
	sort.Slice(s.VMs, func(i, j int) bool { return s.VMs[i].Name < s.VMs[j].Name })
	for _, m := range in.Migrations {
		row := migrationRow(m, now)
		if IsLive(m) {
			s.Live = append(s.Live, row)
		} else {
			s.Finished = append(s.Finished, row)
		}
	}
	sort.SliceStable(s.Live, func(i, j int) bool { return startOf(s.Live[i]).Before(startOf(s.Live[j])) })
	sort.SliceStable(s.Finished, func(i, j int) bool { return endOf(s.Finished[i]).After(endOf(s.Finished[j])) })
	if len(s.Finished) > MaxFinished {
		s.Finished = s.Finished[:MaxFinished]
	}
	for i := len(in.Events) - 1; i >= 0 && len(s.Events) < MaxEvents; i-- {
		e := in.Events[i]
		s.Events = append(s.Events, Event{ID: e.GetId(), Time: e.GetTime().AsTime(), Kind: e.GetKind(), Name: e.GetName(), VM: e.GetVm(),
			From: e.GetFromState(), To: e.GetToState(), Message: e.GetMessage()})
	}
	return s
}

// IsLive reports whether m is in flight: not completed, failed or
// cancelled (a record the server could not read counts as in flight).
func IsLive(m *ferryv1.Migration) bool {
	switch m.GetStatus() {
	case "completed", "failed", "cancelled":
		return false
	}
	return true
}

func hostRow(h *ferryv1.Host, now time.Time) Host {
	c := h.GetCapacity()
	r := Host{Name: h.GetName(), State: h.GetState(), CPUs: c.GetCpus(), VCPUs: c.GetAllocatedVcpus(), MemoryMiB: c.GetMemoryMib(),
		UsedMemoryMiB: c.GetAllocatedMemoryMib(), VMs: c.GetVms(), HeartbeatAgeSeconds: -1, Version: h.GetFerryVersion(), QEMU: h.GetQemu().GetVersion(),
		Health: health(h), HealthDetail: h.GetHealthDetail(), Maintenance: h.GetMaintenance()}
	r.CPUUse = fraction(float64(r.VCPUs), float64(r.CPUs))
	r.MemoryUse = fraction(float64(r.UsedMemoryMiB), float64(r.MemoryMiB))
	if h.GetLastSeen() != nil {
		r.HeartbeatAgeSeconds = max(0, now.Sub(h.GetLastSeen().AsTime()).Seconds())
	}
	return r
}

func vmRow(v *ferryv1.VM, now time.Time) VM {
	r := VM{Name: v.GetSpec().GetName(), Host: v.GetHost(), State: v.GetState(), VCPUs: v.GetSpec().GetVcpus(),
		MemoryMiB: v.GetSpec().GetMemoryMib(), MigrationID: v.GetMigrationId(), Message: v.GetMessage()}
	if (r.State == "running" || r.State == "migrating") && v.GetStartedAt() != nil {
		r.UptimeSeconds = max(0, now.Sub(v.GetStartedAt().AsTime()).Seconds())
	}
	return r
}

func migrationRow(m *ferryv1.Migration, now time.Time) Migration {
	r := Migration{ID: m.GetId(), VM: m.GetVm(), From: m.GetFrom(), To: m.GetTo(), Strategy: m.GetStrategy(), Status: m.GetStatus(),
		State: m.GetState(), Error: m.GetError(), RemainingBytes: m.GetRemainingBytes(), TransferredBytes: m.GetTransferredBytes(),
		DirtyRateMiBps: m.GetDirtyRateMibps(), BandwidthMiBps: m.GetBandwidthMibps(), Rounds: m.GetRounds(), DowntimeMs: migplot.DowntimeMs(m),
		PredictedTotalMs: m.GetPredicted().GetTotalMs(), PredictedDowntimeMs: m.GetPredicted().GetDowntimeMs(),
		Warnings: m.GetWarnings(), ElapsedMs: m.GetTotalMs()}
	if p := m.GetPredicted(); p != nil {
		r.Predicted, r.PredictedConverges, r.PredictionReason = true, p.GetConverges(), p.GetReason()
	}
	if in := m.GetPlan().GetInputs(); in != nil {
		r.PlannedDirtyRateMiBps, r.PlannedBandwidthMiBps = in.GetDirtyRateMibps(), in.GetBandwidthMibps()
	}
	if p := m.GetDowntimePhases(); p != nil {
		r.Phases = &Phases{StopMs: p.GetStopMs(), FinalRoundMs: p.GetFinalRoundMs(), SwitchoverMs: p.GetSwitchoverMs(), DeviceStateMs: p.GetDeviceStateMs(),
			ResumeMs: p.GetResumeMs(), TotalMs: p.GetTotalMs(), FinalRoundBytes: p.GetFinalRoundBytes()}
	}
	if sent := r.TransferredBytes + r.RemainingBytes; sent > 0 {
		r.Progress = fraction(float64(r.TransferredBytes), float64(sent))
	}
	if r.Status == "completed" {
		r.Progress = 1
	}
	if t := m.GetStartedAt(); t != nil {
		st := t.AsTime()
		r.StartedAt = &st
		if r.Status == "running" {
			r.ElapsedMs = max(0, now.Sub(st).Milliseconds())
		}
	}
	if t := m.GetFinishedAt(); t != nil {
		ft := t.AsTime()
		r.FinishedAt = &ft
	}
	return r
}

func fraction(a, b float64) float64 {
	if b <= 0 {
		return 0
	}
	return a / b
}

func startOf(m Migration) time.Time {
	if m.StartedAt != nil {
		return *m.StartedAt
	}
	return time.Time{}
}

func endOf(m Migration) time.Time {
	if m.FinishedAt != nil {
		return *m.FinishedAt
	}
	return startOf(m)
}
