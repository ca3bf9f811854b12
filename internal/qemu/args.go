package qemu

import (
	"bytes"
	"encoding/json"
	"fmt"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"

	"google.golang.org/protobuf/proto"

	ferryv1 "github.com/ferryvm/ferry/gen/ferry/v1"
	"github.com/ferryvm/ferry/internal/spec"
)

// DefaultMachineType is the explicit, versioned machine type used when
// neither Config.MachineType nor the spec's machineType (pinned by the
// server at create time) is set, i.e. for VMs created before pinning. A
// versioned type (not the "q35" alias) keeps the guest ABI identical on
// both ends of a migration.
const DefaultMachineType = "pc-q35-7.2"

// GuestAgentPort is the virtio-serial port name of the QEMU guest agent
// channel (the name qemu-ga and the test guest look for).
const GuestAgentPort = "org.qemu.guest_agent.0"

// maxSocketPath is the longest AF_UNIX path (sun_path is 108 bytes with
// the terminating NUL).
const maxSocketPath = 107

// Paths are the files of one VM's QEMU, all inside Dir.
type Paths struct {
	Dir       string // the VM's directory
	QMPSocket string // QMP control socket (qmp.sock)
	SerialLog string // guest serial console output (serial.log)
	PIDFile   string // QEMU's pidfile (qemu.pid)
	StderrLog string // QEMU's stdout and stderr (qemu.log)
	QMPLog    string // QMP traffic log for the QMP client (qmp.log)
	// ObserveSocket is a second QMP monitor (qmp-observe.sock) for
	// read-only observers such as tests and operators; the agent never
	// uses it, so observing never competes with the agent's connection.
	ObserveSocket string
	// GuestAgentSocket is the host side (qga.sock) of the VM's QEMU guest
	// agent channel, used only when the spec asks for one (guestAgent).
	GuestAgentSocket string
}

// PathsFor returns the fixed file names inside vmDir.
func PathsFor(vmDir string) Paths {
	return Paths{
		Dir:       vmDir,
		QMPSocket: filepath.Join(vmDir, "qmp.sock"),
		SerialLog: filepath.Join(vmDir, "serial.log"),
		PIDFile:   filepath.Join(vmDir, "qemu.pid"),
		StderrLog: filepath.Join(vmDir, "qemu.log"),
		QMPLog:    filepath.Join(vmDir, "qmp.log"),

		ObserveSocket:    filepath.Join(vmDir, "qmp-observe.sock"),
		GuestAgentSocket: filepath.Join(vmDir, "qga.sock"),
	}
}

// Disk is a resolved disk image for spec.disks[i].
type Disk struct {
	Name   string // spec.disks[i].name; empty means the (defaulted) spec name
	Path   string // absolute image path on this host
	Format string // qcow2 or raw; empty means the spec's format
	// Direct opens the image with O_DIRECT (cache.direct=on, the host's
	// page cache bypassed; the guest still sees a write cache it flushes).
	// The agent sets it for its local disks where their filesystem allows
	// O_DIRECT: a destination writing a mirrored disk through the page
	// cache pays the whole image again in the mirror's final flush.
	Direct bool
}

// NIC is a resolved network interface for spec.nics[i].
type NIC struct {
	Tap string // host tap interface name
	MAC string // empty means the (defaulted) spec MAC
}

// Config is everything needed to render a QEMU command line.
type Config struct {
	Spec        *ferryv1.VMSpec // the VM; defaulted (on a copy) and validated by Args
	Accel       string          // resolved accelerator: kvm or tcg
	Paths       Paths
	Disks       []Disk // one per spec.disks entry, same order
	NICs        []NIC  // one per spec.nics entry, same order
	Incoming    string // "" or "defer" (destination of a migration)
	MachineType string // overrides Spec.MachineType; default DefaultMachineType
	Scope       string // ScopeAuto, ScopeSystemd, ScopeCgroup or ScopeNone ("" = none): see scopedCommand
	// CgroupParent is where ScopeCgroup makes the QEMU's cgroup (default
	// DefaultCgroupParent).
	CgroupParent string
	// RunAs is the unprivileged user QEMU switches to once it has opened
	// its command line's files and devices (-run-with user=); "" = none.
	RunAs string
	// Sandbox turns on QEMU's seccomp filter (-sandbox on): obsolete
	// system calls, spawning processes and resource control denied.
	Sandbox bool
}

