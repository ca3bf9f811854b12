package agent

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"connectrpc.com/connect"
	agentv1 "github.com/ferryvm/ferry/gen/ferry/agent/v1"
	ferryv1 "github.com/ferryvm/ferry/gen/ferry/v1"
)

// TestHostileHostPathsRefused: a spec naming a host file outside the data
// directory and the allowed directories, a device node, a ".." path, a
// symlink escaping an allowed directory or another VM's image is refused
// with InvalidArgument naming the field, and no QEMU is started.
func TestHostileHostPathsRefused(t *testing.T) {
	ta := newTestAgent(t)
	escape := filepath.Join(t.TempDir(), "escape")
	if err := os.Symlink("/etc/passwd", escape); err != nil {
		t.Fatal(err)
	}
	other := filepath.Join(ta.a.vmsDir(), "other", "disks", "root.qcow2")
	if err := os.MkdirAll(filepath.Dir(other), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(other, []byte("not yours"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, field, want string
		edit              func(*ferryv1.VMSpec)
	}{
		{"shadow-kernel", "spec.boot.kernel", "outside the allowed directories", func(s *ferryv1.VMSpec) { s.Boot.Kernel = "/etc/shadow" }},
		{"shadow-disk", "spec.disks[0].path", "outside the allowed directories", func(s *ferryv1.VMSpec) { s.Disks = []*ferryv1.DiskSpec{{Name: "d", Path: "/etc/shadow"}} }},
		{"sda-disk", "spec.disks[0].path", "outside the allowed directories", func(s *ferryv1.VMSpec) { s.Disks = []*ferryv1.DiskSpec{{Name: "d", Path: "/dev/sda"}} }},
		{"null-initrd", "spec.boot.initrd", "outside the allowed directories", func(s *ferryv1.VMSpec) { s.Boot.Initrd = "/dev/null" }},
		{"dotdot-kernel", "spec.boot.kernel", "absolute path", func(s *ferryv1.VMSpec) { s.Boot.Kernel = "../../x" }},
		{"dotdot-abs-disk", "spec.disks[0].path", `".."`, func(s *ferryv1.VMSpec) {
			s.Disks = []*ferryv1.DiskSpec{{Name: "d", Path: os.TempDir() + "/../etc/shadow"}}
		}},
		{"symlink-escape", "spec.boot.kernel", "resolves to /etc/passwd", func(s *ferryv1.VMSpec) { s.Boot.Kernel = escape }},
		{"other-vm-disk", "spec.disks[0].path", "another VM's directory", func(s *ferryv1.VMSpec) { s.Disks = []*ferryv1.DiskSpec{{Name: "d", Path: other}} }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sp := testSpec(t, tc.name)
			tc.edit(sp)
			_, err := ta.svc.StartVM(testCtx(t), connect.NewRequest(&agentv1.AgentStartVMRequest{Spec: sp}))
			if connect.CodeOf(err) != connect.CodeInvalidArgument {
				t.Fatalf("StartVM: %v, want InvalidArgument", err)
			}
			if !strings.Contains(err.Error(), tc.field+":") || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("StartVM: %v, want it to name %s and say %q", err, tc.field, tc.want)
			}
		})
	}
	if n := ta.rt.startCount(); n != 0 {
		t.Fatalf("%d QEMUs started for refused specs", n)
	}
}
