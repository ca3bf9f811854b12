package agent

import (
	"errors"
	"fmt"
	"path/filepath"

	ferryv1 "github.com/ferryvm/ferry/gen/ferry/v1"
	"github.com/ferryvm/ferry/internal/pathguard"
)

// checkHostPaths confines the host files sp names (boot.kernel,
// boot.initrd, disks[].path) to the agent's data directory and its
// --allow-path directories: each must resolve, through its symlinks, to a
// regular file there, and not to a file of another VM's directory. The
// error is InvalidArgument and names the field.
func (v *vm) checkHostPaths(sp *ferryv1.VMSpec) error {
	type named struct{ field, path string }
	fields := []named{{"spec.boot.kernel", sp.GetBoot().GetKernel()}, {"spec.boot.initrd", sp.GetBoot().GetInitrd()}}
	for i, d := range sp.GetDisks() {
		fields = append(fields, named{fmt.Sprintf("spec.disks[%d].path", i), d.GetPath()})
	}
	a := v.a
	for _, f := range fields {
		if f.path == "" {
			continue
		}
		resolved, err := a.paths.Check(f.path)
		switch {
		case errors.Is(err, pathguard.ErrMissing):
			return invalid(f.field, "%s not found on host %s: copy it there or fix the path", f.path, a.cfg.Name)
		case errors.Is(err, pathguard.ErrOutside):
			return invalid(f.field, "%v: host %s gives VMs only files in its data directory or an --allow-path directory", err, a.cfg.Name)
		case err != nil:
			return invalid(f.field, "%v", err)
		}
		if pathguard.Within(resolvedDir(a.vmsDir()), resolved) && !pathguard.Within(resolvedDir(v.dir), resolved) {
			return invalid(f.field, "%s belongs to another VM's directory on host %s", f.path, a.cfg.Name)
		}
	}
	return nil
}

// resolvedDir is dir with its symlinks resolved, or dir itself when it
// does not exist (yet).
func resolvedDir(dir string) string {
	if r, err := filepath.EvalSymlinks(dir); err == nil {
		return r
	}
	return filepath.Clean(dir)
}
