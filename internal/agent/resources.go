package agent

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"connectrpc.com/connect"
	ferryv1 "github.com/ferryvm/ferry/gen/ferry/v1"
	"github.com/ferryvm/ferry/internal/netdev"
	"github.com/ferryvm/ferry/internal/qemu"
	"github.com/ferryvm/ferry/internal/revert"
	"github.com/ferryvm/ferry/internal/spec"
)

// prepareDisks resolves each disk to an image, creating sized ones.
func (v *vm) prepareDisks(ctx context.Context, sp *ferryv1.VMSpec, r *revert.Reverter) ([]qemu.Disk, error) {
	var out []qemu.Disk
	for i, d := range sp.GetDisks() {
		field := fmt.Sprintf("spec.disks[%d]", i)
		format := d.GetFormat()
		if format == "" {
			format = "qcow2"
		}
		if d.GetPath() != "" {
			if _, err := os.Stat(d.GetPath()); err != nil {
				return nil, invalid(field+".path", "%s not found on host %s", d.GetPath(), v.a.cfg.Name)
			}
			out = append(out, qemu.Disk{Name: d.GetName(), Path: d.GetPath(), Format: format})
			continue
		}
		path := filepath.Join(v.dir, disksDir, d.GetName()+"."+format)
		if _, err := os.Stat(path); os.IsNotExist(err) && d.GetSource() != "" {
			src, err := allowedSource(field+".source", d.GetSource(), v.a.cfg.ImageDirs)
			if err != nil {
				return nil, err
			}
			if err := copySource(ctx, field+".source", src, path, format, r); err != nil {
				return nil, err
			}
		} else if os.IsNotExist(err) {
			size, err := spec.ParseSize(d.GetSize())
			if err != nil {
				return nil, invalid(field+".size", "%v", err)
			}
			if err := mkDisksDir(filepath.Dir(path)); err != nil {
				return nil, err
			}
			cmd := exec.CommandContext(ctx, "qemu-img", "create", "-q", "-f", format, path, fmt.Sprint(size))
			if out, err := cmd.CombinedOutput(); err != nil {
				return nil, fmt.Errorf("%s: qemu-img create: %w: %s", field, err, strings.TrimSpace(string(out)))
			}
			r.Add(func() { _ = os.Remove(path) })
		}
		out = append(out, qemu.Disk{Name: d.GetName(), Path: path, Format: format, Direct: v.a.localDisksDirect()})
	}
	return out, nil
}

// prepareTaps creates one tap per NIC on its bridge.
func (v *vm) prepareTaps(sp *ferryv1.VMSpec, r *revert.Reverter) ([]qemu.NIC, error) {
	var out []qemu.NIC
	for i, n := range sp.GetNics() {
		bridge := n.GetBridge()
		if bridge == "" {
			bridge = v.a.cfg.Bridge
		}
		if bridge == "" {
			return nil, invalid(fmt.Sprintf("spec.nics[%d].bridge", i), "empty and host %s has no default bridge: set the bridge or start the agent with --bridge", v.a.cfg.Name)
		}
		tap := netdev.TapName(v.name, i)
		if err := netdev.CreateTap(tap, bridge, 0); err != nil {
			return nil, connect.NewError(connect.CodeFailedPrecondition, fmt.Errorf("spec.nics[%d]: %w", i, err))
		}
		r.Add(func() { _ = netdev.DeleteTap(tap) })
		out = append(out, qemu.NIC{Tap: tap, MAC: n.GetMac()})
	}
	return out, nil
}

func (v *vm) deleteTaps(sp *ferryv1.VMSpec) {
	for i := range sp.GetNics() {
		if err := netdev.DeleteTap(netdev.TapName(v.name, i)); err != nil {
			v.a.log.Warn("delete tap", "vm", v.name, "err", err)
		}
	}
}

// removeDir removes the VM's directory. keepLocal asks to keep the disk
// images the agent created there (a migration's source, or a VM no record
// names: nobody else may hold them); why names the removal in logs. Every
// removal of a VM's directory goes through here.
func (v *vm) removeDir(keepLocal bool, why string) error {
	// A record write racing the removal (an event saved as the QEMU quits)
	// can add a file after the directory was listed: try again, a bounded
	// number of times. removeVMDir (diskkeep.go) never deletes a disk given
	// by path, nor local images when keepLocal.
	var err error
	for range 5 {
		if err = v.removeVMDir(keepLocal, why); err == nil {
			return nil
		}
		time.Sleep(10 * time.Millisecond)
	}
	return fmt.Errorf("remove VM dir %s (%s): %w", v.dir, why, err)
}
