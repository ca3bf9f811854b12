package planner

import (
	"errors"
	"fmt"
	"math"
	"time"
)

// Defaults applied to zero-valued Inputs and Policy fields.
const (
	// DefaultDeviceStateBytes is the device (and vCPU) state assumed when
	// Inputs.DeviceStateBytes is 0.
	DefaultDeviceStateBytes = 1 << 20
	// DefaultSetupSeconds is the fixed start-up overhead of a migration.
	DefaultSetupSeconds = 0.1
	// DefaultSwitchoverSeconds is the ownership flip plus resume overhead.
	DefaultSwitchoverSeconds = 0.02
	// DefaultFinishSeconds is what a live migration takes after the guest
	// resumed on the destination until it is completed: the destination's
	// announce, the liveness check and the source's removal (measured
	// 100-150 ms in the idle bench).
	DefaultFinishSeconds = 0.12
	// DefaultColdBootSeconds is the time a cold-migrated guest needs to
	// power off and boot again on the destination.
	DefaultColdBootSeconds = 5.0
	// DefaultMaxDowntime is QEMU's default downtime-limit, used when
	// Inputs.MaxDowntime is 0.
	DefaultMaxDowntime = 300 * time.Millisecond
	// DefaultMaxThrottle is QEMU's max-cpu-throttle (percent).
	DefaultMaxThrottle = 99
	// DefaultThrottleInitial is QEMU's cpu-throttle-initial (percent).
	DefaultThrottleInitial = 20
	// DefaultThrottleIncrement is QEMU's cpu-throttle-increment (percent).
	DefaultThrottleIncrement = 10
	// MaxRounds is how many pre-copy rounds (without a throttle change) the
	// planner allows before it calls a migration non-converging.
	MaxRounds = 30
)

// Strategy names, as in Prediction.Strategy and Decision.Strategy.
const (
	// StrategyPrecopy is plain QEMU pre-copy.
	StrategyPrecopy = "precopy"
	// StrategyConverge is pre-copy with QEMU's auto-converge (vCPU throttling).
	StrategyConverge = "converge"
	// StrategyPostcopy switches to the destination after the first full round
	// and fetches the rest on demand.
	StrategyPostcopy = "postcopy"
	// StrategyHybrid is pre-copy while it converges, post-copy otherwise.
	StrategyHybrid = "hybrid"
	// StrategyCold stops the guest, copies and boots it on the destination.
	StrategyCold = "cold"
)

// Strategies lists every strategy in the order Predict returns them.
var Strategies = []string{StrategyPrecopy, StrategyConverge, StrategyPostcopy, StrategyHybrid, StrategyCold}

// strategyOrder is Strategies, safe from callers.
var strategyOrder = [...]string{StrategyPrecopy, StrategyConverge, StrategyPostcopy, StrategyHybrid, StrategyCold}

// ErrInvalidInput is matched (errors.Is) by the error of Validate and by
// Choose's refusal of inputs that make no sense.
var ErrInvalidInput = errors.New("invalid planner input")

