package server

import (
	"errors"
	"fmt"

	"connectrpc.com/connect"

	ferryv1 "github.com/ferryvm/ferry/gen/ferry/v1"
	"github.com/ferryvm/ferry/internal/qemu"
	"github.com/ferryvm/ferry/internal/qemucaps"
	"github.com/ferryvm/ferry/internal/spec"
)

// defaultMachineAlias is what a VM without spec.machineType is pinned from.
const defaultMachineAlias = "q35"

// pinMachineType pins sp.MachineType at create time to the versioned type
// the chosen host's QEMU resolves it to (the alias q35 when empty), so the
// VM keeps one guest ABI wherever it moves. A host that reported no QEMU
// capabilities (an older agent, a failed probe) pins the empty or q35 case
// to qemu.DefaultMachineType and leaves an explicit type to the agent.
func pinMachineType(sp *ferryv1.VMSpec, host *ferryv1.Host) error {
	want := sp.GetMachineType()
	if want == "" {
		want = defaultMachineAlias
	}
	caps, ok := qemucaps.FromProto(host.GetQemu())
	if !ok {
		if want == defaultMachineAlias {
			sp.MachineType = qemu.DefaultMachineType
		}
		return nil
	}
	resolved, err := caps.ResolveMachine(want)
	if err != nil {
		return connect.NewError(connect.CodeInvalidArgument, fmt.Errorf("spec.machineType: %w: use a type host %s offers (see ferry host get %s)", err, host.GetName(), host.GetName()))
	}
	sp.MachineType = resolved
	return nil
}

// vmNeeds is what the VM needs from a host's QEMU.
func vmNeeds(sp *ferryv1.VMSpec, dst *ferryv1.Host) qemucaps.VMNeeds {
	n := qemucaps.VMNeeds{MachineType: sp.GetMachineType(), CPUModel: sp.GetCpuModel(), Accel: sp.GetAccel()}
	if n.MachineType == "" {
		n.MachineType = qemu.DefaultMachineType
	}
	if n.CPUModel == "" {
		n.CPUModel = spec.DefaultCPUModel
	}
	if n.Accel == "" || n.Accel == "auto" {
		n.Accel = dst.GetAccel()
	}
	if len(sp.GetDisks()) > 0 {
		n.Devices = append(n.Devices, "virtio-blk-pci")
	}
	if len(sp.GetNics()) > 0 {
		n.Devices = append(n.Devices, "virtio-net-pci")
	}
	return n
}

// checkHostPair refuses, before anything starts, a migration of vm to dst
// when dst's QEMU cannot run it (machine type, CPU model, devices); the
// error says why and what would fix it. A destination that reported no
// capabilities is not checked here (its agent checks when QEMU starts).
func checkHostPair(vm *ferryv1.VM, dst *ferryv1.Host) error {
	caps, ok := qemucaps.FromProto(dst.GetQemu())
	if !ok {
		return nil
	}
	if err := qemucaps.CheckDestination(dst.GetName(), caps, vmNeeds(vm.GetSpec(), dst)); err != nil {
		if errors.Is(err, qemucaps.ErrIncompatible) {
			return connect.NewError(connect.CodeFailedPrecondition, fmt.Errorf("VM %s cannot migrate to %s: %w", vm.GetSpec().GetName(), dst.GetName(), err))
		}
		return err
	}
	return nil
}
