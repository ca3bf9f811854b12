package agent

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	agentv1 "github.com/ferryvm/ferry/gen/ferry/agent/v1"
	ferryv1 "github.com/ferryvm/ferry/gen/ferry/v1"
	"github.com/ferryvm/ferry/internal/revert"
)

// A source image must lie inside an allowed directory after symlinks.
func TestAllowedSource(t *testing.T) {
	allowed, outside := t.TempDir(), t.TempDir()
	in := filepath.Join(allowed, "base.qcow2")
	out := filepath.Join(outside, "secret.img")
	for _, p := range []string{in, out} {
		if err := os.WriteFile(p, []byte("x"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	link := filepath.Join(allowed, "link.img")
	if err := os.Symlink(out, link); err != nil {
		t.Fatal(err)
	}
	if got, err := allowedSource("spec.disks[0].source", in, []string{allowed}); err != nil || got != in {
		t.Errorf("allowed image: %q, %v", got, err)
	}
	for _, c := range []struct {
		path string
		dirs []string
		want string
	}{
		{out, []string{allowed}, "outside the image directories this host allows"},
		{link, []string{allowed}, "outside the image directories this host allows"},
		{filepath.Join(allowed, "..", filepath.Base(outside), "secret.img"), []string{allowed}, "outside"},
		{allowed, []string{filepath.Dir(allowed)}, "not a regular file"},
		{in, nil, "allows no source images: start the agent with --image-dir"},
		{filepath.Join(allowed, "missing.qcow2"), []string{allowed}, "no such file"},
	} {
		_, err := allowedSource("spec.disks[0].source", c.path, c.dirs)
		if err == nil || !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), "spec.disks[0].source") {
			t.Errorf("allowedSource(%s, %v) = %v, want an error naming the field with %q", c.path, c.dirs, err, c.want)
		}
	}
}

// copySource makes a sparse copy with the source's virtual size, and
// refuses an image with a backing file.
func TestCopySource(t *testing.T) {
	if _, err := exec.LookPath("qemu-img"); err != nil {
		t.Skip("qemu-img not installed")
	}
	dir := t.TempDir()
	base := filepath.Join(dir, "base.qcow2")
	if out, err := exec.Command("qemu-img", "create", "-q", "-f", "qcow2", base, "1G").CombinedOutput(); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	dst := filepath.Join(dir, "vm", "disks", "data.raw")
	r := revert.New()
	if err := copySource(context.Background(), "f", base, dst, "raw", r); err != nil {
		t.Fatal(err)
	}
	r.Success()
	info, err := readImageInfo(context.Background(), dst, false)
	if err != nil {
		t.Fatal(err)
	}
	if info.Format != "raw" || info.VirtualSize != 1<<30 || info.ActualSize > 1<<20 {
		t.Errorf("copy: %+v, want a sparse 1 GiB raw image", info)
	}
	over := filepath.Join(dir, "overlay.qcow2")
	if out, err := exec.Command("qemu-img", "create", "-q", "-f", "qcow2", "-b", base, "-F", "qcow2", over).CombinedOutput(); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	if err := copySource(context.Background(), "spec.disks[0].source", over, filepath.Join(dir, "x.qcow2"), "qcow2", revert.New()); err == nil || !strings.Contains(err.Error(), "backing file") {
		t.Errorf("overlay copied: %v", err)
	}
}

// Only disks without a path (size or source) are local; shared and
// path disks are not mirrored.
func TestLocalDiskImages(t *testing.T) {
	sp := &ferryv1.VMSpec{Disks: []*ferryv1.DiskSpec{
		{Name: "root", Path: "/srv/root.qcow2", Shared: true},
		{Name: "data", Size: "1GiB"},
		{Name: "img", Source: "/images/base.qcow2", Format: "raw"},
		{Name: "user", Path: "/srv/user.qcow2"},
	}}
	got := localDiskImages("/d/vm", sp)
	want := []localImage{{"data", "qcow2", "/d/vm/disks/data.qcow2"}, {"img", "raw", "/d/vm/disks/img.raw"}}
	if len(got) != len(want) || got[0] != want[0] || got[1] != want[1] {
		t.Errorf("localDiskImages = %+v, want %+v", got, want)
	}
}

// fill reports mirroring until the RAM transfer started, and again at
// pre-switchover until the mirrors completed; a failed mirror fails it.
func TestMirrorSetStatus(t *testing.T) {
	set := &mirrorSet{nbd: "198.18.0.2:10809", disks: []*diskMirror{{name: "data", state: mirrorRunning, allocated: 100, written: 50, jobLen: 1000, jobOffset: 75}}}
	for _, c := range []struct {
		migrateSent, completed bool
		err, qemu, want        string
	}{
		{false, false, "", "none", "mirroring"},
		{true, false, "", "active", "active"},
		{true, false, "", "pre-switchover", "mirroring"},
		{true, true, "", "pre-switchover", "pre-switchover"},
		{true, false, "mirror of disk data failed", "active", "failed"},
	} {
		set.migrateSent, set.completed, set.err = c.migrateSent, c.completed, c.err
		st := &agentv1.OutgoingStatus{Status: c.qemu}
		set.fill(st)
		if st.Status != c.want {
			t.Errorf("%+v: status %q, want %q", c, st.Status, c.want)
		}
		if st.DiskBytesTotal != 150 || st.DiskBytesTransferred != 75 || len(st.Disks) != 1 {
			t.Errorf("%+v: disk figures %d/%d %v", c, st.DiskBytesTransferred, st.DiskBytesTotal, st.Disks)
		}
	}
}
func TestDiskOfStats(t *testing.T) {
	for _, c := range []struct{ qdev, node, want string }{
		{"", "data", "data"},
		{"/machine/peripheral/data-dev/virtio-backend", "", "data"},
		{"data-dev", "", "data"},
		{"/machine/peripheral-anon/device[3]", "", ""},
	} {
		if got := diskOfStats(c.qdev, c.node); got != c.want {
			t.Errorf("diskOfStats(%q, %q) = %q, want %q", c.qdev, c.node, got, c.want)
		}
	}
}