// Inputs are what the planner knows about one VM, one link and the policy.
// Byte counts are bytes, rates bytes per second.
type Inputs struct {
	// MemoryBytes is the guest RAM size; it must be positive.
	MemoryBytes int64
	// NonZeroBytes estimates the guest RAM that is not zero (the bytes
	// round 1 really sends); 0 means unknown and assumes MemoryBytes.
	NonZeroBytes int64
	// DirtyRateBytesPerSec is the measured dirty rate (distinct pages per
	// second, e.g. QEMU's calc-dirty-rate).
	DirtyRateBytesPerSec float64
	// WSSBytes is the writable working set: the distinct pages dirtied
	// within about one second; 0 means unknown and assumes
	// min(MemoryBytes, DirtyRateBytesPerSec·1 s).
	WSSBytes int64
	// BandwidthBytesPerSec is the effective link rate; 0 means unknown, and
	// then nothing can be predicted.
	BandwidthBytesPerSec float64
	// DeviceStateBytes is the device and vCPU state sent while the guest is
	// paused; 0 means DefaultDeviceStateBytes.
	DeviceStateBytes int64
	// SetupSeconds is the fixed start-up overhead; 0 means
	// DefaultSetupSeconds.
	SetupSeconds float64
	// SwitchoverSeconds is the ownership flip plus resume overhead inside
	// the downtime; 0 means DefaultSwitchoverSeconds.
	SwitchoverSeconds float64
	// FinishSeconds is a live migration's time from the guest's resume on
	// the destination to completed; 0 means DefaultFinishSeconds.
	FinishSeconds float64
	// StreamBytesPerSec is what one migration stream sends when the link
	// is not the limit (DefaultStreamBytesPerSec when 0): the rate of a
	// strategy that runs one stream is min(link, stream), of a multifd
	// pre-copy min(link, channels × stream).
	StreamBytesPerSec float64
	// MirrorBytesPerSec is what one local disk's NBD mirror sends when the
	// link is not the limit (0: DefaultMirrorBytesPerSec; an encrypted
	// mirror: DefaultTLSMirrorBytesPerSec).
	MirrorBytesPerSec float64
	// MultifdChannels is the operator's --multifd for the pre-copy
	// strategies (0: as Tune chooses, from the link, RTT and the data).
	MultifdChannels int
	// MaxChannels bounds the channels the channel rule picks on its own
	// (TuneInputs.MaxChannels; 0: MaxMultifdChannels).
	MaxChannels int
	// Zstd says both hosts' QEMU have multifd zstd: a pre-copy then runs
	// through zstd channels where Tune would turn them on, at the rate
	// of guest RAM they reach (CompressBytesPerSec, CompressRatio: as in
	// TuneInputs).
	Zstd bool
	// CompressBytesPerSec: see TuneInputs.
	CompressBytesPerSec float64
	// CompressRatio: see TuneInputs.
	CompressRatio float64
	// RTT is the host pair's round-trip time (0: unknown), for the
	// channels Tune chooses.
	RTT time.Duration
	// LinkStall is the time the pair's recent migrations lost, each, to a
	// link that carried nothing (outages, learned by the server; 0: none).
	// Every strategy that crosses the link takes that much longer, and a
	// cold migration's guest stays off for it too.
	LinkStall time.Duration
	// ColdBootSeconds is the power-off plus boot time of a cold migration;
	// 0 means DefaultColdBootSeconds.
	ColdBootSeconds float64
	// MaxDowntime is the longest acceptable guest pause; 0 means
	// DefaultMaxDowntime.
	MaxDowntime time.Duration
	// StepDowntime says the migration's controller steps QEMU's
	// downtime-limit up from DowntimeStepStart only as far as convergence
	// needs (ControllerOptions.StepDowntime): pre-copy then switches over
	// with a smaller final dirty set, after more rounds, than at the cap.
	StepDowntime bool
	// Policy says which strategies may be used.
	Policy Policy
	// DiskBytes is the data of the VM's local disks (their allocated
	// bytes): a live migration mirrors it before the RAM transfer starts.
	DiskBytes int64
	// DiskWriteBytesPerSec is the guest's disk write rate while the disks
	// are mirrored (the mirror sends those writes too); 0 means unknown.
	DiskWriteBytesPerSec float64
}

// Policy says which strategies may be used and within which limits.
type Policy struct {
	// AllowPrecopy allows plain pre-copy.
	AllowPrecopy bool
	// AllowConverge allows pre-copy with auto-converge (throttled vCPUs);
	// the controller also needs it to throttle a running migration.
	AllowConverge bool
	// AllowPostcopy allows post-copy, and with it hybrid.
	AllowPostcopy bool
	// AllowCold allows stopping and rebooting the guest.
	AllowCold bool
	// MaxThrottle is the highest vCPU throttle in percent (1..99); 0 means
	// DefaultMaxThrottle.
	MaxThrottle int
	// ThrottleInitial is QEMU's cpu-throttle-initial in percent; 0 means
	// DefaultThrottleInitial.
	ThrottleInitial int
	// ThrottleIncrement is QEMU's cpu-throttle-increment in percent; 0 means
	// DefaultThrottleIncrement.
	ThrottleIncrement int
	// MaxTotal bounds the whole migration; 0 means no limit.
	MaxTotal time.Duration
}

