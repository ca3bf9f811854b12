package spec

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"

	ferryv1 "github.com/ferryvm/ferry/gen/ferry/v1"
)

const goodYAML = `
name: web-1
vcpus: 2
memoryMiB: 512
boot:
  kernel: vmlinuz
  initrd: /boot/initrd.img
  cmdline: console=ttyS0
disks:
  - path: images/root.qcow2
    shared: true
  - name: data
    size: 1GiB
    format: raw
nics:
  - bridge: br0
  - mac: 52:54:00:aa:bb:cc
cpuModel: qemu64
accel: tcg
maxDowntimeMs: 500
`

func TestParseYAML(t *testing.T) {
	s, err := Parse([]byte(goodYAML), "/srv/vms")
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	want := &ferryv1.VMSpec{
		Name: "web-1", Vcpus: 2, MemoryMib: 512,
		Boot: &ferryv1.BootSpec{Kernel: "/srv/vms/vmlinuz", Initrd: "/boot/initrd.img", Cmdline: "console=ttyS0"},
		Disks: []*ferryv1.DiskSpec{
			{Path: "/srv/vms/images/root.qcow2", Shared: true},
			{Name: "data", Size: "1GiB", Format: "raw"},
		},
		Nics:     []*ferryv1.NICSpec{{Bridge: "br0"}, {Mac: "52:54:00:aa:bb:cc"}},
		CpuModel: "qemu64", Accel: "tcg", MaxDowntimeMs: 500,
	}
	if !proto.Equal(s, want) {
		t.Fatalf("Parse mismatch:\n got %v\nwant %v", s, want)
	}
	if err := Validate(s); err != nil {
		t.Fatalf("Validate(good spec): %v", err)
	}
}

