package qemucaps

import (
	"errors"
	"fmt"
	"strings"
)

// VMNeeds is what a VM needs from the QEMU of a host that runs it.
type VMNeeds struct {
	// MachineType is the VM's pinned, versioned machine type.
	MachineType string
	// CPUModel is the VM's CPU model.
	CPUModel string
	// Devices are the device types on its command line.
	Devices []string
	// Accel is the accelerator the VM runs with (kvm or tcg); the CPU
	// model's usability is checked only when it is the probe's.
	Accel string
}

// ErrIncompatible is wrapped by CheckDestination's refusals.
var ErrIncompatible = errors.New("destination cannot run the VM")

// CheckDestination says whether a host whose QEMU has caps dst can receive
// a VM with needs: its machine type, CPU model (usable) and devices must
// exist there (the CPU model usable with the VM's accelerator, as far as
// the probe tells). The error lists every reason and what would fix it.
func CheckDestination(host string, dst Caps, needs VMNeeds) error {
	var problems []string
	if needs.MachineType != "" {
		if _, ok := dst.Machine(needs.MachineType); !ok {
			fix := "migrate to a host whose QEMU has it, or upgrade the QEMU of " + host
			if isAlias(dst, needs.MachineType) {
				fix = "the VM names an alias, not a versioned type: recreate it so its machine type is pinned"
			}
			problems = append(problems, fmt.Sprintf("machine type %s is not offered by QEMU %s on %s (%s)", needs.MachineType, dst.Version, host, fix))
		}
	}
	if needs.CPUModel != "" {
		if cpu, ok := dst.CPUModel(needs.CPUModel); !ok {
			problems = append(problems, fmt.Sprintf("CPU model %s is not offered by QEMU %s on %s (migrate to a host that has it, or give the VM a CPU model both hosts share, such as qemu64)", needs.CPUModel, dst.Version, host))
		} else if !cpu.Usable && needs.Accel == dst.ProbeAccel {
			problems = append(problems, fmt.Sprintf("CPU model %s cannot run on %s (its CPU or accelerator lacks features the model needs: pick a host with a newer CPU, or a smaller CPU model such as qemu64)", needs.CPUModel, host))
		}
	}
	if len(dst.Devices) > 0 { // an empty list means the probe did not look
		for _, d := range needs.Devices {
			if !dst.HasDevice(d) {
				problems = append(problems, fmt.Sprintf("device %s is not offered by QEMU %s on %s (install a QEMU build with it)", d, dst.Version, host))
			}
		}
	}
	if len(problems) == 0 {
		return nil
	}
	return fmt.Errorf("%w: %s", ErrIncompatible, strings.Join(problems, "; "))
}

func isAlias(c Caps, name string) bool {
	for _, m := range c.Machines {
		if m.Alias == name {
			return true
		}
	}
	return false
}
