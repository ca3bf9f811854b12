package spec

import (
	"crypto/sha256"
	"fmt"
	"strconv"
	"strings"

	ferryv1 "github.com/ferryvm/ferry/gen/ferry/v1"
)

// Defaults applied by Default.
const (
	// DefaultAccel lets the agent pick KVM when a probe proves it works.
	DefaultAccel = "auto"
	// DefaultCPUModel is a baseline model every x86-64 host (and TCG) can
	// provide, so the VM can migrate between dissimilar hosts.
	DefaultCPUModel = "qemu64"
	// DefaultDiskFormat is the image format of disks unless the path ends
	// in ".raw".
	DefaultDiskFormat = "qcow2"
	// DefaultMaxDowntimeMs is the live-migration downtime target.
	DefaultMaxDowntimeMs = 300
)

// Default fills unset fields of s in place (s may be nil):
//
//   - accel "" becomes "auto";
//   - cpuModel "" becomes "qemu64";
//   - disks[i].name "" becomes "disk<i>" (its index in spec.disks);
//   - disks[i].format "" becomes "raw" when the path ends in ".raw",
//     otherwise "qcow2" (also for disks created from size);
//   - nics[i].mac "" becomes DefaultMAC(name, i);
//   - maxDowntimeMs 0 becomes 300.
//
// Fields whose zero value is a mistake the user should hear about (name,
// vcpus, memoryMiB, boot) are deliberately left alone for Validate to
// report. Default is idempotent.
func Default(s *ferryv1.VMSpec) {
	if s == nil {
		return
	}
	if s.Accel == "" {
		s.Accel = DefaultAccel
	}
	if s.CpuModel == "" {
		s.CpuModel = DefaultCPUModel
	}
	for i, d := range s.Disks {
		if d == nil {
			continue
		}
		if d.Name == "" {
			d.Name = defaultDiskName(i)
		}
		if d.Format == "" {
			d.Format = defaultFormat(d.Path)
		}
	}
	for i, n := range s.Nics {
		if n != nil && n.Mac == "" {
			n.Mac = DefaultMAC(s.Name, i)
		}
	}
	if s.MaxDowntimeMs == 0 {
		s.MaxDowntimeMs = DefaultMaxDowntimeMs
	}
}

// DefaultMAC derives a stable, locally administered unicast MAC
// (52:54:00:xx:xx:xx, QEMU's prefix) from the VM name and NIC index, so a
// VM keeps its MAC across restarts and migrations.
func DefaultMAC(vmName string, index int) string {
	sum := sha256.Sum256([]byte(vmName + "/nic" + strconv.Itoa(index)))
	return fmt.Sprintf("52:54:00:%02x:%02x:%02x", sum[0], sum[1], sum[2])
}

func defaultDiskName(i int) string { return "disk" + strconv.Itoa(i) }

func defaultFormat(path string) string {
	if strings.HasSuffix(strings.ToLower(path), ".raw") {
		return "raw"
	}
	return DefaultDiskFormat
}
