package placement

import "fmt"

// RejectKind says which constraint a host fails; callers branch on it to
// say what would help.
type RejectKind string

// The reasons Check rejects a host for.
const (
	RejectUnready      RejectKind = "unready"
	RejectMemory       RejectKind = "memory"
	RejectVCPUs        RejectKind = "vcpus"
	RejectDisk         RejectKind = "disk"
	RejectAntiAffinity RejectKind = "anti-affinity"
)

// Reject is why one host cannot take one request.
type Reject struct {
	Kind RejectKind
	// Detail says it in words, without the host's name.
	Detail string
}

// FreeMemoryMiB is the memory still placeable on h.
func (h Host) FreeMemoryMiB() int64 { return h.MemoryMiB - ReservedMiB - h.AllocatedMemoryMiB }

// Check says whether h can take req (readiness, memory, vCPU overcommit,
// disk, anti-affinity); nil means it fits. Exclusion is the caller's.
func Check(h Host, req Request) *Reject {
	free := h.FreeMemoryMiB()
	switch {
	case !h.Ready:
		return &Reject{RejectUnready, "unreachable"}
	case free < req.MemoryMiB:
		return &Reject{RejectMemory, fmt.Sprintf("%d MiB free, need %d", max(free, 0), req.MemoryMiB)}
	case h.AllocatedVCPUs+req.VCPUs > h.CPUs*MaxVCPUOvercommit:
		return &Reject{RejectVCPUs, fmt.Sprintf("%d vCPUs allocated on %d CPUs, limit %dx", h.AllocatedVCPUs, h.CPUs, MaxVCPUOvercommit)}
	case h.DiskGiB > 0 && h.AllocatedDiskGiB+req.DiskGiB > h.DiskGiB:
		return &Reject{RejectDisk, fmt.Sprintf("%d GiB disk free, need %d", max(h.DiskGiB-h.AllocatedDiskGiB, 0), req.DiskGiB)}
	case h.DiskFreeBytes > 0:
		if r := CheckDiskRoom(h.DiskFreeBytes-h.AllocatedDiskBytes, req.DiskBytes); r != nil {
			return r
		}
	}
	for _, g := range req.AntiAffinity {
		if h.Groups[g] > 0 {
			return &Reject{RejectAntiAffinity, fmt.Sprintf("already runs a VM of anti-affinity group %s", g)}
		}
	}
	return nil
}

// CheckDiskRoom says whether a data directory with freeBytes free can
// take local disks of diskBytes (their allocated size) plus DiskMargin;
// nil means it can (and always for diskBytes 0). It is the one rule for
// placement, the evacuation planner, the balancer and the migration
// preflight.
func CheckDiskRoom(freeBytes, diskBytes int64) *Reject {
	if diskBytes <= 0 || diskBytes+DiskMargin(diskBytes) <= freeBytes {
		return nil
	}
	return &Reject{RejectDisk, fmt.Sprintf("%d MiB free in its data directory, need %d MiB for the local disks + %d MiB margin",
		max(freeBytes, 0)>>20, diskBytes>>20, DiskMargin(diskBytes)>>20)}
}

// Score ranks a host that passed Check for req: higher is better. It is
// the smaller of the free memory and free vCPU fractions the host would
// have left after taking req, so the emptiest host in its scarcest
// resource wins and load spreads (balance). Ties are the caller's (by
// name).
func Score(h Host, req Request) float64 {
	memLeft := float64(h.FreeMemoryMiB()-req.MemoryMiB) / float64(max(h.MemoryMiB-ReservedMiB, 1))
	cpuCap := h.CPUs * MaxVCPUOvercommit
	cpuLeft := float64(cpuCap-h.AllocatedVCPUs-req.VCPUs) / float64(max(cpuCap, 1))
	return min(memLeft, cpuLeft)
}

// Place records req as placed on h (the caller's copy), for planners that
// place several VMs in a row.
func (h *Host) Place(req Request) {
	h.AllocatedVCPUs += req.VCPUs
	h.AllocatedMemoryMiB += req.MemoryMiB
	h.AllocatedDiskGiB += req.DiskGiB
	h.AllocatedDiskBytes += req.DiskBytes
	if len(req.AntiAffinity) > 0 {
		g := make(map[string]int, len(h.Groups)+len(req.AntiAffinity))
		for k, v := range h.Groups {
			g[k] = v
		}
		for _, k := range req.AntiAffinity {
			g[k]++
		}
		h.Groups = g
	}
}

// Remove undoes Place (the VM left h).
func (h *Host) Remove(req Request) {
	h.AllocatedVCPUs -= req.VCPUs
	h.AllocatedMemoryMiB -= req.MemoryMiB
	h.AllocatedDiskGiB -= req.DiskGiB
	h.AllocatedDiskBytes -= req.DiskBytes
	if len(req.AntiAffinity) > 0 {
		g := make(map[string]int, len(h.Groups))
		for k, v := range h.Groups {
			g[k] = v
		}
		for _, k := range req.AntiAffinity {
			if g[k]--; g[k] <= 0 {
				delete(g, k)
			}
		}
		h.Groups = g
	}
}
