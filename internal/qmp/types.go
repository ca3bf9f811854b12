package qmp

import "strconv"

// Types in this file mirror QEMU 7.2's QAPI schema (qapi/migration.json,
// qapi/run-state.json, qapi/misc.json, qapi/net.json, qapi/sockets.json).
// Optional QAPI members are pointers or omitempty; a nil pointer means
// QEMU did not send the member.

// Deref returns *p, or the zero value if p is nil.
func Deref[T any](p *T) T {
	if p == nil {
		var zero T
		return zero
	}
	return *p
}

// Ptr returns a pointer to v; handy for MigrationParameters literals.
func Ptr[T any](v T) *T { return &v }

// VersionInfo is QEMU's version (query-version and the QMP greeting).
type VersionInfo struct {
	// QEMU is the numeric version.
	QEMU struct {
		Major int `json:"major"`
		Minor int `json:"minor"`
		Micro int `json:"micro"`
	} `json:"qemu"`
	// Package is the distribution package string, e.g. "Debian 1:7.2+dfsg-7".
	Package string `json:"package"`
}

// String returns "major.minor.micro".
func (v VersionInfo) String() string {
	return strconv.Itoa(v.QEMU.Major) + "." + strconv.Itoa(v.QEMU.Minor) + "." + strconv.Itoa(v.QEMU.Micro)
}

// AtLeast reports whether the version is >= major.minor.
func (v VersionInfo) AtLeast(major, minor int) bool {
	return v.QEMU.Major > major || v.QEMU.Major == major && v.QEMU.Minor >= minor
}

// RunState is QEMU's VM run state (query-status "status").
type RunState string

// RunState values of QEMU 7.2.
const (
	RunStateDebug         RunState = "debug"
	RunStateInMigrate     RunState = "inmigrate"
	RunStateInternalError RunState = "internal-error"
	RunStateIOError       RunState = "io-error"
	RunStatePaused        RunState = "paused"
	RunStatePostMigrate   RunState = "postmigrate"
	RunStatePrelaunch     RunState = "prelaunch"
	RunStateFinishMigrate RunState = "finish-migrate"
	RunStateRestoreVM     RunState = "restore-vm"
	RunStateRunning       RunState = "running"
	RunStateSaveVM        RunState = "save-vm"
	RunStateShutdown      RunState = "shutdown"
	RunStateSuspended     RunState = "suspended"
	RunStateWatchdog      RunState = "watchdog"
	RunStateGuestPanicked RunState = "guest-panicked"
	RunStateColo          RunState = "colo"
)

// StatusInfo is the reply of query-status.
type StatusInfo struct {
	// Status is the run state.
	Status RunState `json:"status"`
	// Running is true when the vCPUs are executing.
	Running bool `json:"running"`
	// Singlestep is true when the VM is in single-step mode (deprecated).
	Singlestep bool `json:"singlestep"`
}

// MigrationStatus is QAPI's MigrationStatus.
type MigrationStatus string

// MigrationStatus values of QEMU 7.2.
const (
	MigrationStatusNone            MigrationStatus = "none"
	MigrationStatusSetup           MigrationStatus = "setup"
	MigrationStatusCancelling      MigrationStatus = "cancelling"
	MigrationStatusCancelled       MigrationStatus = "cancelled"
	MigrationStatusActive          MigrationStatus = "active"
	MigrationStatusPostcopyActive  MigrationStatus = "postcopy-active"
	MigrationStatusPostcopyPaused  MigrationStatus = "postcopy-paused"
	MigrationStatusPostcopyRecover MigrationStatus = "postcopy-recover"
	MigrationStatusCompleted       MigrationStatus = "completed"
	MigrationStatusFailed          MigrationStatus = "failed"
	MigrationStatusColo            MigrationStatus = "colo"
	MigrationStatusPreSwitchover   MigrationStatus = "pre-switchover"
	MigrationStatusDevice          MigrationStatus = "device"
	MigrationStatusWaitUnplug      MigrationStatus = "wait-unplug"
)

// Finished reports whether s is a terminal state (completed, failed or
// cancelled).
func (s MigrationStatus) Finished() bool {
	return s == MigrationStatusCompleted || s == MigrationStatusFailed || s == MigrationStatusCancelled
}