func TestParse(t *testing.T) {
	tests := []struct {
		name    string
		in      string
		baseDir string
		wantErr string // substring; "" means success
		check   func(t *testing.T, s *ferryv1.VMSpec)
	}{
		{name: "json", in: `{"name":"a","vcpus":1,"memoryMiB":"128","boot":{"disk":"disk0"},"disks":[{"size":"1G"}]}`,
			check: func(t *testing.T, s *ferryv1.VMSpec) {
				if s.MemoryMib != 128 || s.Boot.Disk != "disk0" || s.Disks[0].Size != "1G" {
					t.Errorf("got %v", s)
				}
			}},
		{name: "unknown top-level field with suggestion", in: "name: a\nmemoryMB: 512\n",
			wantErr: `spec: unknown field "memoryMB" (did you mean "memoryMiB"?)`},
		{name: "unknown nested field", in: "disks:\n- path: /x\n- sise: 1G\n",
			wantErr: `spec.disks[1]: unknown field "sise" (did you mean "size"?)`},
		{name: "unknown field no suggestion", in: "frobnicate: 1\n",
			wantErr: `spec: unknown field "frobnicate" (known fields: name, vcpus, memoryMiB`},
		{name: "case typo suggestion", in: "cpumodel: qemu64\n",
			wantErr: `(did you mean "cpuModel"?)`},
		{name: "all unknown fields at once", in: "memoryMB: 1\ncpus: 2\n",
			wantErr: "(2 problems)"},
		{name: "wrong int type", in: "vcpus: two\n", wantErr: `spec.vcpus: must be a whole number (32-bit), got "two"`},
		{name: "int32 overflow", in: "vcpus: 99999999999\n", wantErr: `spec.vcpus: must be a whole number (32-bit), got 99999999999`},
		{name: "bool for string", in: "name: yes\n", wantErr: `spec.name: must be a string, got true (quote it in YAML)`},
		{name: "wrong bool type", in: "disks:\n- shared: maybe\n", wantErr: `spec.disks[0].shared: must be true or false, got "maybe"`},
		{name: "list expected", in: "disks: {path: /x}\n", wantErr: `spec.disks: must be a list, got a mapping`},
		{name: "mapping expected", in: "boot: /vmlinuz\n", wantErr: `spec.boot: must be a mapping of fields (kernel, initrd, cmdline, disk), got "/vmlinuz"`},
		{name: "root not mapping", in: "- a\n- b\n", wantErr: `spec: must be a mapping of fields`},
		{name: "empty document", in: "", wantErr: "spec: empty document"},
		{name: "bad yaml", in: "name: [a\n", wantErr: "spec: invalid YAML/JSON"},
		{name: "number for string field", in: "disks:\n- size: 1073741824\n",
			check: func(t *testing.T, s *ferryv1.VMSpec) {
				if s.Disks[0].Size != "1073741824" {
					t.Errorf("size = %q", s.Disks[0].Size)
				}
			}},
		{name: "proto field names accepted", in: "memory_mib: 256\ncpu_model: max\n",
			check: func(t *testing.T, s *ferryv1.VMSpec) {
				if s.MemoryMib != 256 || s.CpuModel != "max" {
					t.Errorf("got %v", s)
				}
			}},
		{name: "null field is unset", in: "name: a\nboot: null\n",
			check: func(t *testing.T, s *ferryv1.VMSpec) {
				if s.Boot != nil {
					t.Errorf("boot = %v", s.Boot)
				}
			}},
		{name: "no baseDir keeps relative paths", in: "boot: {kernel: k, initrd: i}\ndisks: [{path: d}]\n",
			check: func(t *testing.T, s *ferryv1.VMSpec) {
				if s.Boot.Kernel != "k" || s.Boot.Initrd != "i" || s.Disks[0].Path != "d" {
					t.Errorf("got %v", s)
				}
			}},
		{name: "baseDir resolves relative paths only", in: "boot: {kernel: ../k, initrd: /abs/i}\ndisks: [{path: d}, {size: 1G}]\n", baseDir: "/srv/vm",
			check: func(t *testing.T, s *ferryv1.VMSpec) {
				if s.Boot.Kernel != "/srv/k" || s.Boot.Initrd != "/abs/i" || s.Disks[0].Path != "/srv/vm/d" || s.Disks[1].Path != "" {
					t.Errorf("got %v", s)
				}
			}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, err := Parse([]byte(tt.in), tt.baseDir)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("Parse error = %v, want containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("Parse: %v", err)
			}
			tt.check(t, s)
		})
	}
}

func TestParseUnknownFieldIsValidationError(t *testing.T) {
	_, err := Parse([]byte("memoryMB: 1\n"), "")
	br := ToBadRequest(err)
	if br == nil || len(br.Violations) != 1 || br.Violations[0].Field != "spec" {
		t.Fatalf("ToBadRequest(%v) = %v", err, br)
	}
}

func TestParseSize(t *testing.T) {
	tests := []struct {
		in      string
		want    int64
		wantErr string
	}{
		{"512MiB", 512 << 20, ""},
		{"1GiB", 1 << 30, ""},
		{"10G", 10 << 30, ""},
		{"1073741824", 1 << 30, ""},
		{"4096B", 4096, ""},
		{"64k", 64 << 10, ""},
		{"2Ti", 2 << 40, ""},
		{"1.5G", 3 << 29, ""},
		{" 8 MiB ", 8 << 20, ""},
		{"0", 0, ""},
		{"", 0, "must start with a number"},
		{"G", 0, "must start with a number"},
		{"-1G", 0, "must start with a number"},
		{"10GB", 0, `unit "GB" is ambiguous, use GiB`},
		{"10 parsecs", 0, `unknown unit "parsecs"`},
		{"1.2.3G", 0, "invalid number"},
		{"1.G", 0, "invalid number"},
		{"9999999P", 0, "too large"},
	}
	for _, tt := range tests {
		got, err := ParseSize(tt.in)
		if tt.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("ParseSize(%q) error = %v, want containing %q", tt.in, err, tt.wantErr)
			}
			continue
		}
		if err != nil || got != tt.want {
			t.Errorf("ParseSize(%q) = %d, %v; want %d", tt.in, got, err, tt.want)
		}
	}
}

