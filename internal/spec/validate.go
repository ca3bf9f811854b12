package spec

import (
	"fmt"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"

	ferryv1 "github.com/ferryvm/ferry/gen/ferry/v1"
)

// Limits enforced by Validate.
const (
	MinMemoryMiB = 64
	// MaxMemoryMiB is 16 TiB of guest RAM.
	MaxMemoryMiB = 16 << 20
	// MaxDiskBytes bounds a new disk's size (64 TiB).
	MaxDiskBytes = 64 << 40
	// MaxPathLen is Linux's PATH_MAX minus the terminating NUL.
	MaxPathLen       = 4095
	MaxVcpus         = 64
	MaxDisks         = 16
	MaxNICs          = 8
	MaxDowntimeMsMax = 60000
	// MaxDiskNameLen keeps "<name>-file" within QEMU's 31-byte block node
	// name limit.
	MaxDiskNameLen = 26
	// MaxCmdlineLen is the x86 kernel command line limit (COMMAND_LINE_SIZE
	// minus the terminating NUL).
	MaxCmdlineLen = 2047
)

var (
	dnsLabelRE    = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$`)
	diskNameRE    = regexp.MustCompile(`^[a-z][-a-z0-9]*$`)
	macRE         = regexp.MustCompile(`^[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}$`)
	cpuModelRE    = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$`)
	machineTypeRE = regexp.MustCompile(`^[a-z0-9][a-z0-9._-]{0,63}$`)
	ifaceNameRE   = regexp.MustCompile(`^[A-Za-z0-9_.-]{1,15}$`)
)

// Validate checks every field of s and returns nil or a *ValidationError
// listing every bad field at once. It is meant to run after Parse (which
// makes paths absolute) and Default; fields that Default would fill (accel,
// cpuModel, disk names and formats, MACs, maxDowntimeMs) are accepted when
// empty, so Validate(s) and Validate(Default(s)) agree.
func Validate(s *ferryv1.VMSpec) error {
	var c collector
	if s == nil {
		c.add("spec", "is required: give at least name, vcpus, memoryMiB and boot")
		return c.err()
	}
	if !dnsLabelRE.MatchString(s.Name) {
		c.add("spec.name", "must be a DNS label (lowercase letters, digits, '-', 1-63 chars, starting and ending with a letter or digit), got %q", s.Name)
	}
	if s.Vcpus < 1 || s.Vcpus > MaxVcpus {
		c.add("spec.vcpus", "must be between 1 and %d, got %d", MaxVcpus, s.Vcpus)
	}
	if s.MemoryMib < MinMemoryMiB {
		c.add("spec.memoryMiB", "must be >= %d, got %d", MinMemoryMiB, s.MemoryMib)
	} else if s.MemoryMib > MaxMemoryMiB {
		c.add("spec.memoryMiB", "must be at most %d (16 TiB), got %d", MaxMemoryMiB, s.MemoryMib)
	}
	names := validateDisks(&c, s.Disks)
	validateBoot(&c, s.Boot, names)
	validateNICs(&c, s.Nics)
	if s.CpuModel != "" && !cpuModelRE.MatchString(s.CpuModel) {
		c.add("spec.cpuModel", "must be a QEMU CPU model name (letters, digits, '-', '_', '.', at most 64 chars, no options), got %q", s.CpuModel)
	}
	if s.MachineType != "" && !machineTypeRE.MatchString(s.MachineType) {
		c.add("spec.machineType", "must be a QEMU machine type such as pc-q35-10.0 or the alias q35 (lowercase letters, digits, '.', '-', '_', no options), got %q", s.MachineType)
	}
	switch s.Accel {
	case "", "auto", "kvm", "tcg":
	default:
		c.add("spec.accel", "must be one of auto, kvm, tcg, got %q", s.Accel)
	}
	if s.MaxDowntimeMs != 0 && (s.MaxDowntimeMs < 1 || s.MaxDowntimeMs > MaxDowntimeMsMax) {
		c.add("spec.maxDowntimeMs", "must be between 1 and %d (or unset for %d), got %d", MaxDowntimeMsMax, DefaultMaxDowntimeMs, s.MaxDowntimeMs)
	}
	return c.err()
}

// validateDisks checks spec.disks and returns the effective disk names.
func validateDisks(c *collector, disks []*ferryv1.DiskSpec) []string {
	if len(disks) > MaxDisks {
		c.add("spec.disks", "at most %d disks are supported, got %d", MaxDisks, len(disks))
	}
	names := make([]string, len(disks))
	seen := map[string]int{}
	for i, d := range disks {
		p := fmt.Sprintf("spec.disks[%d]", i)
		if d == nil {
			c.add(p, "must be a mapping with path or size, got null")
			continue
		}
		name := d.Name
		if name == "" {
			name = defaultDiskName(i)
		}
		names[i] = name
		if !diskNameRE.MatchString(name) || len(name) > MaxDiskNameLen {
			c.add(p+".name", "must be 1-%d chars of lowercase letters, digits and '-', starting with a letter (it names QEMU block nodes), got %q", MaxDiskNameLen, name)
		} else if j, dup := seen[name]; dup {
			c.add(p+".name", "duplicate disk name %q (also spec.disks[%d]); give each disk a unique name", name, j)
		} else {
			seen[name] = i
		}
		set := 0
		for _, v := range []string{d.Path, d.Size, d.Source} {
			if v != "" {
				set++
			}
		}
		switch {
		case set != 1:
			c.add(p, "set exactly one of path (an existing image), size (a new empty local image) or source (a new local image copied from an allowed image)")
		case d.Path != "":
			checkAbs(c, p+".path", d.Path)
		case d.Source != "":
			checkAbs(c, p+".source", d.Source)
			if d.Shared {
				c.add(p+".shared", "a disk copied from source is local to its host: remove shared: true, or set path to an image on shared storage instead of source")
			}
		default:
			n, err := ParseSize(d.Size)
			switch {
			case err != nil:
				c.add(p+".size", "must be a size like 512MiB, 1GiB, 10G or a byte count, got %q", d.Size)
			case n <= 0:
				c.add(p+".size", "must be greater than 0, got %q", d.Size)
			case n > MaxDiskBytes:
				c.add(p+".size", "must be at most 64TiB, got %q", d.Size)
			}
		}
		if d.Shared && d.Size != "" {
			c.add(p+".shared", "a shared disk must be an existing image every host sees at the same path: set path (create the image once, e.g. with qemu-img create) and remove size, or remove shared: true for a new local disk")
		}
		switch d.Format {
		case "", "qcow2", "raw":
		default:
			c.add(p+".format", "must be one of qcow2, raw, got %q", d.Format)
		}
	}
	return names
}