// MigrationStats is QAPI's MigrationStats (the "ram" and "disk" members).
type MigrationStats struct {
	Transferred    int64   `json:"transferred"`      // bytes already sent
	Remaining      int64   `json:"remaining"`        // bytes still to send
	Total          int64   `json:"total"`            // bytes involved in the migration
	Duplicate      int64   `json:"duplicate"`        // zero pages (count)
	Skipped        int64   `json:"skipped"`          // deprecated, always 0 (count)
	Normal         int64   `json:"normal"`           // normal pages sent (count)
	NormalBytes    int64   `json:"normal-bytes"`     // bytes of normal pages
	DirtyPagesRate int64   `json:"dirty-pages-rate"` // pages dirtied per second
	Mbps           float64 `json:"mbps"`             // throughput, megabits/s
	DirtySyncCount int64   `json:"dirty-sync-count"` // dirty bitmap syncs (passes)
	// PostcopyRequests is the number of page requests from the destination.
	PostcopyRequests int64  `json:"postcopy-requests"`
	PageSize         int64  `json:"page-size"`        // bytes per page
	MultifdBytes     uint64 `json:"multifd-bytes"`    // bytes sent via multifd
	PagesPerSecond   uint64 `json:"pages-per-second"` // pages transferred/s
	PrecopyBytes     uint64 `json:"precopy-bytes"`    // bytes sent in precopy
	DowntimeBytes    uint64 `json:"downtime-bytes"`   // bytes sent while paused
	PostcopyBytes    uint64 `json:"postcopy-bytes"`   // bytes sent in postcopy
	// DirtySyncMissedZeroCopy counts syncs that could not avoid copying
	// (zero-copy-send).
	DirtySyncMissedZeroCopy uint64 `json:"dirty-sync-missed-zero-copy"`
}

// XBZRLECacheStats is QAPI's XBZRLECacheStats.
type XBZRLECacheStats struct {
	CacheSize     int64   `json:"cache-size"`      // bytes
	Bytes         int64   `json:"bytes"`           // bytes sent XBZRLE-encoded
	Pages         int64   `json:"pages"`           // pages sent XBZRLE-encoded
	CacheMiss     int64   `json:"cache-miss"`      // count
	CacheMissRate float64 `json:"cache-miss-rate"` // ratio 0..1
	EncodingRate  float64 `json:"encoding-rate"`   // ratio of encoded bytes
	Overflow      int64   `json:"overflow"`        // count
}

// CompressionStats is QAPI's CompressionStats ("compress" capability).
type CompressionStats struct {
	Pages           int64   `json:"pages"`            // pages compressed
	Busy            int64   `json:"busy"`             // times no thread was free
	BusyRate        float64 `json:"busy-rate"`        // ratio
	CompressedSize  int64   `json:"compressed-size"`  // bytes after compression
	CompressionRate float64 `json:"compression-rate"` // ratio
}

// VfioStats is QAPI's VfioStats.
type VfioStats struct {
	Transferred int64 `json:"transferred"` // bytes sent by VFIO devices
}

// SocketAddress is QAPI's SocketAddress flat union. Type selects which
// other members are meaningful: "inet" (Host, Port, ...), "unix" (Path,
// ...), "vsock" (CID, Port) or "fd" (Str).
type SocketAddress struct {
	Type      string `json:"type"`
	Host      string `json:"host,omitempty"`
	Port      string `json:"port,omitempty"` // a string in QAPI, e.g. "43517"
	Numeric   *bool  `json:"numeric,omitempty"`
	To        *int64 `json:"to,omitempty"`
	IPv4      *bool  `json:"ipv4,omitempty"`
	IPv6      *bool  `json:"ipv6,omitempty"`
	KeepAlive *bool  `json:"keep-alive,omitempty"`
	MPTCP     *bool  `json:"mptcp,omitempty"`
	Path      string `json:"path,omitempty"`
	Abstract  *bool  `json:"abstract,omitempty"`
	Tight     *bool  `json:"tight,omitempty"`
	CID       string `json:"cid,omitempty"`
	Str       string `json:"str,omitempty"`
}