func TestDefault(t *testing.T) {
	s := &ferryv1.VMSpec{
		Name:  "web-1",
		Disks: []*ferryv1.DiskSpec{{Size: "1G"}, {Name: "data", Path: "/d.raw"}, {Path: "/img.qcow2", Format: "raw"}},
		Nics:  []*ferryv1.NICSpec{{}, {Mac: "52:54:00:00:00:01"}, {}},
	}
	Default(s)
	if s.Accel != "auto" || s.CpuModel != "qemu64" || s.MaxDowntimeMs != 300 {
		t.Errorf("scalar defaults: accel=%q cpuModel=%q maxDowntimeMs=%d", s.Accel, s.CpuModel, s.MaxDowntimeMs)
	}
	if s.Vcpus != 0 || s.MemoryMib != 0 || s.Boot != nil {
		t.Errorf("vcpus/memoryMiB/boot must not be defaulted: %v", s)
	}
	for i, want := range [][2]string{{"disk0", "qcow2"}, {"data", "raw"}, {"disk2", "raw"}} {
		if s.Disks[i].Name != want[0] || s.Disks[i].Format != want[1] {
			t.Errorf("disks[%d] = %q/%q, want %q/%q", i, s.Disks[i].Name, s.Disks[i].Format, want[0], want[1])
		}
	}
	if s.Nics[0].Mac != DefaultMAC("web-1", 0) || s.Nics[1].Mac != "52:54:00:00:00:01" || s.Nics[2].Mac != DefaultMAC("web-1", 2) {
		t.Errorf("macs: %v", s.Nics)
	}
	if s.Nics[0].Mac == s.Nics[2].Mac {
		t.Errorf("generated MACs collide: %s", s.Nics[0].Mac)
	}
	for _, n := range []*ferryv1.NICSpec{s.Nics[0], s.Nics[2]} {
		if !strings.HasPrefix(n.Mac, "52:54:00:") || macProblem(n.Mac) != "" {
			t.Errorf("generated MAC %q is not a valid 52:54:00 unicast MAC", n.Mac)
		}
	}
	if DefaultMAC("web-1", 0) != DefaultMAC("web-1", 0) || DefaultMAC("web-1", 0) == DefaultMAC("web-2", 0) {
		t.Errorf("DefaultMAC must be deterministic and name-dependent")
	}
	before := proto.Clone(s)
	Default(s)
	if !proto.Equal(before, s) {
		t.Errorf("Default is not idempotent")
	}
	Default(nil) // must not panic
}

// validSpec returns a spec that passes Validate.
func validSpec() *ferryv1.VMSpec {
	return &ferryv1.VMSpec{
		Name: "vm-1", Vcpus: 2, MemoryMib: 256,
		Boot:  &ferryv1.BootSpec{Kernel: "/boot/vmlinuz", Initrd: "/boot/initrd", Cmdline: "console=ttyS0"},
		Disks: []*ferryv1.DiskSpec{{Name: "root", Path: "/var/lib/root.qcow2"}, {Size: "1GiB", Format: "raw"}},
		Nics:  []*ferryv1.NICSpec{{Bridge: "br0"}, {Mac: "52:54:00:12:34:56"}},
	}
}

