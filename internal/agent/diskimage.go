package agent

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/ferryvm/ferry/internal/revert"
)

// ImageDirsEnv, when set, is the --image-dir default: directories
// separated by ':' (tests that start agents through `ferry dev cluster up`
// set it this way).
const ImageDirsEnv = "FERRY_IMAGE_DIRS"

// ImageDirsDefault returns the --image-dir default from ImageDirsEnv.
func ImageDirsDefault() []string {
	var out []string
	for _, d := range strings.Split(os.Getenv(ImageDirsEnv), ":") {
		if d != "" {
			out = append(out, d)
		}
	}
	return out
}

// imageInfo is what qemu-img info reports of an image (the fields used).
type imageInfo struct {
	Format          string `json:"format"`
	VirtualSize     int64  `json:"virtual-size"`
	ActualSize      int64  `json:"actual-size"`
	BackingFilename string `json:"backing-filename"`
}

// readImageInfo runs qemu-img info on path. force reads an image a running
// QEMU holds (-U: no lock; the figures may be a moment old).
func readImageInfo(ctx context.Context, path string, force bool) (imageInfo, error) {
	args := []string{"info", "--output=json"}
	if force {
		args = append(args, "-U")
	}
	out, err := exec.CommandContext(ctx, "qemu-img", append(args, path)...).Output()
	if err != nil {
		return imageInfo{}, fmt.Errorf("qemu-img info %s: %w%s", path, err, exitStderr(err))
	}
	var info imageInfo
	if err := json.Unmarshal(out, &info); err != nil {
		return imageInfo{}, fmt.Errorf("qemu-img info %s: %w", path, err)
	}
	return info, nil
}

// imageDataBytes is the guest data an image holds: the bytes of the
// extents qemu-img map reports as data and not zero (what a mirror of it
// must copy; the image's own metadata, which the destination's image has
// anyway, is not counted). force reads an image a running QEMU holds.
func imageDataBytes(ctx context.Context, path string, force bool) (int64, error) {
	args := []string{"map", "--output=json"}
	if force {
		args = append(args, "-U")
	}
	out, err := exec.CommandContext(ctx, "qemu-img", append(args, path)...).Output()
	if err != nil {
		return 0, fmt.Errorf("qemu-img map %s: %w%s", path, err, exitStderr(err))
	}
	return mapDataBytes(out)
}

// mapDataBytes sums the data extents of qemu-img map's JSON output.
func mapDataBytes(out []byte) (int64, error) {
	var extents []struct {
		Length int64 `json:"length"`
		Data   bool  `json:"data"`
		Zero   bool  `json:"zero"`
	}
	if err := json.Unmarshal(out, &extents); err != nil {
		return 0, fmt.Errorf("qemu-img map: decode: %w", err)
	}
	var n int64
	for _, e := range extents {
		if e.Data && !e.Zero {
			n += e.Length
		}
	}
	return n, nil
}

func exitStderr(err error) string {
	if ee, ok := err.(*exec.ExitError); ok && len(ee.Stderr) > 0 {
		return ": " + strings.TrimSpace(string(ee.Stderr))
	}
	return ""
}

// allowedSource resolves a spec's disks[].source and checks that it lies
// inside one of dirs (after symlinks, so a link cannot lead out).
func allowedSource(field, source string, dirs []string) (string, error) {
	if len(dirs) == 0 {
		return "", invalid(field, "this host allows no source images: start the agent with --image-dir DIR and put %s there, or use size: for an empty disk", source)
	}
	real, err := filepath.EvalSymlinks(source)
	if err != nil {
		return "", invalid(field, "%s: %v", source, err)
	}
	for _, d := range dirs {
		rd, err := filepath.EvalSymlinks(d)
		if err != nil {
			continue
		}
		if rel, err := filepath.Rel(rd, real); err == nil && rel != ".." && !strings.HasPrefix(rel, "../") && rel != "." {
			fi, err := os.Stat(real)
			if err != nil || !fi.Mode().IsRegular() {
				return "", invalid(field, "%s is not a regular file", source)
			}
			return real, nil
		}
	}
	return "", invalid(field, "%s is outside the image directories this host allows (%s): copy the image into one of them", source, strings.Join(dirs, ", "))
}

// copySource creates the local image path (format) as a sparse copy of
// the allowed image source: zero and unallocated ranges are not written.
// An image with a backing file is refused (its chain would escape the
// allowed directories).
func copySource(ctx context.Context, field, source, path, format string, r *revert.Reverter) error {
	info, err := readImageInfo(ctx, source, false)
	if err != nil {
		return invalid(field, "%v", err)
	}
	if info.Format != "qcow2" && info.Format != "raw" {
		return invalid(field, "%s is a %s image: only qcow2 and raw sources are supported", source, info.Format)
	}
	if info.BackingFilename != "" {
		return invalid(field, "%s has a backing file (%s): flatten it first (qemu-img convert)", source, info.BackingFilename)
	}
	if err := mkDisksDir(filepath.Dir(path)); err != nil {
		return err
	}
	tmp := path + ".part"
	cmd := exec.CommandContext(ctx, "qemu-img", "convert", "-q", "-f", info.Format, "-O", format, "-S", "4k", source, tmp)
	if out, err := cmd.CombinedOutput(); err != nil {
		_ = os.Remove(tmp)
		return fmt.Errorf("%s: copy %s: qemu-img convert: %w: %s", field, source, err, strings.TrimSpace(string(out)))
	}
	if err := os.Rename(tmp, path); err != nil {
		_ = os.Remove(tmp)
		return fmt.Errorf("%s: %w", field, err)
	}
	r.Add(func() { _ = os.Remove(path) })
	return nil
}
