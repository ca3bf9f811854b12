package server

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"strings"
	"time"

	"connectrpc.com/connect"
	agentv1 "github.com/ferryvm/ferry/gen/ferry/agent/v1"
	ferryv1 "github.com/ferryvm/ferry/gen/ferry/v1"
)

// diskCheckCall bounds each agent call of a shared-disk check.
const diskCheckCall = 10 * time.Second

// checkSharedDisks proves, before a migration (or its dry run) changes
// anything, that every disk of the VM is a shared image the destination
// sees as the same file at the same path: the source agent writes a random
// token into a marker next to each disk, the destination agent must read
// the same tokens at the same paths. The markers are removed on both hosts
// whatever the outcome. A disk that is not shared, or a shared disk
// without a path (a legacy record with size), is refused as well: its only
// copy is on the source.
func (s *Server) checkSharedDisks(ctx context.Context, vm *ferryv1.VM, src, dst *ferryv1.Host) error {
	var disks []*ferryv1.DiskSpec
	for i, d := range vm.Spec.GetDisks() {
		switch {
		case d.GetShared() && d.GetPath() == "":
			return precondition("spec.disks[%d] (%s) is shared but has no path (it was created with size on host %s, so that host holds its only copy): it cannot be migrated; recreate the VM with path: set to an image on shared storage", i, d.GetName(), vm.Host)
		case d.GetShared():
			disks = append(disks, d)
		case d.GetPath() != "":
			return precondition("spec.disks[%d] (%s) is an image given by path (%s) that is not marked shared: Ferry moves only the local disks it keeps itself (size: or source:); mark it shared: true if both hosts see it at the same path, or recreate the VM with source: %s to have Ferry copy it", i, d.GetName(), d.GetPath(), d.GetPath())
		}
	}
	if len(disks) == 0 {
		return nil
	}
	b := make([]byte, 6)
	_, _ = rand.Read(b)
	req := &agentv1.DiskMarkersRequest{CheckId: "chk-" + hex.EncodeToString(b)}
	for _, d := range disks {
		tok := make([]byte, 16)
		_, _ = rand.Read(tok)
		req.Markers = append(req.Markers, &agentv1.DiskMarker{DiskPath: d.GetPath(), Token: hex.EncodeToString(tok)})
	}
	defer s.removeDiskMarkers(context.WithoutCancel(ctx), req, vm, src, dst)

	wctx, cancel := context.WithTimeout(ctx, diskCheckCall)
	wrote, err := s.agents.get(src.Address).disk.WriteDiskMarkers(wctx, connect.NewRequest(req))
	cancel()
	if err != nil {
		return agentError(fmt.Errorf("shared-disk check: write markers on source host %s: %w", src.Name, err))
	}
	for i, m := range wrote.Msg.GetMarkers() {
		if m.Error != "" {
			return precondition("spec.disks[%d] (%s, %s): the shared-disk check cannot write its marker on source host %s: %s", i, disks[i].GetName(), disks[i].GetPath(), src.Name, m.Error)
		}
	}
	read := &agentv1.DiskMarkersRequest{CheckId: req.CheckId}
	for _, m := range req.Markers {
		read.Markers = append(read.Markers, &agentv1.DiskMarker{DiskPath: m.DiskPath})
	}
	rctx, cancel := context.WithTimeout(ctx, diskCheckCall)
	got, err := s.agents.get(dst.Address).disk.ReadDiskMarkers(rctx, connect.NewRequest(read))
	cancel()
	if err != nil {
		return agentError(fmt.Errorf("shared-disk check: read markers on destination host %s: %w", dst.Name, err))
	}
	if n := len(got.Msg.GetMarkers()); n != len(disks) {
		return fmt.Errorf("shared-disk check: destination host %s answered for %d disks, asked %d", dst.Name, n, len(disks))
	}
	var bad []string
	for i, m := range got.Msg.GetMarkers() {
		want := req.Markers[i].Token
		switch {
		case m.Error != "":
			bad = append(bad, fmt.Sprintf("spec.disks[%d] (%s, %s): host %s cannot read the marker %s: %s", i, disks[i].GetName(), m.DiskPath, dst.Name, m.MarkerPath, m.Error))
		case !m.DiskExists:
			bad = append(bad, fmt.Sprintf("spec.disks[%d] (%s): host %s has no image at %s", i, disks[i].GetName(), dst.Name, m.DiskPath))
		case m.Token == "":
			bad = append(bad, fmt.Sprintf("spec.disks[%d] (%s): host %s has a file at %s but not the marker %s that host %s wrote next to it: the path is not on storage both hosts share (a different file with the same name)", i, disks[i].GetName(), dst.Name, m.DiskPath, m.MarkerPath, src.Name))
		case m.Token != want:
			bad = append(bad, fmt.Sprintf("spec.disks[%d] (%s): the marker next to %s on host %s holds another token than host %s wrote: not the same file", i, disks[i].GetName(), m.DiskPath, dst.Name, src.Name))
		}
	}
	if len(bad) > 0 {
		return precondition("VM %s has shared disks that host %s does not share with %s; nothing was changed. %s. Put the images on storage both hosts mount at the same path", vm.Spec.GetName(), dst.Name, src.Name, strings.Join(bad, "; "))
	}
	s.log.Info("shared disks checked: the same files on both hosts", "vm", vm.Spec.GetName(), "from", src.Name, "to", dst.Name, "disks", len(disks), "check", req.CheckId)
	return nil
}