func TestValidateRules(t *testing.T) {
	tests := []struct {
		name  string
		mut   func(s *ferryv1.VMSpec)
		field string
		desc  string // exact description, or a prefix ending in "..."
	}{
		{"name empty", func(s *ferryv1.VMSpec) { s.Name = "" }, "spec.name",
			`must be a DNS label (lowercase letters, digits, '-', 1-63 chars, starting and ending with a letter or digit), got ""`},
		{"name uppercase", func(s *ferryv1.VMSpec) { s.Name = "My_VM" }, "spec.name",
			`must be a DNS label (lowercase letters, digits, '-', 1-63 chars, starting and ending with a letter or digit), got "My_VM"`},
		{"name trailing dash", func(s *ferryv1.VMSpec) { s.Name = "vm-" }, "spec.name", "must be a DNS label..."},
		{"name too long", func(s *ferryv1.VMSpec) { s.Name = strings.Repeat("a", 64) }, "spec.name", "must be a DNS label..."},
		{"vcpus zero", func(s *ferryv1.VMSpec) { s.Vcpus = 0 }, "spec.vcpus", "must be between 1 and 64, got 0"},
		{"vcpus too many", func(s *ferryv1.VMSpec) { s.Vcpus = 65 }, "spec.vcpus", "must be between 1 and 64, got 65"},
		{"memory zero", func(s *ferryv1.VMSpec) { s.MemoryMib = 0 }, "spec.memoryMiB", "must be >= 64, got 0"},
		{"memory small", func(s *ferryv1.VMSpec) { s.MemoryMib = 63 }, "spec.memoryMiB", "must be >= 64, got 63"},
		{"accel", func(s *ferryv1.VMSpec) { s.Accel = "xen" }, "spec.accel", `must be one of auto, kvm, tcg, got "xen"`},
		{"machine type with options", func(s *ferryv1.VMSpec) { s.MachineType = "q35,accel=kvm" }, "spec.machineType",
			`must be a QEMU machine type such as pc-q35-10.0 or the alias q35 (lowercase letters, digits, '.', '-', '_', no options), got "q35,accel=kvm"`},
		{"boot missing", func(s *ferryv1.VMSpec) { s.Boot = nil }, "spec.boot",
			"is required: set either kernel (with optional initrd, cmdline) or disk"},
		{"boot both", func(s *ferryv1.VMSpec) { s.Boot.Disk = "root" }, "spec.boot",
			"set either kernel (with optional initrd, cmdline) or disk, not both"},
		{"boot initrd without kernel", func(s *ferryv1.VMSpec) { s.Boot = &ferryv1.BootSpec{Initrd: "/i"} }, "spec.boot.kernel",
			"is required when initrd or cmdline is set (or remove them and set boot.disk)"},
		{"boot disk with cmdline", func(s *ferryv1.VMSpec) { s.Boot = &ferryv1.BootSpec{Disk: "root", Cmdline: "x"} }, "spec.boot.cmdline",
			"is only valid with boot.kernel: remove it when booting from boot.disk"},
		{"boot disk unknown", func(s *ferryv1.VMSpec) { s.Boot = &ferryv1.BootSpec{Disk: "boot"} }, "spec.boot.disk",
			`no disk named "boot" in spec.disks`},
		{"kernel relative", func(s *ferryv1.VMSpec) { s.Boot.Kernel = "vmlinuz" }, "spec.boot.kernel",
			`must be an absolute path (relative paths in a spec file are resolved against its directory), got "vmlinuz"`},
		{"initrd relative", func(s *ferryv1.VMSpec) { s.Boot.Initrd = "initrd" }, "spec.boot.initrd", "must be an absolute path..."},
		{"cmdline too long", func(s *ferryv1.VMSpec) { s.Boot.Cmdline = strings.Repeat("x", 2048) }, "spec.boot.cmdline", "must be at most 2047 bytes, got 2048"},
		{"cmdline newline", func(s *ferryv1.VMSpec) { s.Boot.Cmdline = "a\nb" }, "spec.boot.cmdline", "must be a single line without NUL bytes"},
		{"disk neither path nor size", func(s *ferryv1.VMSpec) { s.Disks[1].Size = "" }, "spec.disks[1]",
			"set exactly one of path (an existing image), size (a new empty local image) or source (a new local image copied from an allowed image)"},
		{"disk size and source", func(s *ferryv1.VMSpec) { s.Disks[1].Source = "/images/base.qcow2" }, "spec.disks[1]", "set exactly one of path..."},
		{"disk source relative", func(s *ferryv1.VMSpec) { s.Disks[1].Size, s.Disks[1].Source = "", "base.qcow2" }, "spec.disks[1].source", "must be an absolute path..."},
		{"disk source shared", func(s *ferryv1.VMSpec) {
			s.Disks[1].Size, s.Disks[1].Source, s.Disks[1].Shared = "", "/images/base.qcow2", true
		}, "spec.disks[1].shared",
			"a disk copied from source is local to its host: remove shared: true, or set path to an image on shared storage instead of source"},
		{"disk both path and size", func(s *ferryv1.VMSpec) { s.Disks[0].Size = "1G" }, "spec.disks[0]", "set exactly one of path..."},
		{"disk path relative", func(s *ferryv1.VMSpec) { s.Disks[0].Path = "root.qcow2" }, "spec.disks[0].path", "must be an absolute path..."},
		{"disk size syntax", func(s *ferryv1.VMSpec) { s.Disks[1].Size = "lots" }, "spec.disks[1].size",
			`must be a size like 512MiB, 1GiB, 10G or a byte count, got "lots"`},
		{"disk size zero", func(s *ferryv1.VMSpec) { s.Disks[1].Size = "0MiB" }, "spec.disks[1].size", `must be greater than 0, got "0MiB"`},
		{"disk shared with size", func(s *ferryv1.VMSpec) { s.Disks[1].Shared = true }, "spec.disks[1].shared",
			"a shared disk must be an existing image every host sees at the same path: set path (create the image once, e.g. with qemu-img create) and remove size, or remove shared: true for a new local disk"},
		{"disk format", func(s *ferryv1.VMSpec) { s.Disks[1].Format = "vmdk" }, "spec.disks[1].format", `must be one of qcow2, raw, got "vmdk"`},
		{"disk name charset", func(s *ferryv1.VMSpec) { s.Disks[0].Name = "Root" }, "spec.disks[0].name",
			`must be 1-26 chars of lowercase letters, digits and '-', starting with a letter (it names QEMU block nodes), got "Root"`},
		{"disk name too long", func(s *ferryv1.VMSpec) { s.Disks[0].Name = strings.Repeat("d", 27) }, "spec.disks[0].name", "must be 1-26 chars..."},
		{"disk name duplicate", func(s *ferryv1.VMSpec) { s.Disks[1].Name = "root" }, "spec.disks[1].name",
			`duplicate disk name "root" (also spec.disks[0]); give each disk a unique name`},
		{"disk default name duplicate", func(s *ferryv1.VMSpec) { s.Disks[0].Name = "disk1" }, "spec.disks[1].name", `duplicate disk name "disk1"...`},
		{"disk null", func(s *ferryv1.VMSpec) { s.Disks[1] = nil }, "spec.disks[1]", "must be a mapping with path or size, got null"},
		{"too many disks", func(s *ferryv1.VMSpec) {
			s.Disks = nil
			for i := 0; i < 17; i++ {
				s.Disks = append(s.Disks, &ferryv1.DiskSpec{Size: "1G"})
			}
		}, "spec.disks", "at most 16 disks are supported, got 17"},
		{"mac syntax", func(s *ferryv1.VMSpec) { s.Nics[1].Mac = "52-54-00-12-34-56" }, "spec.nics[1].mac",
			`must be a MAC address like 52:54:00:12:34:56 (six hex pairs separated by ':'), got "52-54-00-12-34-56"`},
		{"mac multicast", func(s *ferryv1.VMSpec) { s.Nics[0].Mac = "01:00:5e:00:00:01" }, "spec.nics[0].mac",
			`must be a unicast MAC (first octet even), e.g. 52:54:00:12:34:56, got "01:00:5e:00:00:01"`},
		{"mac zero", func(s *ferryv1.VMSpec) { s.Nics[0].Mac = "00:00:00:00:00:00" }, "spec.nics[0].mac", "must not be all zeros..."},
		{"mac duplicate", func(s *ferryv1.VMSpec) { s.Nics[0].Mac = "52:54:00:12:34:56" }, "spec.nics[1].mac",
			`duplicate MAC "52:54:00:12:34:56" (also spec.nics[0]); give each NIC a unique MAC or leave it empty`},
		{"bridge name", func(s *ferryv1.VMSpec) { s.Nics[0].Bridge = "a-very-long-bridge-name" }, "spec.nics[0].bridge", "must be a host interface name..."},
		{"nic null", func(s *ferryv1.VMSpec) { s.Nics[0] = nil }, "spec.nics[0]", "must be a mapping (use {} for all defaults), got null"},
		{"cpu model options", func(s *ferryv1.VMSpec) { s.CpuModel = "qemu64,+avx" }, "spec.cpuModel",
			`must be a QEMU CPU model name (letters, digits, '-', '_', '.', at most 64 chars, no options), got "qemu64,+avx"`},
		{"downtime negative", func(s *ferryv1.VMSpec) { s.MaxDowntimeMs = -1 }, "spec.maxDowntimeMs", "must be between 1 and 60000 (or unset for 300), got -1"},
		{"downtime too big", func(s *ferryv1.VMSpec) { s.MaxDowntimeMs = 60001 }, "spec.maxDowntimeMs", "must be between 1 and 60000..."},
		// Hostile input: the field is named (which directories a path may
		// be in is the agent's check, see internal/agent/hostpaths.go).
		{"kernel relative dotdot", func(s *ferryv1.VMSpec) { s.Boot.Kernel = "../../x" }, "spec.boot.kernel", "must be an absolute path..."},
		{"kernel dotdot", func(s *ferryv1.VMSpec) { s.Boot.Kernel = "/var/lib/ferry/../../etc/shadow" }, "spec.boot.kernel", `must not contain a ".." element...`},
		{"disk dotdot", func(s *ferryv1.VMSpec) { s.Disks[0].Path = "/srv/../dev/sda" }, "spec.disks[0].path", `must not contain a ".." element...`},
		{"path too long", func(s *ferryv1.VMSpec) { s.Boot.Initrd = "/" + strings.Repeat("a", MaxPathLen) }, "spec.boot.initrd", "must be at most 4095 bytes..."},
		{"memory too big", func(s *ferryv1.VMSpec) { s.MemoryMib = MaxMemoryMiB + 1 }, "spec.memoryMiB", "must be at most..."},
		{"disk too big", func(s *ferryv1.VMSpec) { s.Disks[1].Size = "65TiB" }, "spec.disks[1].size", "must be at most 64TiB..."},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := validSpec()
			tt.mut(s)
			err := Validate(s)
			var ve *ValidationError
			if !errors.As(err, &ve) {
				t.Fatalf("Validate = %v, want *ValidationError", err)
			}
			if len(ve.Violations) != 1 {
				t.Fatalf("want exactly 1 violation, got:\n%v", err)
			}
			v := ve.Violations[0]
			if v.Field != tt.field {
				t.Errorf("field = %q, want %q", v.Field, tt.field)
			}
			if p, ok := strings.CutSuffix(tt.desc, "..."); ok {
				if !strings.HasPrefix(v.Description, p) {
					t.Errorf("description = %q, want prefix %q", v.Description, p)
				}
			} else if v.Description != tt.desc {
				t.Errorf("description = %q\n                       want %q", v.Description, tt.desc)
			}
		})
	}
}