// MigrationInfo is the reply of query-migrate (QEMU 7.2's MigrationInfo).
// QEMU returns {} before any migration, so Status is then empty; use
// CurrentStatus to read it as "none".
type MigrationInfo struct {
	Status      MigrationStatus   `json:"status,omitempty"`
	RAM         *MigrationStats   `json:"ram,omitempty"`  // while active/completed
	Disk        *MigrationStats   `json:"disk,omitempty"` // block migration only
	VFIO        *VfioStats        `json:"vfio,omitempty"`
	XBZRLECache *XBZRLECacheStats `json:"xbzrle-cache,omitempty"` // xbzrle on
	// TotalTime is milliseconds since the migration started (total once
	// finished).
	TotalTime *int64 `json:"total-time,omitempty"`
	// ExpectedDowntime is the estimated downtime in milliseconds (active only).
	ExpectedDowntime *int64 `json:"expected-downtime,omitempty"`
	// Downtime is the real downtime in milliseconds (completed only).
	Downtime *int64 `json:"downtime,omitempty"`
	// SetupTime is milliseconds spent before the first iteration.
	SetupTime *int64 `json:"setup-time,omitempty"`
	// CPUThrottlePercentage is the auto-converge throttle, percent.
	CPUThrottlePercentage *int64 `json:"cpu-throttle-percentage,omitempty"`
	// ErrorDesc is a human-readable reason for "failed"; do not parse it.
	ErrorDesc string `json:"error-desc,omitempty"`
	// BlockedReasons lists why an outgoing migration is blocked.
	BlockedReasons []string `json:"blocked-reasons,omitempty"`
	// PostcopyBlocktime is total all-vCPU block time in postcopy, ms.
	PostcopyBlocktime *uint32 `json:"postcopy-blocktime,omitempty"`
	// PostcopyVCPUBlocktime is per-vCPU postcopy block time, ms.
	PostcopyVCPUBlocktime []uint32 `json:"postcopy-vcpu-blocktime,omitempty"`
	// Compression holds "compress" capability statistics.
	Compression *CompressionStats `json:"compression,omitempty"`
	// SocketAddress lists the listening addresses of an incoming tcp/unix
	// migration (the real port when listening on port 0).
	SocketAddress []SocketAddress `json:"socket-address,omitempty"`
}

// CurrentStatus returns Status, or MigrationStatusNone if QEMU sent none.
func (i MigrationInfo) CurrentStatus() MigrationStatus {
	if i.Status == "" {
		return MigrationStatusNone
	}
	return i.Status
}

// Capability is QAPI's MigrationCapability.
type Capability string

// Capability values of QEMU 7.2.
const (
	CapXBZRLE                Capability = "xbzrle"
	CapRDMAPinAll            Capability = "rdma-pin-all"
	CapAutoConverge          Capability = "auto-converge"
	CapZeroBlocks            Capability = "zero-blocks"
	CapCompress              Capability = "compress"
	CapEvents                Capability = "events"
	CapPostcopyRAM           Capability = "postcopy-ram"
	CapXColo                 Capability = "x-colo"
	CapReleaseRAM            Capability = "release-ram"
	CapBlock                 Capability = "block"
	CapReturnPath            Capability = "return-path"
	CapPauseBeforeSwitchover Capability = "pause-before-switchover"
	CapMultifd               Capability = "multifd"
	CapDirtyBitmaps          Capability = "dirty-bitmaps"
	CapPostcopyBlocktime     Capability = "postcopy-blocktime"
	CapLateBlockActivate     Capability = "late-block-activate"
	CapXIgnoreShared         Capability = "x-ignore-shared"
	CapValidateUUID          Capability = "validate-uuid"
	CapBackgroundSnapshot    Capability = "background-snapshot"
	CapZeroCopySend          Capability = "zero-copy-send"
	CapPostcopyPreempt       Capability = "postcopy-preempt"
)

// CapabilityState is QAPI's MigrationCapabilityStatus.
type CapabilityState struct {
	Capability Capability `json:"capability"`
	State      bool       `json:"state"`
}

// CapabilityMap turns a capability list into a map.
func CapabilityMap(caps []CapabilityState) map[Capability]bool {
	m := make(map[Capability]bool, len(caps))
	for _, c := range caps {
		m[c.Capability] = c.State
	}
	return m
}

// MultiFDCompression is QAPI's MultiFDCompression.
type MultiFDCompression string

// MultiFDCompression values of QEMU 7.2.
const (
	MultiFDCompressionNone MultiFDCompression = "none"
	MultiFDCompressionZlib MultiFDCompression = "zlib"
	MultiFDCompressionZstd MultiFDCompression = "zstd"
)

