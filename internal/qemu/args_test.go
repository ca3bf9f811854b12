package qemu

import (
	"flag"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"

	ferryv1 "github.com/ferryvm/ferry/gen/ferry/v1"
	"github.com/ferryvm/ferry/internal/spec"
)

var update = flag.Bool("update", false, "rewrite testdata/*.golden from the current Args output")

func kernelSpec(name string) *ferryv1.VMSpec {
	return &ferryv1.VMSpec{
		Name: name, Vcpus: 1, MemoryMib: 256,
		Boot: &ferryv1.BootSpec{Kernel: "/boot/vmlinuz", Cmdline: "console=ttyS0 root=/dev/vda"},
	}
}

func twoDiskSpec() *ferryv1.VMSpec {
	return &ferryv1.VMSpec{
		Name: "db", Vcpus: 4, MemoryMib: 2048,
		Boot:  &ferryv1.BootSpec{Kernel: "/boot/vmlinuz", Initrd: "/boot/initrd.img", Cmdline: "console=ttyS0 root=/dev/vda1"},
		Disks: []*ferryv1.DiskSpec{{Name: "root", Path: "/images/db-root.qcow2"}, {Size: "10GiB", Format: "raw"}},
		Nics:  []*ferryv1.NICSpec{{}, {Mac: "52:54:00:AB:CD:EF", Bridge: "br1"}},
		// Pinned at create time on a QEMU 10.0 host.
		MachineType: "pc-q35-10.0",
	}
}

// guestAgentSpec is a kernel-boot VM with a NIC and the guest agent channel.
func guestAgentSpec() *ferryv1.VMSpec {
	s := kernelSpec("web-1")
	s.Nics = []*ferryv1.NICSpec{{}}
	s.GuestAgent = true
	return s
}

func goldenConfigs() map[string]Config {
	vmDir := func(n string) Paths { return PathsFor("/var/lib/ferry/vms/" + n) }
	diskBoot := twoDiskSpec()
	diskBoot.Name = "boot-disk"
	diskBoot.Boot = &ferryv1.BootSpec{Disk: "root"}
	diskBoot.Nics = nil
	return map[string]Config{
		"kernel_minimal": {Spec: kernelSpec("web-1"), Accel: "tcg", Paths: vmDir("web-1")},
		"two_disks_two_nics": {
			Spec: twoDiskSpec(), Accel: "kvm", Paths: vmDir("db"),
			Disks: []Disk{{Name: "root", Path: "/images/db-root.qcow2"}, {Path: "/var/lib/ferry/vms/db/disk1.raw"}},
			NICs:  []NIC{{Tap: "fr-db-0"}, {Tap: "fr-db-1"}},
		},
		"disk_boot": {
			Spec: diskBoot, Accel: "tcg", Paths: vmDir("boot-disk"),
			Disks: []Disk{{Path: "/images/db-root.qcow2"}, {Name: "disk1", Path: "/var/lib/ferry/vms/boot-disk/disk1.raw", Format: "raw"}},
		},
		"local_disk_direct": {
			Spec: diskBoot, Accel: "tcg", Paths: vmDir("boot-disk"), Incoming: "defer",
			Disks: []Disk{{Path: "/images/db-root.qcow2"}, {Name: "disk1", Path: "/var/lib/ferry/vms/boot-disk/disks/disk1.raw", Format: "raw", Direct: true}},
		},
		"incoming_defer": {Spec: kernelSpec("web-1"), Accel: "tcg", Paths: vmDir("web-1"), Incoming: "defer"},
		"guest_agent":    {Spec: guestAgentSpec(), Accel: "tcg", Paths: vmDir("web-1"), NICs: []NIC{{Tap: "fr-web-0"}}},
		"guest_agent_incoming": {
			Spec: guestAgentSpec(), Accel: "tcg", Paths: vmDir("web-1"), NICs: []NIC{{Tap: "fr-web-0"}}, Incoming: "defer",
		},
		"unprivileged": {Spec: kernelSpec("web-1"), Accel: "tcg", Paths: vmDir("web-1"), RunAs: "ferry-qemu", Sandbox: true},
	}
}