// validateBoot checks spec.boot against the effective disk names.
func validateBoot(c *collector, b *ferryv1.BootSpec, diskNames []string) {
	const choose = "set either kernel (with optional initrd, cmdline) or disk"
	if b == nil || (b.Kernel == "" && b.Disk == "" && b.Initrd == "" && b.Cmdline == "") {
		c.add("spec.boot", "is required: %s", choose)
		return
	}
	if b.Kernel != "" && b.Disk != "" {
		c.add("spec.boot", "%s, not both", choose)
	}
	switch {
	case b.Kernel == "" && b.Disk == "":
		c.add("spec.boot.kernel", "is required when initrd or cmdline is set (or remove them and set boot.disk)")
	case b.Kernel == "":
		if b.Initrd != "" {
			c.add("spec.boot.initrd", "is only valid with boot.kernel: remove it when booting from boot.disk")
		}
		if b.Cmdline != "" {
			c.add("spec.boot.cmdline", "is only valid with boot.kernel: remove it when booting from boot.disk")
		}
	}
	if b.Kernel != "" {
		checkAbs(c, "spec.boot.kernel", b.Kernel)
	}
	if b.Initrd != "" {
		checkAbs(c, "spec.boot.initrd", b.Initrd)
	}
	if len(b.Cmdline) > MaxCmdlineLen {
		c.add("spec.boot.cmdline", "must be at most %d bytes, got %d", MaxCmdlineLen, len(b.Cmdline))
	} else if strings.ContainsAny(b.Cmdline, "\x00\n") {
		c.add("spec.boot.cmdline", "must be a single line without NUL bytes")
	}
	if b.Disk != "" {
		found := false
		for _, n := range diskNames {
			found = found || n == b.Disk
		}
		if !found {
			c.add("spec.boot.disk", "no disk named %q in spec.disks", b.Disk)
		}
	}
}

// validateNICs checks spec.nics.
func validateNICs(c *collector, nics []*ferryv1.NICSpec) {
	if len(nics) > MaxNICs {
		c.add("spec.nics", "at most %d NICs are supported, got %d", MaxNICs, len(nics))
	}
	seen := map[string]int{}
	for i, n := range nics {
		p := fmt.Sprintf("spec.nics[%d]", i)
		if n == nil {
			c.add(p, "must be a mapping (use {} for all defaults), got null")
			continue
		}
		if n.Mac != "" {
			if msg := macProblem(n.Mac); msg != "" {
				c.add(p+".mac", "%s, got %q", msg, n.Mac)
			} else if j, dup := seen[strings.ToLower(n.Mac)]; dup {
				c.add(p+".mac", "duplicate MAC %q (also spec.nics[%d]); give each NIC a unique MAC or leave it empty", n.Mac, j)
			} else {
				seen[strings.ToLower(n.Mac)] = i
			}
		}
		if n.Bridge != "" && !ifaceNameRE.MatchString(n.Bridge) {
			c.add(p+".bridge", "must be a host interface name (1-15 of letters, digits, '-', '_', '.'), got %q", n.Bridge)
		}
	}
}

// macProblem describes what is wrong with mac, or returns "".
func macProblem(mac string) string {
	if !macRE.MatchString(mac) {
		return "must be a MAC address like 52:54:00:12:34:56 (six hex pairs separated by ':')"
	}
	if first, _ := strconv.ParseUint(mac[:2], 16, 8); first&1 == 1 {
		return "must be a unicast MAC (first octet even), e.g. 52:54:00:12:34:56"
	}
	if strings.Trim(mac, "0:") == "" {
		return "must not be all zeros, e.g. 52:54:00:12:34:56"
	}
	return ""
}

// checkAbs reports a path that is not absolute, has a ".." element or
// is longer than MaxPathLen. (Which directories a path may be in is the
// agent's check: it knows its data directory and --allow-path list.)
func checkAbs(c *collector, field, p string) {
	switch {
	case len(p) > MaxPathLen:
		c.add(field, "must be at most %d bytes, got %d", MaxPathLen, len(p))
	case !filepath.IsAbs(p):
		c.add(field, "must be an absolute path (relative paths in a spec file are resolved against its directory), got %q", p)
	case slices.Contains(strings.Split(p, "/"), ".."):
		c.add(field, "must not contain a \"..\" element, got %q: name the file by its own path", p)
	case strings.ContainsRune(p, 0):
		c.add(field, "must not contain a NUL byte")
	}
}

// IsDNSLabel reports whether s is a DNS label (the form of VM and host
// names).
func IsDNSLabel(s string) bool { return dnsLabelRE.MatchString(s) }
