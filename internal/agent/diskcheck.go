package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strings"

	"connectrpc.com/connect"
	agentv1 "github.com/ferryvm/ferry/gen/ferry/agent/v1"
)

// MarkerInfix joins a disk's path and a check id into the name of the
// marker file a shared-disk check writes next to the disk.
const MarkerInfix = ".ferry-shared-check-"

// maxMarkerBytes bounds what ReadDiskMarkers reads of a marker.
const maxMarkerBytes = 256

var (
	checkIDRE = regexp.MustCompile(`^[a-z0-9][-a-z0-9]{0,62}$`)
	tokenRE   = regexp.MustCompile(`^[0-9a-f]{16,128}$`)
)

// MarkerPath is the marker of check id for the disk at diskPath.
func MarkerPath(diskPath, id string) string { return diskPath + MarkerInfix + id }

// diskService implements agentv1connect.DiskAgentServiceHandler.
type diskService struct{ a *Agent }

// checkMarkersRequest validates a request: a well-formed check id and
// absolute, clean disk paths (the agent writes only next to them, and only
// files named after the check).
func checkMarkersRequest(req *agentv1.DiskMarkersRequest, needToken bool) error {
	if !checkIDRE.MatchString(req.GetCheckId()) {
		return connect.NewError(connect.CodeInvalidArgument, fmt.Errorf("check_id: must be 1-63 lowercase letters, digits or '-', got %q", req.GetCheckId()))
	}
	if len(req.GetMarkers()) == 0 {
		return connect.NewError(connect.CodeInvalidArgument, errors.New("markers: at least one disk is required"))
	}
	for i, m := range req.GetMarkers() {
		p := m.GetDiskPath()
		if !filepath.IsAbs(p) || filepath.Clean(p) != p {
			return connect.NewError(connect.CodeInvalidArgument, fmt.Errorf("markers[%d].disk_path: must be a clean absolute path, got %q", i, p))
		}
		if needToken && !tokenRE.MatchString(m.GetToken()) {
			return connect.NewError(connect.CodeInvalidArgument, fmt.Errorf("markers[%d].token: must be 16-128 lowercase hex digits", i))
		}
	}
	return nil
}

// WriteDiskMarkers writes each token into a new marker next to its disk.
// A disk that does not exist here, or a marker that cannot be created, is
// reported in that marker's error; markers already written stay (the
// caller removes them with RemoveDiskMarkers). Repeating the call with the
// same tokens is harmless: an existing marker with the same token is kept.
func (s *diskService) WriteDiskMarkers(_ context.Context, req *connect.Request[agentv1.DiskMarkersRequest]) (*connect.Response[agentv1.DiskMarkersResponse], error) {
	if err := checkMarkersRequest(req.Msg, true); err != nil {
		return nil, err
	}
	out := &agentv1.DiskMarkersResponse{}
	for _, m := range req.Msg.GetMarkers() {
		r := &agentv1.DiskMarker{DiskPath: m.DiskPath, Token: m.Token, MarkerPath: MarkerPath(m.DiskPath, req.Msg.CheckId)}
		out.Markers = append(out.Markers, r)
		fi, err := os.Stat(m.DiskPath)
		if err != nil {
			r.Error = fmt.Sprintf("disk %s: %v", m.DiskPath, err)
			continue
		}
		if !fi.Mode().IsRegular() {
			r.Error = fmt.Sprintf("disk %s is not a regular file", m.DiskPath)
			continue
		}
		r.DiskExists = true
		if err := writeMarker(r.MarkerPath, m.Token); err != nil {
			r.Error = err.Error()
		}
	}
	s.a.log.Info("shared-disk markers written", "check", req.Msg.CheckId, "disks", len(out.Markers))
	return connect.NewResponse(out), nil
}

func writeMarker(path, token string) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if errors.Is(err, os.ErrExist) {
		if got, rerr := readMarker(path); rerr == nil && got == token {
			return nil // written by an earlier try of the same call
		}
		return fmt.Errorf("marker %s exists with another token", path)
	}
	if err != nil {
		return fmt.Errorf("create marker %s: %w", path, err)
	}
	if _, err := f.WriteString(token); err != nil {
		f.Close()
		return fmt.Errorf("write marker %s: %w", path, err)
	}
	// Sync so a host that mounts the same storage reads the token.
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("sync marker %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("close marker %s: %w", path, err)
	}
	return nil
}

func readMarker(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxMarkerBytes))
	if err != nil {
		return "", fmt.Errorf("read marker %s: %w", path, err)
	}
	return strings.TrimSpace(string(b)), nil
}

// ReadDiskMarkers reports, per disk, whether it exists here and the token
// its marker holds ("" when there is no marker at that path).
func (s *diskService) ReadDiskMarkers(_ context.Context, req *connect.Request[agentv1.DiskMarkersRequest]) (*connect.Response[agentv1.DiskMarkersResponse], error) {
	if err := checkMarkersRequest(req.Msg, false); err != nil {
		return nil, err
	}
	out := &agentv1.DiskMarkersResponse{}
	for _, m := range req.Msg.GetMarkers() {
		r := &agentv1.DiskMarker{DiskPath: m.DiskPath, MarkerPath: MarkerPath(m.DiskPath, req.Msg.CheckId)}
		out.Markers = append(out.Markers, r)
		if fi, err := os.Stat(m.DiskPath); err == nil && fi.Mode().IsRegular() {
			r.DiskExists = true
		}
		tok, err := readMarker(r.MarkerPath)
		switch {
		case errors.Is(err, os.ErrNotExist):
		case err != nil:
			r.Error = err.Error()
		default:
			r.Token = tok
		}
	}
	return connect.NewResponse(out), nil
}

// RemoveDiskMarkers removes the markers of the check; absent ones are fine.
func (s *diskService) RemoveDiskMarkers(_ context.Context, req *connect.Request[agentv1.DiskMarkersRequest]) (*connect.Response[agentv1.DiskMarkersResponse], error) {
	if err := checkMarkersRequest(req.Msg, false); err != nil {
		return nil, err
	}
	out := &agentv1.DiskMarkersResponse{}
	for _, m := range req.Msg.GetMarkers() {
		r := &agentv1.DiskMarker{DiskPath: m.DiskPath, MarkerPath: MarkerPath(m.DiskPath, req.Msg.CheckId)}
		out.Markers = append(out.Markers, r)
		if err := os.Remove(r.MarkerPath); err != nil && !errors.Is(err, os.ErrNotExist) {
			r.Error = fmt.Sprintf("remove marker %s: %v", r.MarkerPath, err)
			s.a.log.Warn("remove shared-disk marker", "path", r.MarkerPath, "err", err)
		}
	}
	return connect.NewResponse(out), nil
}
