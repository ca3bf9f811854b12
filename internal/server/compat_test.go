package server

import (
	"errors"
	"strings"
	"testing"

	"connectrpc.com/connect"

	ferryv1 "github.com/ferryvm/ferry/gen/ferry/v1"
)

func hostWithQEMU(name, version string, machines ...*ferryv1.QEMUMachine) *ferryv1.Host {
	return &ferryv1.Host{Name: name, Accel: "tcg", Qemu: &ferryv1.HostQEMU{
		Version: version, Machines: machines, ProbeAccel: "tcg",
		CpuModels: []*ferryv1.QEMUCPUModel{{Name: "qemu64", Usable: true}, {Name: "Skylake-Client", Usable: false}},
		Devices:   []string{"virtio-blk-pci", "virtio-net-pci"},
	}}
}

var (
	host10 = hostWithQEMU("h1", "10.0.2", &ferryv1.QEMUMachine{Name: "pc-q35-10.0", Alias: "q35"}, &ferryv1.QEMUMachine{Name: "pc-q35-7.2"})
	host72 = hostWithQEMU("h2", "7.2.0", &ferryv1.QEMUMachine{Name: "pc-q35-7.2", Alias: "q35"})
)

func TestPinMachineType(t *testing.T) {
	sp := &ferryv1.VMSpec{Name: "a"}
	if err := pinMachineType(sp, host10); err != nil || sp.MachineType != "pc-q35-10.0" {
		t.Errorf("empty on 10.0: %q %v", sp.MachineType, err)
	}
	sp = &ferryv1.VMSpec{Name: "a", MachineType: "q35"}
	if err := pinMachineType(sp, host72); err != nil || sp.MachineType != "pc-q35-7.2" {
		t.Errorf("q35 on 7.2: %q %v", sp.MachineType, err)
	}
	sp = &ferryv1.VMSpec{Name: "a", MachineType: "pc-q35-7.2"}
	if err := pinMachineType(sp, host10); err != nil || sp.MachineType != "pc-q35-7.2" {
		t.Errorf("explicit 7.2 on 10.0: %q %v", sp.MachineType, err)
	}
	sp = &ferryv1.VMSpec{Name: "a", MachineType: "pc-q35-10.0"}
	err := pinMachineType(sp, host72)
	if connect.CodeOf(err) != connect.CodeInvalidArgument || !strings.Contains(err.Error(), "spec.machineType") || !strings.Contains(err.Error(), "pc-q35-10.0") {
		t.Errorf("10.0 type on 7.2: %v", err)
	}
	// No capabilities reported: the empty case gets the old default.
	sp = &ferryv1.VMSpec{Name: "a"}
	if err := pinMachineType(sp, &ferryv1.Host{Name: "old"}); err != nil || sp.MachineType != "pc-q35-7.2" {
		t.Errorf("no caps: %q %v", sp.MachineType, err)
	}
}

func TestCheckHostPair(t *testing.T) {
	vm := func(machine, cpu string) *ferryv1.VM {
		return &ferryv1.VM{Host: "h1", Spec: &ferryv1.VMSpec{Name: "web", MachineType: machine, CpuModel: cpu, Accel: "auto", Nics: []*ferryv1.NICSpec{{}}}}
	}
	if err := checkHostPair(vm("pc-q35-7.2", "qemu64"), host72); err != nil {
		t.Errorf("7.2 type to 7.2 host: %v", err)
	}
	if err := checkHostPair(vm("", ""), host72); err != nil {
		t.Errorf("unpinned (old) VM runs pc-q35-7.2, which the 7.2 host has: %v", err)
	}
	err := checkHostPair(vm("pc-q35-10.0", "qemu64"), host72)
	if connect.CodeOf(err) != connect.CodeFailedPrecondition || !strings.Contains(err.Error(), "VM web cannot migrate to h2") ||
		!strings.Contains(err.Error(), "machine type pc-q35-10.0 is not offered by QEMU 7.2.0 on h2") {
		t.Errorf("10.0 type to 7.2 host: %v", err)
	}
	err = checkHostPair(vm("pc-q35-10.0", "Skylake-Client"), host10)
	if err == nil || !strings.Contains(err.Error(), "CPU model Skylake-Client cannot run on h1") {
		t.Errorf("unusable CPU model under the host's TCG: %v", err)
	}
	noNet := hostWithQEMU("h3", "10.0.2", &ferryv1.QEMUMachine{Name: "pc-q35-10.0"})
	noNet.Qemu.Devices = []string{"virtio-blk-pci"}
	if err := checkHostPair(vm("pc-q35-10.0", "qemu64"), noNet); err == nil || !strings.Contains(err.Error(), "device virtio-net-pci") {
		t.Errorf("missing NIC device: %v", err)
	}
	if err := checkHostPair(vm("pc-q35-99.0", "qemu64"), &ferryv1.Host{Name: "old"}); err != nil {
		t.Errorf("destination without caps is not checked here: %v", err)
	}
	var ce *connect.Error
	if err := checkHostPair(vm("pc-q35-10.0", "qemu64"), host72); !errors.As(err, &ce) {
		t.Errorf("not a connect error: %T", err)
	}
}
