package agent

import (
	"context"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"connectrpc.com/connect"
	agentv1 "github.com/ferryvm/ferry/gen/ferry/agent/v1"
	ferryv1 "github.com/ferryvm/ferry/gen/ferry/v1"
)

func quietAgent() *Agent {
	return &Agent{log: slog.New(slog.NewTextHandler(io.Discard, nil)), vms: map[string]*vm{}}
}

const tok = "0123456789abcdef0123456789abcdef"

func markersReq(id string, ms ...*agentv1.DiskMarker) *connect.Request[agentv1.DiskMarkersRequest] {
	return connect.NewRequest(&agentv1.DiskMarkersRequest{CheckId: id, Markers: ms})
}

// TestDiskMarkersSameFile: what one agent writes next to a disk another
// agent reads at the same path when the directory is shared, and not when
// the path names another file; removal is idempotent.
func TestDiskMarkersSameFile(t *testing.T) {
	ctx := context.Background()
	src, dst := &diskService{quietAgent()}, &diskService{quietAgent()}
	dir := t.TempDir()
	disk := filepath.Join(dir, "d.qcow2")
	if err := os.WriteFile(disk, []byte("image"), 0o644); err != nil {
		t.Fatal(err)
	}
	w, err := src.WriteDiskMarkers(ctx, markersReq("chk-1", &agentv1.DiskMarker{DiskPath: disk, Token: tok}))
	if err != nil || w.Msg.Markers[0].Error != "" || !w.Msg.Markers[0].DiskExists {
		t.Fatalf("write: %v %v", w, err)
	}
	if w.Msg.Markers[0].MarkerPath != disk+".ferry-shared-check-chk-1" {
		t.Fatalf("marker path %q", w.Msg.Markers[0].MarkerPath)
	}
	// A retried write with the same token is fine; another token is not.
	if again, err := src.WriteDiskMarkers(ctx, markersReq("chk-1", &agentv1.DiskMarker{DiskPath: disk, Token: tok})); err != nil || again.Msg.Markers[0].Error != "" {
		t.Fatalf("repeated write: %v %v", again, err)
	}
	if other, _ := src.WriteDiskMarkers(ctx, markersReq("chk-1", &agentv1.DiskMarker{DiskPath: disk, Token: strings.Repeat("f", 32)})); other.Msg.Markers[0].Error == "" {
		t.Fatal("a second token for the same check overwrote the marker")
	}
	r, err := dst.ReadDiskMarkers(ctx, markersReq("chk-1", &agentv1.DiskMarker{DiskPath: disk}))
	if err != nil || r.Msg.Markers[0].Token != tok || !r.Msg.Markers[0].DiskExists {
		t.Fatalf("read on the same file: %v %v", r, err)
	}
	// Another check id sees no marker: the path is the same, the check is not.
	if r, _ := dst.ReadDiskMarkers(ctx, markersReq("chk-2", &agentv1.DiskMarker{DiskPath: disk})); r.Msg.Markers[0].Token != "" {
		t.Fatalf("check chk-2 read chk-1's token")
	}
	// A host where the path is another file (another directory here).
	elsewhere := filepath.Join(t.TempDir(), "d.qcow2")
	if r, _ := dst.ReadDiskMarkers(ctx, markersReq("chk-1", &agentv1.DiskMarker{DiskPath: elsewhere})); r.Msg.Markers[0].Token != "" || r.Msg.Markers[0].DiskExists {
		t.Fatalf("read at another path: %v", r.Msg.Markers[0])
	}
	for range 2 {
		if _, err := dst.RemoveDiskMarkers(ctx, markersReq("chk-1", &agentv1.DiskMarker{DiskPath: disk})); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := os.Stat(disk + ".ferry-shared-check-chk-1"); !os.IsNotExist(err) {
		t.Fatalf("marker still there: %v", err)
	}
	if _, err := os.Stat(disk); err != nil {
		t.Fatalf("the disk itself went away: %v", err)
	}
	// A missing disk is reported, not written next to.
	w, _ = src.WriteDiskMarkers(ctx, markersReq("chk-3", &agentv1.DiskMarker{DiskPath: filepath.Join(dir, "nope.qcow2"), Token: tok}))
	if w.Msg.Markers[0].Error == "" || w.Msg.Markers[0].DiskExists {
		t.Fatalf("write next to a missing disk: %v", w.Msg.Markers[0])
	}
}

// TestDiskMarkersRejectBadRequests: check ids, paths and tokens that could
// make the agent write outside a marker's name are refused.
func TestDiskMarkersRejectBadRequests(t *testing.T) {
	s := &diskService{quietAgent()}
	ctx := context.Background()
	for _, req := range []*connect.Request[agentv1.DiskMarkersRequest]{
		markersReq("../x", &agentv1.DiskMarker{DiskPath: "/tmp/d", Token: tok}),
		markersReq("chk", &agentv1.DiskMarker{DiskPath: "relative/d", Token: tok}),
		markersReq("chk", &agentv1.DiskMarker{DiskPath: "/tmp/../etc/d", Token: tok}),
		markersReq("chk", &agentv1.DiskMarker{DiskPath: "/tmp/d", Token: "not hex"}),
		markersReq("chk"),
	} {
		if _, err := s.WriteDiskMarkers(ctx, req); connect.CodeOf(err) != connect.CodeInvalidArgument {
			t.Errorf("WriteDiskMarkers(%v) = %v, want InvalidArgument", req.Msg, err)
		}
	}
}

// TestRemoveVMDirKeepsDisks: removing a VM's directory never deletes an
// image the spec names by path, and a migration's source (keepLocal) keeps
// its local images; a plain delete removes local images.
func TestRemoveVMDirKeepsDisks(t *testing.T) {
	mk := func(t *testing.T) (*vm, string, string) {
		a := quietAgent()
		dir := filepath.Join(t.TempDir(), "vms", "v")
		v := &vm{a: a, name: "v", dir: dir}
		byPath := filepath.Join(dir, "images", "root.qcow2")
		local := filepath.Join(dir, disksDir, "data.qcow2")
		for _, p := range []string{byPath, local, filepath.Join(dir, "qmp.log"), filepath.Join(dir, "sub", "x")} {
			if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(p, []byte("x"), 0o644); err != nil {
				t.Fatal(err)
			}
		}
		v.spec = &ferryv1.VMSpec{Disks: []*ferryv1.DiskSpec{{Name: "root", Path: byPath, Shared: true}, {Name: "data", Size: "1G"}}}
		return v, byPath, local
	}
	exists := func(p string) bool { _, err := os.Stat(p); return err == nil }

	v, byPath, local := mk(t)
	if err := v.removeVMDir(true, "migrated"); err != nil {
		t.Fatal(err)
	}
	if !exists(byPath) || !exists(local) || exists(filepath.Join(v.dir, "qmp.log")) || exists(filepath.Join(v.dir, "sub")) {
		t.Fatalf("source cleanup: by-path %v local %v qmp.log %v sub %v; want the disks kept, the rest removed",
			exists(byPath), exists(local), exists(filepath.Join(v.dir, "qmp.log")), exists(filepath.Join(v.dir, "sub")))
	}

	v, byPath, local = mk(t)
	if err := v.removeVMDir(false, "deleted"); err != nil {
		t.Fatal(err)
	}
	if !exists(byPath) || exists(local) {
		t.Fatalf("delete: by-path image kept %v (want true), local image kept %v (want false)", exists(byPath), exists(local))
	}

	v, _, _ = mk(t)
	v.spec = &ferryv1.VMSpec{Disks: []*ferryv1.DiskSpec{{Name: "root", Path: "/elsewhere/root.qcow2"}}}
	if err := v.removeVMDir(false, "deleted"); err != nil {
		t.Fatal(err)
	}
	if exists(v.dir) {
		t.Fatal("a directory holding no kept disk was not removed entirely")
	}
}

func TestInside(t *testing.T) {
	for _, tc := range []struct {
		dir, p string
		want   bool
	}{
		{"/a/b", "/a/b/c", true},
		{"/a/b", "/a/b", false},
		{"/a/b", "/a/bc", false},
		{"/a/b", "/a/b/../c", false},
		{"/a/b", "/a/b/..x/y", true},
	} {
		if got := inside(tc.dir, tc.p); got != tc.want {
			t.Errorf("inside(%q, %q) = %v, want %v", tc.dir, tc.p, got, tc.want)
		}
	}
}