// BitmapMigrationBitmapAlias is one bitmap of a BitmapMigrationNodeAlias.
type BitmapMigrationBitmapAlias struct {
	Name      string `json:"name"`
	Alias     string `json:"alias"`
	Transform *struct {
		Persistent *bool `json:"persistent,omitempty"`
	} `json:"transform,omitempty"`
}

// BitmapMigrationNodeAlias maps a block node's dirty bitmaps for migration.
type BitmapMigrationNodeAlias struct {
	NodeName string                       `json:"node-name"`
	Alias    string                       `json:"alias"`
	Bitmaps  []BitmapMigrationBitmapAlias `json:"bitmaps"`
}

// MigrationParameters is used both by migrate-set-parameters (only non-nil
// fields are sent) and query-migrate-parameters (QEMU fills every field).
type MigrationParameters struct {
	AnnounceInitial *int64 `json:"announce-initial,omitempty"` // ms before first announce
	AnnounceMax     *int64 `json:"announce-max,omitempty"`     // max ms between packets
	AnnounceRounds  *int64 `json:"announce-rounds,omitempty"`  // packets to send
	AnnounceStep    *int64 `json:"announce-step,omitempty"`    // ms increase per round

	CompressLevel      *int64 `json:"compress-level,omitempty"`       // 0-9
	CompressThreads    *int64 `json:"compress-threads,omitempty"`     // count
	CompressWaitThread *bool  `json:"compress-wait-thread,omitempty"` // wait for a free thread
	DecompressThreads  *int64 `json:"decompress-threads,omitempty"`   // count

	// ThrottleTriggerThreshold is the dirty/transferred ratio (percent)
	// above which auto-converge throttles.
	ThrottleTriggerThreshold *int64 `json:"throttle-trigger-threshold,omitempty"`
	CPUThrottleInitial       *int64 `json:"cpu-throttle-initial,omitempty"`   // percent
	CPUThrottleIncrement     *int64 `json:"cpu-throttle-increment,omitempty"` // percent
	CPUThrottleTailslow      *bool  `json:"cpu-throttle-tailslow,omitempty"`
	MaxCPUThrottle           *int64 `json:"max-cpu-throttle,omitempty"` // percent

	// TLSCreds is the id of a tls-creds object; "" disables TLS.
	TLSCreds    *string `json:"tls-creds,omitempty"`
	TLSHostname *string `json:"tls-hostname,omitempty"`
	TLSAuthz    *string `json:"tls-authz,omitempty"`

	// MaxBandwidth is the precopy speed limit in bytes per second.
	MaxBandwidth *int64 `json:"max-bandwidth,omitempty"`
	// DowntimeLimit is the maximum tolerated downtime in milliseconds.
	DowntimeLimit *int64 `json:"downtime-limit,omitempty"`
	// XCheckpointDelay is the COLO checkpoint delay in ms (unstable).
	XCheckpointDelay *int64 `json:"x-checkpoint-delay,omitempty"`
	BlockIncremental *bool  `json:"block-incremental,omitempty"`
	// MultifdChannels is the number of parallel multifd connections.
	MultifdChannels *int64 `json:"multifd-channels,omitempty"`
	// XBZRLECacheSize is the XBZRLE cache size in bytes.
	XBZRLECacheSize *int64 `json:"xbzrle-cache-size,omitempty"`
	// MaxPostcopyBandwidth is the postcopy background speed limit in bytes
	// per second (0 = unlimited).
	MaxPostcopyBandwidth *int64              `json:"max-postcopy-bandwidth,omitempty"`
	MultifdCompression   *MultiFDCompression `json:"multifd-compression,omitempty"`
	MultifdZlibLevel     *int64              `json:"multifd-zlib-level,omitempty"` // 0-9
	MultifdZstdLevel     *int64              `json:"multifd-zstd-level,omitempty"` // 0-20
	// BlockBitmapMapping is sent when non-nil; an empty non-nil slice
	// clears the mapping.
	BlockBitmapMapping []BitmapMigrationNodeAlias `json:"block-bitmap-mapping,omitzero"`
	// ZeroPageDetection says who detects zero pages (QEMU ≥ 9.0).
	ZeroPageDetection *ZeroPageDetection `json:"zero-page-detection,omitempty"`
	// AvailSwitchoverBandwidth is the rate (bytes per second) QEMU assumes
	// when it decides to switch over; 0 = its own estimate (QEMU ≥ 8.2).
	AvailSwitchoverBandwidth *int64 `json:"avail-switchover-bandwidth,omitempty"`
}

