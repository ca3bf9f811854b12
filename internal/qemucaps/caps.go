package qemucaps

import (
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"

	"github.com/ferryvm/ferry/internal/qmp"
)

// Version is a QEMU release.
type Version struct {
	Major   int    `json:"major"`
	Minor   int    `json:"minor"`
	Micro   int    `json:"micro"`
	Package string `json:"package,omitempty"`
}

// String returns "major.minor.micro".
func (v Version) String() string {
	return strconv.Itoa(v.Major) + "." + strconv.Itoa(v.Minor) + "." + strconv.Itoa(v.Micro)
}

// ParseVersion parses "major.minor.micro" (micro optional).
func ParseVersion(s string) (Version, error) {
	var v Version
	parts := strings.Split(s, ".")
	if len(parts) < 2 || len(parts) > 3 {
		return v, fmt.Errorf("QEMU version %q: want major.minor.micro", s)
	}
	nums := make([]int, 3)
	for i, p := range parts {
		n, err := strconv.Atoi(p)
		if err != nil || n < 0 {
			return v, fmt.Errorf("QEMU version %q: want major.minor.micro", s)
		}
		nums[i] = n
	}
	v.Major, v.Minor, v.Micro = nums[0], nums[1], nums[2]
	return v, nil
}

// AtLeast reports whether v >= major.minor.
func (v Version) AtLeast(major, minor int) bool {
	return v.Major > major || v.Major == major && v.Minor >= minor
}

// Machine is one machine type.
type Machine struct {
	Name       string `json:"name"`
	Alias      string `json:"alias,omitempty"`
	Default    bool   `json:"default,omitempty"`
	Deprecated bool   `json:"deprecated,omitempty"`
	CPUMax     int    `json:"cpu_max"`
}

// CPUModel is one CPU model.
type CPUModel struct {
	Name    string `json:"name"`
	AliasOf string `json:"alias_of,omitempty"`
	// Usable is false when the model cannot run with the accelerator the
	// probe used (Caps.ProbeAccel; unavailable-features not empty).
	Usable        bool `json:"usable"`
	MigrationSafe bool `json:"migration_safe,omitempty"`
	Deprecated    bool `json:"deprecated,omitempty"`
}

// Caps is what one QEMU binary offers.
type Caps struct {
	Binary  string  `json:"binary,omitempty"`
	Version Version `json:"version"`
	// Machines are sorted by name.
	Machines  []Machine  `json:"machines"`
	CPUModels []CPUModel `json:"cpu_models"`
	// MigrationCapabilities are the names query-migrate-capabilities lists.
	MigrationCapabilities []string `json:"migration_capabilities"`
	// MigrationParameters are the members migrate-set-parameters accepts.
	MigrationParameters []string `json:"migration_parameters"`
	// Devices are the device types Ferry uses (RelevantDevices) that the
	// binary has.
	Devices []string `json:"devices"`
	// ProbeAccel is the accelerator CPUModel.Usable refers to ("tcg": the
	// probe runs `-machine none`, which uses TCG).
	ProbeAccel string `json:"probe_accel,omitempty"`
}

// RelevantDevices are the device types Ferry puts on a VM's command line;
// Caps.Devices reports which of them a binary has.
var RelevantDevices = []string{"virtio-blk-pci", "virtio-net-pci", "virtio-serial-pci", "virtserialport", "virtio-rng-pci", "virtio-balloon-pci"}

// Replies are the raw QMP replies Parse reads (the "return" values).
type Replies struct {
	Version        json.RawMessage `json:"query-version"`
	Machines       json.RawMessage `json:"query-machines"`
	CPUDefinitions json.RawMessage `json:"query-cpu-definitions"`
	Capabilities   json.RawMessage `json:"query-migrate-capabilities"`
	Schema         json.RawMessage `json:"query-qmp-schema"`
	// Devices is qom-list-types with implements=device, abstract=false.
	Devices json.RawMessage `json:"qom-list-types"`
}

// ErrBadReply is wrapped by Parse errors.
var ErrBadReply = errors.New("unexpected QMP reply")

