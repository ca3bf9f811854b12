package cli

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func runRoot(t *testing.T, args ...string) (string, error) {
	t.Helper()
	root := NewRoot()
	var out bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&out)
	root.SetArgs(args)
	err := root.Execute()
	return out.String(), err
}

func TestDaemonConfigFileFlagsOverride(t *testing.T) {
	dir := t.TempDir()
	agentYAML := filepath.Join(dir, "agent.yaml")
	if err := os.WriteFile(agentYAML, []byte("server: 10.0.0.1:7100\nlisten: 0.0.0.0:7101\naccel: tcg\nimage-dir: [/srv/images]\nlog-format: json\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := runRoot(t, "agent", "--config", agentYAML, "--accel", "kvm", "--print-config")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"server: 10.0.0.1:7100\n", "listen: 0.0.0.0:7101\n", "accel: kvm\n", "image-dir:\n- /srv/images\n", "log-format: json\n"} {
		if !strings.Contains(out, want) {
			t.Errorf("agent --print-config lacks %q:\n%s", want, out)
		}
	}
	serverYAML := filepath.Join(dir, "server.yaml")
	if err := os.WriteFile(serverYAML, []byte("leader-ttl: 6s\nlisten: [127.0.0.1:7200]\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	out, err = runRoot(t, "server", "--config", serverYAML, "--print-config")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out, "leader-ttl: 6s\n") || !strings.Contains(out, "listen:\n- 127.0.0.1:7200\n") || strings.Contains(out, "\nserver:") {
		t.Errorf("server --print-config:\n%s", out)
	}
}

func TestDaemonConfigErrors(t *testing.T) {
	bad := filepath.Join(t.TempDir(), "bad.yaml")
	if err := os.WriteFile(bad, []byte("leader_ttl: 6s\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := runRoot(t, "server", "--config", bad, "--print-config"); err == nil || !strings.Contains(err.Error(), "leader_ttl") {
		t.Fatalf("unknown key: %v, want an error naming leader_ttl", err)
	}
	if _, err := runRoot(t, "server", "--config", filepath.Join(t.TempDir(), "absent.yaml"), "--print-config"); err == nil {
		t.Fatal("an explicit --config that does not exist must fail")
	}
	dc := daemonConfig{logFormat: "xml", logLevel: "info"}
	if _, err := dc.logger(); err == nil || !strings.Contains(err.Error(), "--log-format") {
		t.Fatalf("log format xml: %v", err)
	}
	dc = daemonConfig{logFormat: "json", logLevel: "debug"}
	if _, err := dc.logger(); err != nil {
		t.Fatal(err)
	}
}
