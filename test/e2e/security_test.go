package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestHostileSpecPathsRefused: through the real CLI, server and agent, a
// spec whose kernel or disk is /etc/shadow, /dev/sda or ../../x is refused
// with the field named, and no VM record is left.
func TestHostileSpecPathsRefused(t *testing.T) {
	c := upCluster(t, 1)
	base := fmt.Sprintf("name: %%s\nvcpus: 1\nmemoryMiB: 128\naccel: tcg\nboot:\n  kernel: %%s\n  initrd: %s\n%%s", filepath.Join(guestDir, "initrd.img"))
	kernel := filepath.Join(guestDir, "vmlinuz")
	for _, tc := range []struct {
		name, kernel, extra, field string
	}{
		{"shadow-kernel", "/etc/shadow", "", "spec.boot.kernel"},
		{"dotdot-kernel", "../../x", "", "spec.boot.kernel"},
		{"sda-disk", kernel, "disks:\n  - path: /dev/sda\n", "spec.disks[0].path"},
		{"shadow-disk", kernel, "disks:\n  - path: /etc/shadow\n    format: raw\n", "spec.disks[0].path"},
	} {
		path := filepath.Join(c.dir, tc.name+".yaml")
		if err := os.WriteFile(path, []byte(fmt.Sprintf(base, tc.name, tc.kernel, tc.extra)), 0o644); err != nil {
			t.Fatal(err)
		}
		out, errOut, err := c.ferry("vm", "create", "--host", "h1", "-f", path)
		if err == nil {
			t.Errorf("%s: vm create accepted the spec:\n%s", tc.name, out)
			continue
		}
		if !strings.Contains(errOut, tc.field) {
			t.Errorf("%s: refusal does not name %s:\n%s", tc.name, tc.field, errOut)
		}
		t.Logf("%s refused: %s", tc.name, strings.TrimSpace(errOut))
	}
	out := c.mustFerry("vm", "list")
	for _, n := range []string{"shadow-kernel", "dotdot-kernel", "sda-disk", "shadow-disk"} {
		if strings.Contains(out, n) {
			t.Errorf("refused VM %s is listed:\n%s", n, out)
		}
	}
}