// removeDiskMarkers removes a check's markers on both hosts (bounded, best
// effort: a failure is logged; a marker left behind is a small named file).
func (s *Server) removeDiskMarkers(ctx context.Context, req *agentv1.DiskMarkersRequest, vm *ferryv1.VM, hosts ...*ferryv1.Host) {
	rm := &agentv1.DiskMarkersRequest{CheckId: req.CheckId}
	for _, m := range req.Markers {
		rm.Markers = append(rm.Markers, &agentv1.DiskMarker{DiskPath: m.DiskPath})
	}
	for _, h := range hosts {
		cctx, cancel := context.WithTimeout(ctx, diskCheckCall)
		resp, err := s.agents.get(h.Address).disk.RemoveDiskMarkers(cctx, connect.NewRequest(rm))
		cancel()
		if err != nil {
			s.log.Warn("shared-disk check: remove markers", "vm", vm.Spec.GetName(), "host", h.Name, "check", req.CheckId, "err", err)
			continue
		}
		for _, m := range resp.Msg.GetMarkers() {
			if m.Error != "" {
				s.log.Warn("shared-disk check: marker left", "vm", vm.Spec.GetName(), "host", h.Name, "path", m.MarkerPath, "err", m.Error)
			}
		}
	}
}

// localDisks asks the source agent for the VM's local disks (created from
// size or copied from source, kept in the VM's directory there): what a
// live migration mirrors and a cold one copies (core.Copying).
func (s *Server) localDisks(ctx context.Context, vm *ferryv1.VM, src *ferryv1.Host, strategy string) ([]*ferryv1.MigrationDisk, error) {
	n := 0
	for _, d := range vm.Spec.GetDisks() {
		if !d.GetShared() && d.GetPath() == "" {
			n++
		}
	}
	if n == 0 {
		return nil, nil
	}
	cctx, cancel := context.WithTimeout(ctx, diskCheckCall)
	defer cancel()
	resp, err := s.agents.get(src.Address).disk.LocalDisks(cctx, connect.NewRequest(&agentv1.LocalDisksRequest{Name: vm.Spec.GetName()}))
	if err != nil {
		return nil, agentError(fmt.Errorf("local disks of VM %s on host %s: %w", vm.Spec.GetName(), src.Name, err))
	}
	if len(resp.Msg.GetDisks()) != n {
		return nil, fmt.Errorf("local disks of VM %s: host %s reports %d, the spec has %d", vm.Spec.GetName(), src.Name, len(resp.Msg.GetDisks()), n)
	}
	var out []*ferryv1.MigrationDisk
	for _, d := range resp.Msg.GetDisks() {
		out = append(out, &ferryv1.MigrationDisk{Name: d.Name, Format: d.Format, VirtualSizeBytes: d.VirtualSizeBytes, AllocatedBytes: d.AllocatedBytes})
	}
	return out, nil
}