func TestValidateAcceptsGoodVariants(t *testing.T) {
	for name, mut := range map[string]func(s *ferryv1.VMSpec){
		"as is":     func(s *ferryv1.VMSpec) {},
		"defaulted": Default,
		"disk boot": func(s *ferryv1.VMSpec) { s.Boot = &ferryv1.BootSpec{Disk: "root"} },
		"disk boot by default name": func(s *ferryv1.VMSpec) {
			s.Boot = &ferryv1.BootSpec{Disk: "disk1"}
		},
		"kernel only": func(s *ferryv1.VMSpec) { s.Boot = &ferryv1.BootSpec{Kernel: "/k"} },
		"no disks":    func(s *ferryv1.VMSpec) { s.Disks = nil },
		"limits": func(s *ferryv1.VMSpec) {
			s.Vcpus, s.MemoryMib, s.MaxDowntimeMs, s.Name = 64, 64, 60000, strings.Repeat("a", 63)
		},
		"accel values":     func(s *ferryv1.VMSpec) { s.Accel = "kvm" },
		"shared path disk": func(s *ferryv1.VMSpec) { s.Disks[0].Shared = true },
		"local disk from source": func(s *ferryv1.VMSpec) {
			s.Disks[1].Size, s.Disks[1].Source = "", "/images/base.qcow2"
		},
		"machine type pinned": func(s *ferryv1.VMSpec) { s.MachineType = "pc-q35-10.0" },
		"machine type alias":  func(s *ferryv1.VMSpec) { s.MachineType = "q35" },
		"one char name": func(s *ferryv1.VMSpec) {
			s.Name = "a"
		},
	} {
		s := validSpec()
		mut(s)
		if err := Validate(s); err != nil {
			t.Errorf("%s: Validate = %v", name, err)
		}
	}
	if err := Validate(nil); err == nil || !strings.Contains(err.Error(), "spec: is required") {
		t.Errorf("Validate(nil) = %v", err)
	}
}

