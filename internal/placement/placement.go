// Package placement chooses a host for a VM. It is pure: it takes numbers
// and returns a decision, with no I/O.
package placement

import (
	"errors"
	"fmt"
	"sort"
	"strings"
)

// ErrNoCapacity means no host can take the VM; the error text says why each
// host was rejected.
var ErrNoCapacity = errors.New("no host has capacity")

// Host is what placement knows about one candidate.
type Host struct {
	Name  string
	Ready bool
	// CPUs and MemoryMiB are the host's totals.
	CPUs      int
	MemoryMiB int64
	// AllocatedVCPUs and AllocatedMemoryMiB are what VMs placed there claim.
	AllocatedVCPUs     int
	AllocatedMemoryMiB int64
	// DiskGiB and AllocatedDiskGiB are the host's local disk and what VMs
	// claim of it; DiskGiB 0 means disk is not checked.
	DiskGiB          int64
	AllocatedDiskGiB int64
	// DiskFreeBytes is the free space its agent reports in its data
	// directory, where local disks are created (0: not reported, not
	// checked); AllocatedDiskBytes is what placements since that report
	// claim of it (Place).
	DiskFreeBytes      int64
	AllocatedDiskBytes int64
	// Groups counts, per anti-affinity group, the VMs of that group placed
	// on the host.
	Groups map[string]int
}

// Request is the VM to place.
type Request struct {
	VCPUs     int
	MemoryMiB int64
	// Exclude lists hosts that must not be chosen (e.g. the source of a
	// migration).
	Exclude []string
	// DiskGiB is the local disk the VM needs on the host.
	DiskGiB int64
	// DiskBytes is the space the VM's local disks take on the host (their
	// allocated size; DiskMargin is added when checking DiskFreeBytes).
	DiskBytes int64
	// AntiAffinity lists the VM's anti-affinity groups: no two VMs of one
	// group on the same host.
	AntiAffinity []string
}

// ReservedMiB is memory kept free on every host for the host itself and
// QEMU's own overhead.
const ReservedMiB = 256

// DiskMargin is the space left free on top of a VM's local disks: the
// larger of DiskMarginMin and DiskMarginFraction of their size (disks
// grow, and a full file system stops every VM on it).
func DiskMargin(diskBytes int64) int64 {
	return max(DiskMarginMin, int64(float64(diskBytes)*DiskMarginFraction))
}

// The disk margin's floor and fraction (DiskMargin).
const (
	DiskMarginMin      = 256 << 20
	DiskMarginFraction = 0.10
)

// MaxVCPUOvercommit is how many vCPUs may be placed per host CPU.
const MaxVCPUOvercommit = 4

// Choose returns the ready host that fits the request (Check) with the
// best Score — the most room left in its scarcest resource, the scoring
// the evacuation planner and the balancer use — ties broken by free
// memory, then name. It returns ErrNoCapacity with the reason for every
// rejected host when none fits.
func Choose(hosts []Host, req Request) (string, error) {
	excluded := map[string]bool{}
	for _, n := range req.Exclude {
		excluded[n] = true
	}
	type cand struct {
		name  string
		score float64
		free  int64
	}
	var cands []cand
	var reasons []string
	for _, h := range hosts {
		if excluded[h.Name] {
			reasons = append(reasons, h.Name+": excluded")
			continue
		}
		if r := Check(h, req); r != nil {
			reasons = append(reasons, h.Name+": "+r.Detail)
			continue
		}
		cands = append(cands, cand{h.Name, Score(h, req), h.FreeMemoryMiB()})
	}
	if len(cands) == 0 {
		if len(hosts) == 0 {
			return "", fmt.Errorf("%w: no hosts registered (start `ferry agent`)", ErrNoCapacity)
		}
		sort.Strings(reasons)
		return "", fmt.Errorf("%w: %s", ErrNoCapacity, strings.Join(reasons, "; "))
	}
	sort.Slice(cands, func(i, j int) bool {
		if cands[i].score != cands[j].score {
			return cands[i].score > cands[j].score
		}
		if cands[i].free != cands[j].free {
			return cands[i].free > cands[j].free
		}
		return cands[i].name < cands[j].name
	})
	return cands[0].name, nil
}