// ZeroPageDetection is QAPI's ZeroPageDetection (QEMU ≥ 9.0).
type ZeroPageDetection string

// ZeroPageDetection values.
const (
	// ZeroPageDetectionNone sends zero pages as data.
	ZeroPageDetectionNone ZeroPageDetection = "none"
	// ZeroPageDetectionLegacy checks in the migration thread.
	ZeroPageDetectionLegacy ZeroPageDetection = "legacy"
	// ZeroPageDetectionMultifd checks in the multifd channel threads.
	ZeroPageDetectionMultifd ZeroPageDetection = "multifd"
)

// MigrateOptions are the optional flags of the migrate command.
type MigrateOptions struct {
	// Blk also migrates block devices (deprecated block migration).
	Blk bool `json:"blk,omitempty"`
	// Inc makes block migration incremental (deprecated).
	Inc bool `json:"inc,omitempty"`
	// Resume resumes a paused postcopy migration (after migrate-recover on
	// the destination).
	Resume bool `json:"resume,omitempty"`
}

// DirtyRateMeasureMode is QAPI's DirtyRateMeasureMode.
type DirtyRateMeasureMode string

// DirtyRateMeasureMode values of QEMU 7.2.
const (
	DirtyRateModePageSampling DirtyRateMeasureMode = "page-sampling"
	DirtyRateModeDirtyRing    DirtyRateMeasureMode = "dirty-ring"
	DirtyRateModeDirtyBitmap  DirtyRateMeasureMode = "dirty-bitmap"
)

// DirtyRateStatus is QAPI's DirtyRateStatus.
type DirtyRateStatus string

// DirtyRateStatus values of QEMU 7.2.
const (
	DirtyRateStatusUnstarted DirtyRateStatus = "unstarted"
	DirtyRateStatusMeasuring DirtyRateStatus = "measuring"
	DirtyRateStatusMeasured  DirtyRateStatus = "measured"
)

// DirtyRateOptions are the optional arguments of calc-dirty-rate.
type DirtyRateOptions struct {
	// SamplePages is the number of sampled pages per GiB (page-sampling
	// mode only; QEMU's default is 512).
	SamplePages int64 `json:"sample-pages,omitempty"`
	// Mode defaults to page-sampling; dirty-ring needs KVM's dirty ring.
	Mode DirtyRateMeasureMode `json:"mode,omitempty"`
}

// DirtyRateVcpu is the per-vCPU dirty rate (dirty-ring mode).
type DirtyRateVcpu struct {
	ID        int64 `json:"id"`
	DirtyRate int64 `json:"dirty-rate"` // MB/s
}

// DirtyRateInfo is the reply of query-dirty-rate.
type DirtyRateInfo struct {
	// DirtyRate is the estimated dirty rate in MB/s; present once measured.
	DirtyRate *int64          `json:"dirty-rate,omitempty"`
	Status    DirtyRateStatus `json:"status"`
	// StartTime is when the measurement started, in seconds (QEMU's
	// monotonic clock).
	StartTime int64 `json:"start-time"`
	// CalcTime is the measurement period in seconds.
	CalcTime    int64                `json:"calc-time"`
	SamplePages int64                `json:"sample-pages"` // per GiB
	Mode        DirtyRateMeasureMode `json:"mode"`
	// VCPUDirtyRate is only filled in dirty-ring mode.
	VCPUDirtyRate []DirtyRateVcpu `json:"vcpu-dirty-rate,omitempty"`
}

// AnnounceParameters are the arguments of announce-self (all times in ms).
type AnnounceParameters struct {
	Initial int64 `json:"initial"` // delay before the first packet, ms
	Max     int64 `json:"max"`     // maximum delay between packets, ms
	Rounds  int64 `json:"rounds"`  // number of packets
	Step    int64 `json:"step"`    // delay increase per round, ms
	// Interfaces restricts the announcement to these NIC ids (all if empty).
	Interfaces []string `json:"interfaces,omitempty"`
	// ID names this announce timer so that it can be replaced later.
	ID string `json:"id,omitempty"`
}