// Parse builds Caps from the replies of one QEMU binary.
func Parse(r Replies) (Caps, error) {
	var c Caps
	var ver qmp.VersionInfo
	if err := json.Unmarshal(r.Version, &ver); err != nil {
		return c, fmt.Errorf("%w: query-version: %v", ErrBadReply, err)
	}
	if ver.QEMU.Major == 0 {
		return c, fmt.Errorf("%w: query-version: no major version", ErrBadReply)
	}
	c.ProbeAccel = "tcg"
	c.Version = Version{Major: ver.QEMU.Major, Minor: ver.QEMU.Minor, Micro: ver.QEMU.Micro, Package: ver.Package}

	var machines []qmp.MachineInfo
	if err := json.Unmarshal(r.Machines, &machines); err != nil {
		return c, fmt.Errorf("%w: query-machines: %v", ErrBadReply, err)
	}
	for _, m := range machines {
		c.Machines = append(c.Machines, Machine{Name: m.Name, Alias: qmp.Deref(m.Alias), Default: m.IsDefault, Deprecated: m.Deprecated, CPUMax: m.CPUMax})
	}
	slices.SortFunc(c.Machines, func(a, b Machine) int { return cmp.Compare(a.Name, b.Name) })

	var cpus []qmp.CPUDefinitionInfo
	if err := json.Unmarshal(r.CPUDefinitions, &cpus); err != nil {
		return c, fmt.Errorf("%w: query-cpu-definitions: %v", ErrBadReply, err)
	}
	for _, d := range cpus {
		c.CPUModels = append(c.CPUModels, CPUModel{
			Name: d.Name, AliasOf: qmp.Deref(d.AliasOf), Usable: len(d.UnavailableFeatures) == 0,
			MigrationSafe: qmp.Deref(d.MigrationSafe), Deprecated: d.Deprecated,
		})
	}
	slices.SortFunc(c.CPUModels, func(a, b CPUModel) int { return cmp.Compare(a.Name, b.Name) })

	var caps []qmp.CapabilityState
	if err := json.Unmarshal(r.Capabilities, &caps); err != nil {
		return c, fmt.Errorf("%w: query-migrate-capabilities: %v", ErrBadReply, err)
	}
	for _, s := range caps {
		c.MigrationCapabilities = append(c.MigrationCapabilities, string(s.Capability))
	}
	slices.Sort(c.MigrationCapabilities)

	schema, err := qmp.ParseSchema(r.Schema)
	if err != nil {
		return c, fmt.Errorf("%w: query-qmp-schema: %v", ErrBadReply, err)
	}
	params, ok := qmp.CommandArgs(schema, "migrate-set-parameters")
	if !ok {
		return c, fmt.Errorf("%w: query-qmp-schema has no migrate-set-parameters command", ErrBadReply)
	}
	c.MigrationParameters = slices.Sorted(slices.Values(params))

	if len(r.Devices) > 0 {
		var types []struct {
			Name string `json:"name"`
		}
		if err := json.Unmarshal(r.Devices, &types); err != nil {
			return c, fmt.Errorf("%w: qom-list-types: %v", ErrBadReply, err)
		}
		have := map[string]bool{}
		for _, t := range types {
			have[t.Name] = true
		}
		for _, d := range RelevantDevices {
			if have[d] {
				c.Devices = append(c.Devices, d)
			}
		}
	}
	return c, nil
}

// HasCapability reports whether the binary has migration capability name.
func (c Caps) HasCapability(name string) bool {
	return slices.Contains(c.MigrationCapabilities, name)
}

// HasParameter reports whether migrate-set-parameters accepts name.
func (c Caps) HasParameter(name string) bool {
	return slices.Contains(c.MigrationParameters, name)
}

// Machine returns the machine type called name (not an alias).
func (c Caps) Machine(name string) (Machine, bool) {
	for _, m := range c.Machines {
		if m.Name == name {
			return m, true
		}
	}
	return Machine{}, false
}

// CPUModel returns the CPU model called name.
func (c Caps) CPUModel(name string) (CPUModel, bool) {
	for _, m := range c.CPUModels {
		if m.Name == name {
			return m, true
		}
	}
	return CPUModel{}, false
}

// HasDevice reports whether the binary has device type name (only
// RelevantDevices are known).
func (c Caps) HasDevice(name string) bool { return slices.Contains(c.Devices, name) }

// ErrUnknownMachine is returned by ResolveMachine for a name that is
// neither a machine type nor an alias of this binary.
var ErrUnknownMachine = errors.New("unknown machine type")

// ResolveMachine returns the versioned machine type name stands for: the
// type an alias ("q35", "pc") points at, or name itself if it is a type.
func (c Caps) ResolveMachine(name string) (string, error) {
	for _, m := range c.Machines {
		if m.Alias == name {
			return m.Name, nil
		}
	}
	if _, ok := c.Machine(name); ok {
		return name, nil
	}
	return "", fmt.Errorf("%w %q on QEMU %s (has %s)", ErrUnknownMachine, name, c.Version, c.machineSummary())
}

// machineSummary names the aliases and the newest q35 types, for errors.
func (c Caps) machineSummary() string {
	var out []string
	for _, m := range c.Machines {
		if m.Alias != "" {
			out = append(out, m.Alias+" = "+m.Name)
		}
	}
	if len(out) == 0 {
		return strconv.Itoa(len(c.Machines)) + " machine types"
	}
	return fmt.Sprintf("%d machine types; aliases %v", len(c.Machines), out)
}
