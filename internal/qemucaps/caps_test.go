package qemucaps

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	ferryv1 "github.com/ferryvm/ferry/gen/ferry/v1"
)

// load reads the replies in testdata/dir (see testdata/README.md: 10.0 is
// recorded from the real binary, 7.2 is hand-written).
func load(t *testing.T, dir string) Caps {
	t.Helper()
	read := func(name string) json.RawMessage {
		b, err := os.ReadFile(filepath.Join("testdata", dir, name+".json"))
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	c, err := Parse(Replies{
		Version: read("query-version"), Machines: read("query-machines"), CPUDefinitions: read("query-cpu-definitions"),
		Capabilities: read("query-migrate-capabilities"), Schema: read("query-qmp-schema"), Devices: read("qom-list-types"),
	})
	if err != nil {
		t.Fatalf("parse %s: %v", dir, err)
	}
	return c
}

func TestParseQEMU10(t *testing.T) {
	c := load(t, "qemu-10.0")
	if c.Version.String() != "10.0.2" || !strings.Contains(c.Version.Package, "10.0.2") {
		t.Errorf("version %s (%q)", c.Version, c.Version.Package)
	}
	q35, err := c.ResolveMachine("q35")
	if err != nil || q35 != "pc-q35-10.0" {
		t.Errorf("q35 resolves to %q, %v; want pc-q35-10.0", q35, err)
	}
	if _, ok := c.Machine("pc-q35-7.2"); !ok {
		t.Error("pc-q35-7.2 missing: QEMU 10 still has it")
	}
	if m, ok := c.CPUModel("qemu64"); !ok || !m.Usable || m.AliasOf != "qemu64-v1" {
		t.Errorf("qemu64: %+v %v", m, ok)
	}
	if m, ok := c.CPUModel("Skylake-Client"); !ok || m.Usable {
		t.Errorf("Skylake-Client under TCG should be listed and unusable: %+v %v", m, ok)
	}
	for _, cp := range []string{"postcopy-ram", "pause-before-switchover", "postcopy-preempt", "dirty-limit", "switchover-ack", "mapped-ram"} {
		if !c.HasCapability(cp) {
			t.Errorf("capability %s missing", cp)
		}
	}
	for _, p := range []string{"max-bandwidth", "downtime-limit", "avail-switchover-bandwidth", "zero-page-detection", "vcpu-dirty-limit", "multifd-channels"} {
		if !c.HasParameter(p) {
			t.Errorf("parameter %s missing", p)
		}
	}
	// Removed in 9.x: must not be reported.
	for _, p := range []string{"compress-level", "block-incremental"} {
		if c.HasParameter(p) {
			t.Errorf("parameter %s reported but QEMU 10 removed it", p)
		}
	}
	if !slices.Equal(c.Devices, RelevantDevices) {
		t.Errorf("devices %v, want all of %v", c.Devices, RelevantDevices)
	}
	if got := Supported(c); !slices.Equal(got, Features()) {
		t.Errorf("QEMU 10 supports %v, want every feature %v", got, Features())
	}
}

func TestParseQEMU72HandWritten(t *testing.T) {
	c := load(t, "qemu-7.2")
	if c.Version.String() != "7.2.0" {
		t.Errorf("version %s", c.Version)
	}
	if q35, err := c.ResolveMachine("q35"); err != nil || q35 != "pc-q35-7.2" {
		t.Errorf("q35 resolves to %q, %v; want pc-q35-7.2", q35, err)
	}
	if pc, _ := c.ResolveMachine("pc"); pc != "pc-i440fx-7.2" {
		t.Errorf("pc resolves to %q", pc)
	}
	if _, err := c.ResolveMachine("pc-q35-10.0"); !errors.Is(err, ErrUnknownMachine) {
		t.Errorf("pc-q35-10.0 on 7.2: %v, want ErrUnknownMachine", err)
	}
	for _, cp := range []string{"postcopy-ram", "pause-before-switchover", "multifd", "postcopy-preempt"} {
		if !c.HasCapability(cp) {
			t.Errorf("capability %s missing", cp)
		}
	}
	if c.HasCapability("dirty-limit") || c.HasParameter("avail-switchover-bandwidth") || c.HasParameter("zero-page-detection") {
		t.Error("7.2 reports a capability or parameter it does not have")
	}
	if !c.HasParameter("compress-level") || !c.HasParameter("max-bandwidth") {
		t.Error("7.2 parameters missing")
	}
	// 7.2 has multifd with zstd (since 5.0), none of the newer features.
	if got := Supported(c); len(got) != 1 || got[0] != MultifdZstd {
		t.Errorf("7.2 supports %v, want only %s of the features", got, MultifdZstd)
	}
}

func TestRequireNamesTheVersion(t *testing.T) {
	old := load(t, "qemu-7.2")
	cases := map[Feature]string{
		PostcopyPreempt:          "needs QEMU 8.0 or later",
		MultifdZeroPageDetection: "needs QEMU 9.0 or later",
		AvailSwitchoverBandwidth: "needs QEMU 8.2 or later",
		DirtyLimit:               "needs QEMU 8.1 or later",
	}
	for f, want := range cases {
		err := Require(old, f)
		if !errors.Is(err, ErrUnsupported) || !strings.Contains(err.Error(), want) || !strings.Contains(err.Error(), "7.2.0") {
			t.Errorf("Require(7.2, %s) = %v; want ErrUnsupported mentioning %q and 7.2.0", f, err, want)
		}
	}
	c10 := load(t, "qemu-10.0")
	for _, f := range Features() {
		if err := Require(c10, f); err != nil {
			t.Errorf("Require(10.0, %s) = %v", f, err)
		}
	}
	// A new enough version whose build lacks the parameter is refused too,
	// naming what is missing.
	c10.MigrationParameters = slices.DeleteFunc(slices.Clone(c10.MigrationParameters), func(p string) bool { return p == "zero-page-detection" })
	if err := Require(c10, MultifdZeroPageDetection); !errors.Is(err, ErrUnsupported) || !strings.Contains(err.Error(), `"zero-page-detection"`) {
		t.Errorf("missing parameter: %v", err)
	}
	if err := Require(c10, "teleport"); !errors.Is(err, ErrUnknownFeature) {
		t.Errorf("unknown feature: %v", err)
	}
}

func TestCheckDestination(t *testing.T) {
	c10, c72 := load(t, "qemu-10.0"), load(t, "qemu-7.2")
	vm72 := VMNeeds{MachineType: "pc-q35-7.2", CPUModel: "qemu64", Devices: []string{"virtio-blk-pci", "virtio-net-pci"}, Accel: "tcg"}
	for _, dst := range []Caps{c10, c72} {
		if err := CheckDestination("h2", dst, vm72); err != nil {
			t.Errorf("a pc-q35-7.2 qemu64 VM to QEMU %s: %v", dst.Version, err)
		}
	}
	vm10 := VMNeeds{MachineType: "pc-q35-10.0", CPUModel: "qemu64", Devices: []string{"virtio-net-pci"}, Accel: "tcg"}
	err := CheckDestination("h2", c72, vm10)
	if !errors.Is(err, ErrIncompatible) || !strings.Contains(err.Error(), "machine type pc-q35-10.0 is not offered by QEMU 7.2.0 on h2") || !strings.Contains(err.Error(), "upgrade the QEMU of h2") {
		t.Errorf("pc-q35-10.0 to 7.2: %v", err)
	}
	err = CheckDestination("h2", c72, VMNeeds{MachineType: "pc-q35-7.2", CPUModel: "EPYC-Genoa", Accel: "kvm"})
	if !errors.Is(err, ErrIncompatible) || !strings.Contains(err.Error(), "CPU model EPYC-Genoa is not offered") {
		t.Errorf("EPYC-Genoa to 7.2: %v", err)
	}
	// Both problems at once.
	err = CheckDestination("h2", c72, VMNeeds{MachineType: "pc-q35-10.0", CPUModel: "EPYC-Genoa"})
	if err == nil || strings.Count(err.Error(), "is not offered") != 2 {
		t.Errorf("two problems: %v", err)
	}
	// Usability is judged for the probe's accelerator only.
	if err := CheckDestination("h2", c10, VMNeeds{CPUModel: "Skylake-Client", Accel: "tcg"}); err == nil || !strings.Contains(err.Error(), "cannot run on h2") {
		t.Errorf("Skylake-Client under TCG: %v", err)
	}
	if err := CheckDestination("h2", c10, VMNeeds{CPUModel: "Skylake-Client", Accel: "kvm"}); err != nil {
		t.Errorf("Skylake-Client under KVM is not judged by a TCG probe: %v", err)
	}
	// An alias instead of a pinned type is explained.
	if err := CheckDestination("h2", c10, VMNeeds{MachineType: "q35"}); err == nil || !strings.Contains(err.Error(), "recreate it so its machine type is pinned") {
		t.Errorf("alias: %v", err)
	}
	noDev := c10
	noDev.Devices = []string{"virtio-blk-pci"}
	if err := CheckDestination("h2", noDev, VMNeeds{Devices: []string{"virtio-net-pci"}}); err == nil || !strings.Contains(err.Error(), "device virtio-net-pci") {
		t.Errorf("missing device: %v", err)
	}
}

func TestParseRejectsGarbage(t *testing.T) {
	good := Replies{Version: json.RawMessage(`{"qemu":{"major":10,"minor":0,"micro":2},"package":""}`), Machines: json.RawMessage(`[]`),
		CPUDefinitions: json.RawMessage(`[]`), Capabilities: json.RawMessage(`[]`),
		Schema: json.RawMessage(`[{"name":"migrate-set-parameters","meta-type":"command","arg-type":"1"},{"name":"1","meta-type":"object","members":[{"name":"max-bandwidth","type":"int"}]}]`)}
	if _, err := Parse(good); err != nil {
		t.Fatal(err)
	}
	for name, mutate := range map[string]func(*Replies){
		"version":   func(r *Replies) { r.Version = json.RawMessage(`{}`) },
		"machines":  func(r *Replies) { r.Machines = json.RawMessage(`{"x":1}`) },
		"schema":    func(r *Replies) { r.Schema = json.RawMessage(`[]`) },
		"cpus":      func(r *Replies) { r.CPUDefinitions = json.RawMessage(`7`) },
		"caps":      func(r *Replies) { r.Capabilities = json.RawMessage(`"x"`) },
		"qom-types": func(r *Replies) { r.Devices = json.RawMessage(`{}`) },
	} {
		r := good
		mutate(&r)
		if _, err := Parse(r); !errors.Is(err, ErrBadReply) {
			t.Errorf("%s: %v, want ErrBadReply", name, err)
		}
	}
}

func TestProtoRoundTrip(t *testing.T) {
	for _, dir := range []string{"qemu-10.0", "qemu-7.2"} {
		c := load(t, dir)
		h := ToProto(Result{Caps: c, Took: 108 * time.Millisecond})
		if h.ProbeMs != 108 || h.Version != c.Version.String() {
			t.Errorf("%s: proto %v %v", dir, h.ProbeMs, h.Version)
		}
		back, ok := FromProto(h)
		if !ok {
			t.Fatalf("%s: FromProto not ok", dir)
		}
		if !reflect.DeepEqual(back, c) {
			t.Errorf("%s: round trip changed caps", dir)
		}
		if got := Supported(back); len(got) != len(h.Features) {
			t.Errorf("%s: features %v vs %v", dir, got, h.Features)
		}
	}
	if _, ok := FromProto(nil); ok {
		t.Error("nil HostQEMU is ok")
	}
	if _, ok := FromProto(&ferryv1.HostQEMU{ProbeError: "boom"}); ok {
		t.Error("failed probe is ok")
	}
}

func TestRequireHost(t *testing.T) {
	h72 := ToProto(Result{Caps: load(t, "qemu-7.2")})
	err := RequireHost("h2", h72, AvailSwitchoverBandwidth)
	if !errors.Is(err, ErrUnsupported) || !strings.Contains(err.Error(), "host h2") || !strings.Contains(err.Error(), "needs QEMU 8.2 or later") {
		t.Errorf("7.2 host: %v", err)
	}
	if err := RequireHost("h1", ToProto(Result{Caps: load(t, "qemu-10.0")}), AvailSwitchoverBandwidth); err != nil {
		t.Errorf("10.0 host: %v", err)
	}
	if err := RequireHost("h3", nil, DirtyLimit); !errors.Is(err, ErrUnsupported) || !strings.Contains(err.Error(), "reported no QEMU capabilities") {
		t.Errorf("host without caps: %v", err)
	}
}
