package qemucaps

import (
	"fmt"

	ferryv1 "github.com/ferryvm/ferry/gen/ferry/v1"
)

// ToProto turns a probe result into the host record's HostQEMU.
func ToProto(r Result) *ferryv1.HostQEMU {
	c := r.Caps
	h := &ferryv1.HostQEMU{
		Binary: c.Binary, Version: c.Version.String(), Package: c.Version.Package,
		MigrationCapabilities: c.MigrationCapabilities, MigrationParameters: c.MigrationParameters,
		Devices: c.Devices, ProbeAccel: c.ProbeAccel, Cached: r.Cached,
	}
	if !r.Cached {
		h.ProbeMs = r.Took.Milliseconds()
	}
	for _, m := range c.Machines {
		h.Machines = append(h.Machines, &ferryv1.QEMUMachine{Name: m.Name, Alias: m.Alias, Default: m.Default, Deprecated: m.Deprecated, CpuMax: int32(m.CPUMax)})
	}
	for _, m := range c.CPUModels {
		h.CpuModels = append(h.CpuModels, &ferryv1.QEMUCPUModel{Name: m.Name, AliasOf: m.AliasOf, Usable: m.Usable, MigrationSafe: m.MigrationSafe, Deprecated: m.Deprecated})
	}
	for _, f := range Supported(c) {
		h.Features = append(h.Features, string(f))
	}
	return h
}

// FromProto rebuilds Caps from a host record; ok is false when the host
// reported none (an older agent, or a failed probe).
func FromProto(h *ferryv1.HostQEMU) (c Caps, ok bool) {
	if h == nil || h.GetProbeError() != "" || h.GetVersion() == "" {
		return Caps{}, false
	}
	c = Caps{
		Binary: h.Binary, MigrationCapabilities: h.MigrationCapabilities, MigrationParameters: h.MigrationParameters,
		Devices: h.Devices, ProbeAccel: h.ProbeAccel,
	}
	v, err := ParseVersion(h.Version)
	if err != nil {
		return Caps{}, false
	}
	v.Package = h.Package
	c.Version = v
	for _, m := range h.Machines {
		c.Machines = append(c.Machines, Machine{Name: m.Name, Alias: m.Alias, Default: m.Default, Deprecated: m.Deprecated, CPUMax: int(m.CpuMax)})
	}
	for _, m := range h.CpuModels {
		c.CPUModels = append(c.CPUModels, CPUModel{Name: m.Name, AliasOf: m.AliasOf, Usable: m.Usable, MigrationSafe: m.MigrationSafe, Deprecated: m.Deprecated})
	}
	return c, true
}

// RequireHost is Require for a host record: host names the host in the
// error, and a host that reported no capabilities is refused too (its
// QEMU is unknown).
func RequireHost(host string, h *ferryv1.HostQEMU, f Feature) error {
	c, ok := FromProto(h)
	if !ok {
		return fmt.Errorf("%w: %s on host %s: its agent reported no QEMU capabilities (probe error %q); upgrade or restart the agent", ErrUnsupported, f, host, h.GetProbeError())
	}
	if err := Require(c, f); err != nil {
		return fmt.Errorf("host %s: %w", host, err)
	}
	return nil
}