func TestArgsGolden(t *testing.T) {
	for name, cfg := range goldenConfigs() {
		t.Run(name, func(t *testing.T) {
			argv, err := Args(cfg)
			if err != nil {
				t.Fatalf("Args: %v", err)
			}
			got := strings.Join(argv, "\n") + "\n"
			path := filepath.Join("testdata", name+".golden")
			if *update {
				if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(path)
			if err != nil {
				t.Fatalf("%v (run go test ./internal/qemu -run Golden -update)", err)
			}
			if got != string(want) {
				t.Errorf("argv differs from %s (rerun with -update if intended):\n--- got\n%s--- want\n%s", path, got, want)
			}
		})
	}
}

func TestArgsDeterministicAcrossHosts(t *testing.T) {
	src := goldenConfigs()["two_disks_two_nics"]
	src.Spec = proto.Clone(src.Spec).(*ferryv1.VMSpec)
	src.Spec.GuestAgent = true // the channel is part of the device model on both sides
	dst := src
	dst.Paths = PathsFor("/other/host/db")
	dst.Disks = []Disk{{Path: "/other/root.qcow2"}, {Path: "/other/disk1.raw"}}
	dst.NICs = []NIC{{Tap: "tap7"}, {Tap: "tap8"}}
	dst.Incoming = "defer"
	a, err := Args(src)
	if err != nil {
		t.Fatal(err)
	}
	b, err := Args(dst)
	if err != nil {
		t.Fatal(err)
	}
	// Strip host-specific words; everything else (ids, node names, devices,
	// MACs, machine) must match.
	norm := func(argv []string) []string {
		var out []string
		for i := 0; i < len(argv); i++ {
			switch argv[i] {
			case "-pidfile", "-incoming":
				i++
				continue
			case "-S": // the destination starts paused
				continue
			case "-chardev", "-netdev", "-blockdev":
				out = append(out, argv[i], "<host-specific>")
				i++
				continue
			}
			out = append(out, argv[i])
		}
		return out
	}
	if !slices.Equal(norm(a), norm(b)) {
		t.Errorf("source and destination argv differ:\n%q\n%q", norm(a), norm(b))
	}
	again, _ := Args(src)
	if !slices.Equal(a, again) {
		t.Errorf("Args is not deterministic")
	}
	if !slices.Contains(a, "mac="+"52:54:00:ab:cd:ef") && !strings.Contains(strings.Join(a, " "), "mac=52:54:00:ab:cd:ef") {
		t.Errorf("explicit MAC missing: %q", a)
	}
	if want := "mac=" + spec.DefaultMAC("db", 0); !strings.Contains(strings.Join(a, " "), want) {
		t.Errorf("default MAC %s missing", want)
	}
}

func TestArgsEscapesCommas(t *testing.T) {
	cfg := Config{Spec: kernelSpec("vm"), Accel: "tcg", Paths: PathsFor("/vms/a,b")}
	cfg.Spec.Boot.Kernel = "/k,1"
	cfg.Spec.Disks = []*ferryv1.DiskSpec{{Path: "/img,x.qcow2"}}
	cfg.Disks = []Disk{{Path: "/img,x.qcow2"}}
	argv, err := Args(cfg)
	if err != nil {
		t.Fatal(err)
	}
	joined := strings.Join(argv, "\n")
	for _, want := range []string{
		"socket,id=qmp,path=/vms/a,,b/qmp.sock,server=on,wait=off",
		"file,id=serial0,path=/vms/a,,b/serial.log,append=on",
		"-pidfile\n/vms/a,b/qemu.pid", // not an option list: verbatim
		"-kernel\n/k,1",
		`{"driver":"file","filename":"/img,x.qcow2","node-name":"disk0-file","discard":"unmap"}`, // JSON: no escaping
	} {
		if !strings.Contains(joined, want) {
			t.Errorf("argv lacks %q:\n%s", want, joined)
		}
	}
}

func TestArgsErrors(t *testing.T) {
	base := func() Config { return goldenConfigs()["two_disks_two_nics"] }
	tests := []struct {
		name string
		mut  func(c *Config)
		want string
	}{
		{"nil spec", func(c *Config) { c.Spec = nil }, "Config.Spec: required"},
		{"invalid spec", func(c *Config) { c.Spec = kernelSpec("Bad_Name") }, "Config.Spec: invalid VM spec (1 problem):\n  spec.name:"},
		{"unresolved accel", func(c *Config) { c.Accel = "auto" }, `Config.Accel: must be kvm or tcg (resolve "auto" with ResolveAccel first), got "auto"`},
		{"machine", func(c *Config) { c.MachineType = "q35,accel=kvm" }, "Config.MachineType: must be a QEMU machine type"},
		{"run as", func(c *Config) { c.RunAs = "root,x=1" }, `Config.RunAs: must be a user name`},
		{"incoming", func(c *Config) { c.Incoming = "tcp:0:4444" }, `Config.Incoming: must be "" or "defer", got "tcp:0:4444"`},
		{"relative paths", func(c *Config) { c.Paths = PathsFor("vms/db") }, `Config.Paths.QMPSocket: must be an absolute path`},
		{"long socket", func(c *Config) { c.Paths = PathsFor("/" + strings.Repeat("d", 120)) }, "Config.Paths.QMPSocket: unix socket paths are limited to 107 bytes"},
		{"disk count", func(c *Config) { c.Disks = c.Disks[:1] }, "Config.Disks: need one resolved disk per spec.disks entry (2), got 1"},
		{"disk name", func(c *Config) { c.Disks[1].Name = "data" }, `Config.Disks[1].Name: must match spec.disks[1].name "disk1", got "data"`},
		{"disk path", func(c *Config) { c.Disks[0].Path = "" }, `Config.Disks[0].Path: must be an absolute image path, got ""`},
		{"disk format", func(c *Config) { c.Disks[0].Format = "vmdk" }, `Config.Disks[0].Format: must be qcow2 or raw, got "vmdk"`},
		{"nic count", func(c *Config) { c.NICs = nil }, "Config.NICs: need one resolved NIC per spec.nics entry (2), got 0"},
		{"tap", func(c *Config) { c.NICs[0].Tap = "" }, `Config.NICs[0].Tap: must be a tap interface name`},
		{"mac", func(c *Config) { c.NICs[1].MAC = "nope" }, `Config.NICs[1].MAC: must be a MAC address like 52:54:00:12:34:56, got "nope"`},
		{"guest agent socket", func(c *Config) { c.Spec.GuestAgent = true; c.Paths.GuestAgentSocket = "" }, "Config.Paths.GuestAgentSocket: spec.guestAgent needs an absolute unix socket path"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := base()
			c.Disks = slices.Clone(c.Disks)
			c.NICs = slices.Clone(c.NICs)
			tt.mut(&c)
			_, err := Args(c)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Args error = %v, want containing %q", err, tt.want)
			}
		})
	}
}

func TestArgsDoesNotMutateSpec(t *testing.T) {
	s := twoDiskSpec()
	cfg := goldenConfigs()["two_disks_two_nics"]
	cfg.Spec = s
	if _, err := Args(cfg); err != nil {
		t.Fatal(err)
	}
	if s.Accel != "" || s.Disks[1].Name != "" || s.Nics[0].Mac != "" {
		t.Errorf("Args mutated the caller's spec: %v", s)
	}
}

func TestPathsFor(t *testing.T) {
	p := PathsFor("/v/x")
	want := Paths{Dir: "/v/x", QMPSocket: "/v/x/qmp.sock", SerialLog: "/v/x/serial.log", PIDFile: "/v/x/qemu.pid", StderrLog: "/v/x/qemu.log", QMPLog: "/v/x/qmp.log", ObserveSocket: "/v/x/qmp-observe.sock", GuestAgentSocket: "/v/x/qga.sock"}
	if p != want {
		t.Errorf("PathsFor = %+v", p)
	}
}