func TestValidateReportsEveryProblem(t *testing.T) {
	s := validSpec()
	s.Name = "My_VM"
	s.MemoryMib = 0
	s.Disks[1].Size = "ten"
	err := Validate(s)
	var ve *ValidationError
	if !errors.As(err, &ve) {
		t.Fatalf("Validate = %v, want *ValidationError", err)
	}
	want := `invalid VM spec (3 problems):
  spec.name: must be a DNS label (lowercase letters, digits, '-', 1-63 chars, starting and ending with a letter or digit), got "My_VM"
  spec.memoryMiB: must be >= 64, got 0
  spec.disks[1].size: must be a size like 512MiB, 1GiB, 10G or a byte count, got "ten"`
	if len(ve.Violations) != 3 || err.Error() != want {
		t.Fatalf("got %d violations:\n%v\nwant:\n%s", len(ve.Violations), err, want)
	}
	one := &ValidationError{Violations: ve.Violations[:1]}
	if !strings.HasPrefix(one.Error(), "invalid VM spec (1 problem):\n  spec.name: ") {
		t.Errorf("singular count line: %q", one.Error())
	}
}

func TestBadRequestRoundTrip(t *testing.T) {
	ve := &ValidationError{Violations: []Violation{{"spec.name", "bad"}, {"spec.vcpus", "worse"}}}
	wrapped := fmt.Errorf("create vm: %w", ve)
	br := ToBadRequest(wrapped)
	if br == nil || len(br.Violations) != 2 || br.Violations[1].Field != "spec.vcpus" || br.Violations[1].Description != "worse" {
		t.Fatalf("ToBadRequest = %v", br)
	}
	back := FromBadRequest(br)
	if back == nil || back.Error() != ve.Error() {
		t.Fatalf("FromBadRequest = %v, want %v", back, ve)
	}
	if ToBadRequest(errors.New("other")) != nil || ToBadRequest(nil) != nil {
		t.Errorf("ToBadRequest of a non-validation error must be nil")
	}
	if FromBadRequest(nil) != nil || FromBadRequest(&ferryv1.BadRequest{}) != nil {
		t.Errorf("FromBadRequest of an empty BadRequest must be nil")
	}
}

func TestEditDistanceAndSuggest(t *testing.T) {
	if d := editDistance("kitten", "sitting"); d != 3 {
		t.Errorf("editDistance = %d, want 3", d)
	}
	if s := suggest("memorymb", []string{"name", "memoryMiB"}); s != "memoryMiB" {
		t.Errorf("suggest = %q", s)
	}
	if s := suggest("zzzzzz", []string{"name", "memoryMiB"}); s != "" {
		t.Errorf("suggest = %q, want none", s)
	}
}
