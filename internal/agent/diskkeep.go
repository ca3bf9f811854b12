package agent

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"

	ferryv1 "github.com/ferryvm/ferry/gen/ferry/v1"
)

// keptDisks lists the disk images inside dir that removing dir must not
// delete: every image a spec names by path (the user's, shared or not —
// never the agent's to delete), and, when keepLocal, the images the agent
// created for the VM in dir/disks (a migration's source keeps them unless
// its mirrors gave the destination whole copies; see docs/storage.md).
func keptDisks(dir string, sp *ferryv1.VMSpec, keepLocal bool) []string {
	var keep []string
	for _, d := range sp.GetDisks() {
		switch {
		case d.GetPath() != "":
			if inside(dir, d.GetPath()) {
				keep = append(keep, filepath.Clean(d.GetPath()))
			}
		case keepLocal:
			format := d.GetFormat()
			if format == "" {
				format = "qcow2"
			}
			p := filepath.Join(dir, disksDir, d.GetName()+"."+format)
			if _, err := os.Stat(p); err == nil {
				keep = append(keep, p)
			}
		}
	}
	return keep
}

// inside reports whether p lies under dir.
func inside(dir, p string) bool {
	rel, err := filepath.Rel(dir, filepath.Clean(p))
	return err == nil && rel != "." && !strings.HasPrefix(rel, ".."+string(filepath.Separator)) && rel != ".."
}

// removeVMDir removes the VM's directory except the disks keptDisks
// names, which stay (with the directories leading to them) and are logged.
// Every place that removes a VM's directory goes through here, so a disk
// the VM was given by path is never deleted, and a migration's source
// (keepLocal) never deletes a local disk the destination does not hold.
func (v *vm) removeVMDir(keepLocal bool, why string) error {
	keep := keptDisks(v.dir, v.spec, keepLocal)
	if len(keep) == 0 {
		if err := os.RemoveAll(v.dir); err != nil {
			return fmt.Errorf("remove VM dir %s: %w", v.dir, err)
		}
		return nil
	}
	kept := map[string]bool{}
	for _, p := range keep {
		for q := p; inside(v.dir, q); q = filepath.Dir(q) {
			kept[q] = true
		}
	}
	err := removeExcept(v.dir, kept)
	v.a.log.Warn("VM directory removed except its disks", "vm", v.name, "why", why, "kept", keep)
	return err
}

// removeExcept removes everything under dir that kept does not name,
// descending into kept directories.
func removeExcept(dir string, kept map[string]bool) error {
	entries, err := os.ReadDir(dir)
	if err != nil {
		if os.IsNotExist(err) {
			return nil
		}
		return fmt.Errorf("read %s: %w", dir, err)
	}
	for _, e := range entries {
		p := filepath.Join(dir, e.Name())
		switch {
		case !kept[p]:
			if err := os.RemoveAll(p); err != nil {
				return fmt.Errorf("remove %s: %w", p, err)
			}
		case e.IsDir():
			if err := removeExcept(p, kept); err != nil {
				return err
			}
		}
	}
	return nil
}