// Validate reports inputs that make no sense (negative sizes, NaN rates, a
// throttle outside 0..99). A zero bandwidth is valid: it means unknown.
func (in Inputs) Validate() error {
	bad := func(format string, a ...any) error {
		return fmt.Errorf("%w: "+format, append([]any{ErrInvalidInput}, a...)...)
	}
	if in.MemoryBytes <= 0 {
		return bad("memory must be positive, got %d bytes", in.MemoryBytes)
	}
	for _, f := range []struct {
		name string
		v    int64
	}{{"non-zero bytes", in.NonZeroBytes}, {"WSS", in.WSSBytes}, {"device state", in.DeviceStateBytes}, {"disk bytes", in.DiskBytes}} {
		if f.v < 0 {
			return bad("%s must not be negative, got %d", f.name, f.v)
		}
	}
	for _, f := range []struct {
		name string
		v    float64
	}{
		{"dirty rate", in.DirtyRateBytesPerSec}, {"bandwidth", in.BandwidthBytesPerSec}, {"setup seconds", in.SetupSeconds},
		{"switchover seconds", in.SwitchoverSeconds}, {"cold boot seconds", in.ColdBootSeconds},
		{"disk write rate", in.DiskWriteBytesPerSec}, {"compression rate", in.CompressBytesPerSec},
		{"compression ratio", in.CompressRatio},
	} {
		if math.IsNaN(f.v) || math.IsInf(f.v, 0) || f.v < 0 {
			return bad("%s must be a finite number ≥ 0, got %v", f.name, f.v)
		}
	}
	if in.MaxDowntime < 0 {
		return bad("max downtime must not be negative, got %s", in.MaxDowntime)
	}
	if in.LinkStall < 0 {
		return bad("link stall must not be negative, got %s", in.LinkStall)
	}
	p := in.Policy
	if p.MaxTotal < 0 {
		return bad("max total must not be negative, got %s", p.MaxTotal)
	}
	for _, f := range []struct {
		name string
		v    int
	}{{"max throttle", p.MaxThrottle}, {"initial throttle", p.ThrottleInitial}, {"throttle increment", p.ThrottleIncrement}} {
		if f.v < 0 || f.v > 99 {
			return bad("%s must be between 0 and 99 percent, got %d", f.name, f.v)
		}
	}
	return nil
}

// model is Inputs with defaults applied, in float64 bytes and seconds.
type model struct {
	mem, nz, r, w, b, s float64
	setup, sw, boot     float64
	finish              float64 // seconds after the destination resumed
	link                float64 // BandwidthBytesPerSec; b is the rate of the strategy predicted
	first               float64 // round 1's rate when it differs from b (zstd on RAM that compresses); 0: b
	stream              float64 // one stream's rate
	mirror              float64 // one disk mirror's rate
	channels            int     // MultifdChannels
	maxChannels         int     // MaxChannels
	zstd                bool    // Zstd
	compress, ratio     float64 // CompressBytesPerSec, CompressRatio
	rtt                 float64 // seconds
	stall               float64 // LinkStall, seconds
	maxDown             float64 // seconds
	limit               float64 // QEMU downtime-limit in seconds (whole ms, ≥ 1 ms)
	thr                 float64 // B·limit: the dirty set at which QEMU switches over
	maxThrottle         int
	initThrottle        int
	incThrottle         int
	maxTotal            float64 // seconds, 0 = none
	stepped             bool    // Inputs.StepDowntime
	pol                 Policy
	disk, dw            float64 // local disks' data (bytes) and the guest's disk write rate (bytes/s)
}