// prop is one key=value of an option; an empty key renders the value alone.
type prop struct{ key, val string }

// option is one command-line flag with either a raw argument (passed
// verbatim, QEMU does not parse it as an option list) or a property list.
type option struct {
	flag  string
	raw   *string
	props []prop
}

func bareOpt(f string) option             { return option{flag: f} }
func rawOpt(f, arg string) option         { return option{flag: f, raw: &arg} }
func propOpt(f string, ps ...prop) option { return option{flag: f, props: ps} }
func kv(k, v string) prop                 { return prop{k, v} }

// escapeOpt doubles commas, QEMU's escape inside key=value option lists.
func escapeOpt(v string) string { return strings.ReplaceAll(v, ",", ",,") }

// render flattens the option into argv words.
func (o option) render() []string {
	switch {
	case o.raw != nil:
		return []string{o.flag, *o.raw}
	case len(o.props) == 0:
		return []string{o.flag}
	}
	parts := make([]string, len(o.props))
	for i, p := range o.props {
		if p.key == "" {
			parts[i] = escapeOpt(p.val)
		} else {
			parts[i] = p.key + "=" + escapeOpt(p.val)
		}
	}
	return []string{o.flag, strings.Join(parts, ",")}
}

var (
	machineRE = regexp.MustCompile(`^[a-z0-9][a-z0-9._-]*$`)
	tapRE     = regexp.MustCompile(`^[A-Za-z0-9_.-]{1,15}$`)
	userRE    = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_.-]{0,31}$`)
	macRE     = regexp.MustCompile(`^[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}$`)
)

// Args renders the QEMU argv (without the binary name) for cfg. The result
// is deterministic: the same spec gives the same argv on the source and the
// destination of a migration, apart from host paths and taps. Device ids
// and block node names derive from spec names and indexes only: disk d has
// nodes "<d>-file" (protocol) and "<d>" (format, the one to mirror) and
// device "<d>-dev"; NIC i has netdev "net<i>" and device "nic<i>".
func Args(cfg Config) ([]string, error) {
	opts, err := options(cfg)
	if err != nil {
		return nil, err
	}
	var argv []string
	for _, o := range opts {
		argv = append(argv, o.render()...)
	}
	return argv, nil
}

// options builds the option list for cfg.
func options(cfg Config) ([]option, error) {
	if cfg.Spec == nil {
		return nil, fmt.Errorf("qemu: Config.Spec: required")
	}
	s := proto.Clone(cfg.Spec).(*ferryv1.VMSpec)
	spec.Default(s)
	if err := spec.Validate(s); err != nil {
		return nil, fmt.Errorf("qemu: Config.Spec: %w", err)
	}
	if cfg.Accel != "kvm" && cfg.Accel != "tcg" {
		return nil, fmt.Errorf("qemu: Config.Accel: must be kvm or tcg (resolve %q with ResolveAccel first), got %q", s.Accel, cfg.Accel)
	}
	machine := cfg.MachineType
	if machine == "" {
		machine = s.MachineType // pinned by the server at create time
	}
	if machine == "" {
		machine = DefaultMachineType // VMs created before pinning
	}
	if !machineRE.MatchString(machine) {
		return nil, fmt.Errorf("qemu: Config.MachineType: must be a QEMU machine type like %s, got %q", DefaultMachineType, machine)
	}
	if cfg.RunAs != "" && !userRE.MatchString(cfg.RunAs) {
		return nil, fmt.Errorf("qemu: Config.RunAs: must be a user name (letters, digits, '_', '-', '.'), got %q", cfg.RunAs)
	}
	if cfg.Incoming != "" && cfg.Incoming != "defer" {
		return nil, fmt.Errorf(`qemu: Config.Incoming: must be "" or "defer", got %q`, cfg.Incoming)
	}
	if err := checkPaths(cfg.Paths); err != nil {
		return nil, err
	}

	p := cfg.Paths
	opts := []option{
		propOpt("-name", kv("guest", s.Name), kv("debug-threads", "on")),
		propOpt("-machine", kv("", machine)),
		propOpt("-accel", kv("", cfg.Accel)),
		propOpt("-cpu", kv("", s.CpuModel)),
		propOpt("-smp", kv("", strconv.Itoa(int(s.Vcpus)))),
		propOpt("-m", kv("", strconv.FormatInt(s.MemoryMib, 10)+"M")),
		bareOpt("-nodefaults"),
		bareOpt("-no-user-config"),
		propOpt("-display", kv("", "none")),
		propOpt("-msg", kv("timestamp", "on")),
		propOpt("-chardev", kv("", "socket"), kv("id", "qmp"), kv("path", p.QMPSocket), kv("server", "on"), kv("wait", "off")),
		propOpt("-mon", kv("chardev", "qmp"), kv("mode", "control")),
	}
	if cfg.Sandbox {
		opts = append(opts, propOpt("-sandbox", kv("", "on"), kv("obsolete", "deny"), kv("spawn", "deny"), kv("resourcecontrol", "deny")))
	}
	if cfg.RunAs != "" {
		opts = append(opts, propOpt("-run-with", kv("user", cfg.RunAs)))
	}
	if p.ObserveSocket != "" {
		opts = append(opts,
			propOpt("-chardev", kv("", "socket"), kv("id", "qmp-observe"), kv("path", p.ObserveSocket), kv("server", "on"), kv("wait", "off")),
			propOpt("-mon", kv("chardev", "qmp-observe"), kv("mode", "control")))
	}
	opts = append(opts,
		propOpt("-chardev", kv("", "file"), kv("id", "serial0"), kv("path", p.SerialLog), kv("append", "on")),
		rawOpt("-serial", "chardev:serial0"),
		rawOpt("-pidfile", p.PIDFile),
	)
	if k := s.Boot.Kernel; k != "" {
		opts = append(opts, rawOpt("-kernel", k))
		if s.Boot.Initrd != "" {
			opts = append(opts, rawOpt("-initrd", s.Boot.Initrd))
		}
		if s.Boot.Cmdline != "" {
			opts = append(opts, rawOpt("-append", s.Boot.Cmdline))
		}
	}
	diskOpts, err := diskOptions(s, cfg.Disks)
	if err != nil {
		return nil, err
	}
	opts = append(opts, diskOpts...)
	nicOpts, err := nicOptions(s, cfg.NICs)
	if err != nil {
		return nil, err
	}
	opts = append(opts, nicOpts...)
	if s.GuestAgent {
		// Last, so the devices before it keep their PCI slots with or
		// without the channel. The ids depend on nothing host-specific:
		// source and destination have the same device model.
		if !filepath.IsAbs(p.GuestAgentSocket) || len(p.GuestAgentSocket) > maxSocketPath {
			return nil, fmt.Errorf("qemu: Config.Paths.GuestAgentSocket: spec.guestAgent needs an absolute unix socket path of at most %d bytes (use PathsFor with a short VM directory), got %q", maxSocketPath, p.GuestAgentSocket)
		}
		opts = append(opts,
			propOpt("-device", kv("", "virtio-serial-pci"), kv("id", "vser0")),
			propOpt("-chardev", kv("", "socket"), kv("id", "qga0"), kv("path", p.GuestAgentSocket), kv("server", "on"), kv("wait", "off")),
			propOpt("-device", kv("", "virtserialport"), kv("bus", "vser0.0"), kv("chardev", "qga0"), kv("name", GuestAgentPort), kv("id", "qga0-port")),
		)
	}
	if cfg.Incoming != "" {
		// -S: the destination stays paused after the state arrives; the
		// agent resumes it only once the owner record names this host.
		opts = append(opts, bareOpt("-S"), rawOpt("-incoming", cfg.Incoming))
	}
	return opts, nil
}

// checkPaths requires absolute file paths and a short enough socket path.
func checkPaths(p Paths) error {
	for _, f := range []struct{ name, val string }{
		{"QMPSocket", p.QMPSocket}, {"SerialLog", p.SerialLog}, {"PIDFile", p.PIDFile},
	} {
		if !filepath.IsAbs(f.val) {
			return fmt.Errorf("qemu: Config.Paths.%s: must be an absolute path (use PathsFor), got %q", f.name, f.val)
		}
	}
	for _, f := range []struct{ name, val string }{{"QMPSocket", p.QMPSocket}, {"ObserveSocket", p.ObserveSocket}} {
		if len(f.val) > maxSocketPath {
			return fmt.Errorf("qemu: Config.Paths.%s: unix socket paths are limited to %d bytes, got %d (%s): use a shorter VM directory", f.name, maxSocketPath, len(f.val), f.val)
		}
	}
	return nil
}

// blockdevFile and blockdevFormat are the JSON -blockdev nodes of a disk;
// field order is fixed so the argv is deterministic.
type blockdevFile struct {
	Driver   string         `json:"driver"`
	Filename string         `json:"filename"`
	NodeName string         `json:"node-name"`
	Discard  string         `json:"discard"`
	Cache    *blockdevCache `json:"cache,omitempty"`
}

// blockdevCache is a file node's cache options.
type blockdevCache struct {
	Direct bool `json:"direct"`
}

type blockdevFormat struct {
	Driver   string `json:"driver"`
	NodeName string `json:"node-name"`
	File     string `json:"file"`
	Discard  string `json:"discard"`
}

// diskOptions renders -blockdev (file + format node) and -device pairs.
func diskOptions(s *ferryv1.VMSpec, disks []Disk) ([]option, error) {
	if len(disks) != len(s.Disks) {
		return nil, fmt.Errorf("qemu: Config.Disks: need one resolved disk per spec.disks entry (%d), got %d", len(s.Disks), len(disks))
	}
	var opts []option
	for i, d := range disks {
		sd := s.Disks[i]
		field := fmt.Sprintf("qemu: Config.Disks[%d]", i)
		if d.Name != "" && d.Name != sd.Name {
			return nil, fmt.Errorf("%s.Name: must match spec.disks[%d].name %q, got %q", field, i, sd.Name, d.Name)
		}
		if !filepath.IsAbs(d.Path) {
			return nil, fmt.Errorf("%s.Path: must be an absolute image path, got %q", field, d.Path)
		}
		format := d.Format
		if format == "" {
			format = sd.Format
		}
		if format != "qcow2" && format != "raw" {
			return nil, fmt.Errorf("%s.Format: must be qcow2 or raw, got %q", field, format)
		}
		name := sd.Name
		fileNode := blockdevFile{Driver: "file", Filename: d.Path, NodeName: name + "-file", Discard: "unmap"}
		if d.Direct {
			fileNode.Cache = &blockdevCache{Direct: true}
		}
		file, err := jsonArg(fileNode)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", field, err)
		}
		fmtNode, err := jsonArg(blockdevFormat{Driver: format, NodeName: name, File: name + "-file", Discard: "unmap"})
		if err != nil {
			return nil, fmt.Errorf("%s: %w", field, err)
		}
		dev := []prop{kv("", "virtio-blk-pci"), kv("drive", name), kv("id", name+"-dev")}
		if s.Boot.Disk == name {
			dev = append(dev, kv("bootindex", "1"))
		}
		opts = append(opts, rawOpt("-blockdev", file), rawOpt("-blockdev", fmtNode), propOpt("-device", dev...))
	}
	return opts, nil
}

// nicOptions renders -netdev tap and -device virtio-net-pci pairs.
func nicOptions(s *ferryv1.VMSpec, nics []NIC) ([]option, error) {
	if len(nics) != len(s.Nics) {
		return nil, fmt.Errorf("qemu: Config.NICs: need one resolved NIC per spec.nics entry (%d), got %d", len(s.Nics), len(nics))
	}
	var opts []option
	for i, n := range nics {
		field := fmt.Sprintf("qemu: Config.NICs[%d]", i)
		if !tapRE.MatchString(n.Tap) {
			return nil, fmt.Errorf("%s.Tap: must be a tap interface name (1-15 of letters, digits, '-', '_', '.'), got %q", field, n.Tap)
		}
		mac := n.MAC
		if mac == "" {
			mac = s.Nics[i].Mac
		}
		if !macRE.MatchString(mac) {
			return nil, fmt.Errorf("%s.MAC: must be a MAC address like 52:54:00:12:34:56, got %q", field, mac)
		}
		id := strconv.Itoa(i)
		opts = append(opts,
			propOpt("-netdev", kv("", "tap"), kv("id", "net"+id), kv("ifname", n.Tap), kv("script", "no"), kv("downscript", "no")),
			propOpt("-device", kv("", "virtio-net-pci"), kv("netdev", "net"+id), kv("mac", strings.ToLower(mac)), kv("id", "nic"+id)),
		)
	}
	return opts, nil
}

// jsonArg marshals v as a compact JSON option argument.
func jsonArg(v any) (string, error) {
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return "", fmt.Errorf("encode -blockdev: %w", err)
	}
	return strings.TrimSuffix(b.String(), "\n"), nil
}
