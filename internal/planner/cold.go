package planner

import (
	"fmt"
	"math"
)

// A cold migration (`--strategy cold`) sends no RAM: the guest is powered
// off, its local disks' allocated data is copied (sparse, verified by a
// checksum before the owner switch) and it is booted on the destination.
// The report's total runs from the start to the destination's QEMU started
// and the source removed; the guest's own boot comes after it.

// Fixed parts of a cold migration, from the e2e runs on this machine
// (QEMU 10, TCG, the test guest; 2026-12-01). The report's downtime runs
// from the source QEMU's exit to the destination's start; its total adds
// the guest's power-off before (ACPI, until QEMU exits) and the cleanup
// after. Without local disks: total 155 ms, downtime 79 ms. With a 1 GiB
// qcow2 holding 4.4 MiB and the guest's disk writer on: total 638-688 ms,
// downtime 163-183 ms, the copy itself 17-23 ms: preparing the
// destination's images and verifying the copy add about 70 ms to the
// downtime, and a guest writing its disk takes about 0.4 s longer to
// power off.
const (
	// ColdOffSeconds is the downtime outside the disk copy.
	ColdOffSeconds = 0.08
	// ColdPowerOffSeconds is the power-off and cleanup, outside the
	// downtime.
	ColdPowerOffSeconds = 0.07
	// ColdDiskOffSeconds is what local disks add to the downtime besides
	// their data (the destination's images, the copy's connection, the
	// verification's fsync and read-back).
	ColdDiskOffSeconds = 0.07
	// ColdDiskPowerOffSeconds is what a guest with local disks adds to
	// its power-off (it flushes its writes first).
	ColdDiskPowerOffSeconds = 0.4
)

// ColdInputs are what the prediction of a cold migration needs.
type ColdInputs struct {
	// BandwidthBytesPerSec is the link's rate between the two hosts.
	BandwidthBytesPerSec float64
	// DiskBytes is the allocated data of the VM's local disks (0: none).
	DiskBytes int64
	// Running says the guest runs: it is powered off first and booted on
	// the destination (a stopped VM stays stopped: nothing is down).
	Running bool
}

// PredictCold predicts a cold migration: the disks' data at the link's
// rate plus the fixed parts. The downtime (a running guest's: QEMU gone on
// the source until it starts on the destination) is the copy and the fixed
// parts around it; the total adds the power-off and the cleanup. The
// guest's own boot on the destination comes after both, untimed.
func PredictCold(in ColdInputs) (Prediction, error) {
	if in.DiskBytes < 0 {
		return Prediction{}, fmt.Errorf("planner: ColdInputs.DiskBytes: must be ≥ 0, got %d", in.DiskBytes)
	}
	if in.DiskBytes > 0 && (!(in.BandwidthBytesPerSec > 0) || math.IsInf(in.BandwidthBytesPerSec, 0)) {
		return Prediction{}, fmt.Errorf("planner: ColdInputs.BandwidthBytesPerSec: must be a positive rate to copy %d disk bytes, got %v", in.DiskBytes, in.BandwidthBytesPerSec)
	}
	off, powerOff := ColdOffSeconds, ColdPowerOffSeconds
	reason := "cold: no RAM is sent"
	if in.DiskBytes > 0 {
		copySec := float64(in.DiskBytes) / in.BandwidthBytesPerSec
		off += ColdDiskOffSeconds + copySec
		powerOff += ColdDiskPowerOffSeconds
		reason += fmt.Sprintf("; %s of local disks (allocated data) copied at %s in %s and verified by checksum", fmtBytes(float64(in.DiskBytes)), fmtRate(in.BandwidthBytesPerSec), fmtSec(copySec))
	}
	p := Prediction{Strategy: StrategyCold, Converges: true, Total: seconds(off + powerOff), Bytes: in.DiskBytes}
	if in.Running {
		p.Downtime = seconds(off)
		reason += fmt.Sprintf("; the guest powers off (%s with the cleanup), is off %s and reboots on the destination (its boot comes on top)", fmtSec(powerOff), fmtSec(off))
	} else {
		reason += "; the VM is stopped and stays stopped"
	}
	p.Reason = reason
	return p, nil
}
