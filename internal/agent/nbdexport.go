package agent

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"

	"connectrpc.com/connect"
	agentv1 "github.com/ferryvm/ferry/gen/ferry/agent/v1"
	ferryv1 "github.com/ferryvm/ferry/gen/ferry/v1"
	"github.com/ferryvm/ferry/internal/qemutls"
	"github.com/ferryvm/ferry/internal/qmp"
	"github.com/ferryvm/ferry/internal/revert"
)

// Storage migration, destination side: the arriving VM's local disks are
// created empty (same format and virtual size as the source's) before its
// QEMU starts, and exported writable over NBD on the host-to-host address
// for the source's mirrors; the export ends before the destination runs.

// localImage is a local disk image of a VM (in its directory).
type localImage struct {
	name, format, path string
}

// localDiskImages lists the VM's local disks: spec disks without a path
// (created from size or copied from source), kept in dir/disks.
func localDiskImages(dir string, sp *ferryv1.VMSpec) []localImage {
	var out []localImage
	for _, d := range sp.GetDisks() {
		if d.GetPath() != "" || d.GetShared() {
			continue
		}
		format := d.GetFormat()
		if format == "" {
			format = "qcow2"
		}
		out = append(out, localImage{name: d.GetName(), format: format, path: filepath.Join(dir, disksDir, d.GetName()+"."+format)})
	}
	return out
}

// LocalDisks reports the VM's local disk images here.
func (s *diskService) LocalDisks(ctx context.Context, req *connect.Request[agentv1.LocalDisksRequest]) (*connect.Response[agentv1.LocalDisksResponse], error) {
	v, ok := s.a.find(req.Msg.GetName())
	if !ok {
		return nil, notFound("VM %s is not on host %s", req.Msg.GetName(), s.a.cfg.Name)
	}
	v.mu.Lock()
	sp := v.spec
	v.mu.Unlock()
	out := &agentv1.LocalDisksResponse{}
	for _, img := range localDiskImages(v.dir, sp) {
		info, err := readImageInfo(ctx, img.path, true)
		if err != nil {
			return nil, fmt.Errorf("disk %s of VM %s: %w", img.name, v.name, err)
		}
		data, err := imageDataBytes(ctx, img.path, true)
		if err != nil {
			return nil, fmt.Errorf("disk %s of VM %s: %w", img.name, v.name, err)
		}
		out.Disks = append(out.Disks, &agentv1.LocalDisk{Name: img.name, Format: info.Format, VirtualSizeBytes: info.VirtualSize, AllocatedBytes: data, Path: img.path})
	}
	return connect.NewResponse(out), nil
}

// createArrivingDisks creates each local disk of an arriving VM empty,
// with the source's format and virtual size, where its QEMU will open it.
func (v *vm) createArrivingDisks(ctx context.Context, sp *ferryv1.VMSpec, disks []*agentv1.LocalDisk, r *revert.Reverter) error {
	want := map[string]localImage{}
	for _, img := range localDiskImages(v.dir, sp) {
		want[img.name] = img
	}
	if len(disks) != len(want) {
		return connect.NewError(connect.CodeInvalidArgument, fmt.Errorf("local_disks: the spec has %d local disks, the request describes %d", len(want), len(disks)))
	}
	for i, d := range disks {
		img, ok := want[d.GetName()]
		switch {
		case !ok:
			return connect.NewError(connect.CodeInvalidArgument, fmt.Errorf("local_disks[%d]: the spec has no local disk %q", i, d.GetName()))
		case d.GetFormat() != img.format:
			return connect.NewError(connect.CodeInvalidArgument, fmt.Errorf("local_disks[%d].format: the spec says %s, the source image is %s", i, img.format, d.GetFormat()))
		case d.GetVirtualSizeBytes() <= 0:
			return connect.NewError(connect.CodeInvalidArgument, fmt.Errorf("local_disks[%d].virtual_size_bytes: must be > 0", i))
		}
		if err := mkDisksDir(filepath.Dir(img.path)); err != nil {
			return err
		}
		cmd := exec.CommandContext(ctx, "qemu-img", "create", "-q", "-f", img.format, img.path, strconv.FormatInt(d.GetVirtualSizeBytes(), 10))
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("local_disks[%d]: qemu-img create: %w: %s", i, err, strings.TrimSpace(string(out)))
		}
		path := img.path
		r.Add(func() { _ = os.Remove(path) })
	}
	return nil
}

// exportDisks starts QEMU's NBD server on ip and exports each local disk
// writable under its name; it returns host:port. The port is chosen here
// (QMP does not report a port QEMU picked), retried if taken meanwhile.
func exportDisks(ctx context.Context, mon *qmp.Monitor, ip string, disks []*agentv1.LocalDisk, tls *qemutls.Creds) (string, error) {
	var addr string
	var err error
	for range 5 {
		var port int
		if port, err = freePort(ip); err != nil {
			return "", err
		}
		addr = net.JoinHostPort(ip, strconv.Itoa(port))
		start := map[string]any{"addr": map[string]any{"type": "inet", "data": map[string]any{"host": ip, "port": strconv.Itoa(port)}}}
		if tls != nil {
			// Only the source host's certificate is admitted.
			start["tls-creds"], start["tls-authz"] = tls.ID, tls.AuthzID()
		}
		if err = mon.Run(ctx, "nbd-server-start", start, nil); err == nil {
			break
		}
	}
	if err != nil {
		return "", fmt.Errorf("nbd-server-start on %s: %w", ip, err)
	}
	for _, d := range disks {
		exp := map[string]any{"type": "nbd", "id": d.GetName() + "-export", "node-name": d.GetName(), "name": d.GetName(), "writable": true}
		if err := mon.Run(ctx, "block-export-add", exp, nil); err != nil {
			return "", fmt.Errorf("export disk %s over NBD: %w", d.GetName(), err)
		}
	}
	return addr, nil
}

// stopExports ends the NBD server (and its exports) before the destination
// runs: from then on only its guest writes to the disks.
func stopExports(ctx context.Context, mon *qmp.Monitor) error {
	if err := mon.Run(ctx, "nbd-server-stop", nil, nil); err != nil {
		var ce *qmp.CommandError
		if errors.As(err, &ce) && strings.Contains(ce.Error(), "not running") {
			return nil
		}
		return fmt.Errorf("nbd-server-stop: %w", err)
	}
	return nil
}