// newModel applies the defaults. It fails only on invalid inputs; a zero
// bandwidth gives a model with b == 0 that the callers must check.
func newModel(in Inputs) (model, error) {
	if err := in.Validate(); err != nil {
		return model{}, err
	}
	m := model{
		mem:          float64(in.MemoryBytes),
		nz:           float64(in.NonZeroBytes),
		r:            in.DirtyRateBytesPerSec,
		w:            float64(in.WSSBytes),
		b:            in.BandwidthBytesPerSec,
		s:            float64(in.DeviceStateBytes),
		setup:        orF(in.SetupSeconds, DefaultSetupSeconds),
		sw:           orF(in.SwitchoverSeconds, DefaultSwitchoverSeconds),
		finish:       orF(in.FinishSeconds, DefaultFinishSeconds),
		link:         in.BandwidthBytesPerSec,
		stream:       orF(in.StreamBytesPerSec, DefaultStreamBytesPerSec),
		mirror:       orF(in.MirrorBytesPerSec, DefaultMirrorBytesPerSec),
		channels:     in.MultifdChannels,
		maxChannels:  in.MaxChannels,
		zstd:         in.Zstd,
		compress:     in.CompressBytesPerSec,
		ratio:        in.CompressRatio,
		rtt:          in.RTT.Seconds(),
		stall:        in.LinkStall.Seconds(),
		boot:         orF(in.ColdBootSeconds, DefaultColdBootSeconds),
		maxDown:      in.MaxDowntime.Seconds(),
		maxThrottle:  orI(in.Policy.MaxThrottle, DefaultMaxThrottle),
		initThrottle: orI(in.Policy.ThrottleInitial, DefaultThrottleInitial),
		incThrottle:  orI(in.Policy.ThrottleIncrement, DefaultThrottleIncrement),
		maxTotal:     in.Policy.MaxTotal.Seconds(),
		stepped:      in.StepDowntime,
		pol:          in.Policy,
		disk:         float64(in.DiskBytes),
		dw:           in.DiskWriteBytesPerSec,
	}
	if m.nz == 0 || m.nz > m.mem {
		m.nz = m.mem
	}
	if m.w == 0 {
		m.w = m.r * 1
	}
	m.w = math.Min(m.w, m.mem)
	if m.s == 0 {
		m.s = DefaultDeviceStateBytes
	}
	if in.MaxDowntime == 0 {
		m.maxDown = DefaultMaxDowntime.Seconds()
	}
	m.initThrottle = min(m.initThrottle, m.maxThrottle)
	if m.b > 0 {
		m.setBandwidth(m.b)
	}
	return m, nil
}

// setBandwidth sets B and what depends on it: the downtime-limit QEMU gets
// (what is left of MaxDowntime after the device state and the switchover,
// in whole milliseconds, at least 1 ms) and the switchover threshold B·L.
func (m *model) setBandwidth(b float64) {
	m.b = b
	budgetMs := math.Floor((m.maxDown-m.s/b-m.sw)*1000 + 1e-6)
	m.limit = math.Max(budgetMs, 1) / 1000
	m.thr = b * m.limit
}

// fixedDowntime is the part of any live downtime that RAM does not cause:
// the device state's transfer plus the switchover overhead.
func (m *model) fixedDowntime() float64 { return m.s/m.b + m.sw }

// dirtied is the bytes dirtied during a round of t seconds at throttle p
// percent: the measured rate, or the working set rewritten within a second,
// whichever is more, never more than the guest's RAM.
func (m *model) dirtied(t float64, p int) float64 {
	f := 1 - float64(p)/100
	return math.Min(m.mem, f*math.Max(m.r*t, m.w*math.Min(t, 1)))
}

// nextThrottle is the throttle after one more auto-converge step.
func (m *model) nextThrottle(p int) int {
	if p == 0 {
		return m.initThrottle
	}
	return min(p+m.incThrottle, m.maxThrottle)
}

// Allows reports whether the policy allows strategy. Hybrid needs only
// AllowPostcopy: its pre-copy phase is the first round every post-copy
// migration does anyway.
func (p Policy) Allows(strategy string) bool {
	switch strategy {
	case StrategyPrecopy:
		return p.AllowPrecopy
	case StrategyConverge:
		return p.AllowConverge
	case StrategyPostcopy, StrategyHybrid:
		return p.AllowPostcopy
	case StrategyCold:
		return p.AllowCold
	}
	return false
}

func orF(v, def float64) float64 {
	if v == 0 {
		return def
	}
	return v
}

func orI(v, def int) int {
	if v == 0 {
		return def
	}
	return v
}

// seconds converts float seconds to a Duration rounded to the microsecond,
// saturating at the largest Duration.
func seconds(s float64) time.Duration {
	us := math.Round(s * 1e6)
	if us >= float64(math.MaxInt64/int64(time.Microsecond)) {
		return time.Duration(math.MaxInt64)
	}
	return time.Duration(us) * time.Microsecond
}
