// Package balance is the pure core of the load balancer: from per-host
// CPU and memory use measured over a window it computes the imbalance and
// proposes the migrations that reduce it most per unit of migration cost
// (the planner's predicted bytes and downtime), only while the imbalance
// is above a threshold (with hysteresis) and never for a VM moved within
// its cooldown, so VMs do not ping-pong.
//
// It is pure: no I/O, no clock (the caller passes the time), no
// goroutines. The executor runs proposals under the migration policies'
// parallelism limits.
package balance

import (
	"errors"
	"time"

	"github.com/ferryvm/ferry/internal/placement"
	"github.com/ferryvm/ferry/internal/planner"
	"github.com/ferryvm/ferry/internal/qemucaps"
)

// ErrInvalidInput is wrapped by Propose's refusals.
var ErrInvalidInput = errors.New("invalid balancer input")

// Host is one host with its measured use.
type Host struct {
	// Host is its capacity and allocations (Ready: schedulable and
	// healthy; other hosts neither give nor take VMs).
	placement.Host
	// Caps is what its QEMU offers; nil means not checked.
	Caps *qemucaps.Caps
	// CPUUsed is the mean CPU use over the window, in cores (QEMU threads'
	// CPU time); it includes its VMs' use.
	CPUUsed float64
	// MemUsedMiB is the mean memory use over the window (guests' RSS).
	MemUsedMiB float64
}

// VM is one VM with its measured use.
type VM struct {
	Name      string
	Host      string
	VCPUs     int
	MemoryMiB int64
	// DiskBytes is the space its local disks take: a destination needs it
	// plus placement.DiskMargin free in its data directory
	// (Host.DiskFreeBytes), as the migration preflight checks. 0: none.
	DiskBytes int64
	// CPUUsed (cores) and RSSMiB are its mean use over the window.
	CPUUsed float64
	RSSMiB  float64
	// NonZeroBytes and DirtyRateBytesPerSec feed the planner.
	NonZeroBytes         int64
	DirtyRateBytesPerSec float64
	AntiAffinity         []string
	Labels               map[string]string
	Needs                qemucaps.VMNeeds
}

// Bandwidths gives the measured rate of a host pair.
type Bandwidths interface {
	Estimate(from, to string) (float64, bool)
}

// Defaults for zero Config fields.
const (
	DefaultThreshold      = 0.10
	DefaultHysteresis     = 0.04
	DefaultCooldown       = time.Hour
	DefaultMaxMoves       = 1000
	DefaultCandidates     = 16
	DefaultDowntimeWeight = 10
	// DefaultMinGainPerCost is the least imbalance reduction per unit of
	// cost a move must bring.
	DefaultMinGainPerCost = 1e-3
)

// Config tunes the balancer; zero fields take the defaults.
type Config struct {
	// Threshold: the balancer starts acting when the imbalance (the larger
	// of the standard deviations of hosts' CPU and memory utilisation,
	// 0..1) exceeds it.
	Threshold float64
	// Hysteresis: once acting, it goes on until the imbalance is at most
	// Threshold − Hysteresis, then rests until Threshold is exceeded again.
	Hysteresis float64
	// Cooldown: a VM moved less than this long ago is not proposed.
	Cooldown time.Duration
	// MaxMoves bounds the proposals of one plan.
	MaxMoves int
	// Candidates is how many least-loaded hosts are considered as
	// destinations per step.
	Candidates int
	// DowntimeWeight converts a second of predicted downtime into GiB of
	// transfer in the cost (cost = GiB sent + weight × downtime seconds).
	DowntimeWeight float64
	// MinGainPerCost is the least gain per unit of cost worth a move.
	MinGainPerCost float64
}

func (c Config) withDefaults() Config {
	set := func(v *float64, d float64) {
		if *v == 0 {
			*v = d
		}
	}
	set(&c.Threshold, DefaultThreshold)
	set(&c.Hysteresis, DefaultHysteresis)
	set(&c.DowntimeWeight, DefaultDowntimeWeight)
	set(&c.MinGainPerCost, DefaultMinGainPerCost)
	if c.Cooldown == 0 {
		c.Cooldown = DefaultCooldown
	}
	if c.MaxMoves == 0 {
		c.MaxMoves = DefaultMaxMoves
	}
	if c.Candidates == 0 {
		c.Candidates = DefaultCandidates
	}
	return c
}

// State is what the balancer remembers between plans.
type State struct {
	// Now is the plan's time (the caller's clock).
	Now time.Time
	// LastMoved is when each VM last migrated.
	LastMoved map[string]time.Time
	// Active says the balancer was acting (hysteresis).
	Active bool
}

// Proposal is one recommended migration.
type Proposal struct {
	VM, From, To string
	Strategy     string
	Prediction   planner.Prediction
	// Gain is the reduction of the objective: the sum over hosts of the
	// squared deviations of CPU and memory utilisation (the variances
	// times the number of hosts, so it does not shrink with fleet size);
	// Cost is GiB sent plus weighted downtime.
	Gain, Cost float64
	// Reason says why, for `ferry balance recommendations`.
	Reason string
}

// Result is Propose's answer.
type Result struct {
	// Before and After are the imbalance before the plan and predicted
	// after all proposals.
	Before, After float64
	// Active is the hysteresis state to pass to the next plan.
	Active bool
	// Proposals are in the order to run them.
	Proposals []Proposal
	// Cooling names VMs of the loaded hosts skipped for their cooldown.
	Cooling []string
	// Why says in one line why the plan stops where it does.
	Why string
}
