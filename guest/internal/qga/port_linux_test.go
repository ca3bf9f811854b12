//go:build linux

package qga

import (
	"os"
	"path/filepath"
	"testing"
)

func TestFindPort(t *testing.T) {
	sys := t.TempDir()
	for port, name := range map[string]string{"vport0p1": "org.other\n", "vport1p1": "org.qemu.guest_agent.0\n"} {
		d := filepath.Join(sys, "class", "virtio-ports", port)
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
		os.WriteFile(filepath.Join(d, "name"), []byte(name), 0o644)
	}
	if got := FindPort(sys, "/dev", "org.qemu.guest_agent.0"); got != "/dev/vport1p1" {
		t.Errorf("FindPort = %q, want /dev/vport1p1", got)
	}
	if got := FindPort(sys, "/dev", "absent"); got != "" {
		t.Errorf("FindPort(absent) = %q, want empty", got)
	}
}
