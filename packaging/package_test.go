package packaging

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

const testVersion = "1.2.3~test"

func run(t *testing.T, name string, args ...string) string {
	t.Helper()
	var out, errb bytes.Buffer
	cmd := exec.Command(name, args...)
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, errb.String())
	}
	return out.String()
}

// buildDeb runs hack/package.sh (what `make package` runs) into a scratch
// directory and returns the .deb's path.
func buildDeb(t *testing.T) string {
	t.Helper()
	if _, err := exec.LookPath("dpkg-deb"); err != nil {
		t.Skip("dpkg-deb is not installed (Debian: apt-get install dpkg)")
	}
	out := t.TempDir()
	cmd := exec.Command("bash", "../hack/package.sh", out)
	cmd.Env = append(os.Environ(), "FERRY_VERSION="+testVersion)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("hack/package.sh: %v\n%s", err, stderr.String())
	}
	deb := strings.TrimSpace(stdout.String())
	if want := filepath.Join(out, "ferry_"+testVersion+"_amd64.deb"); deb != want {
		t.Fatalf("package.sh printed %q, want %q", deb, want)
	}
	return deb
}

func TestDebianPackage(t *testing.T) {
	deb := buildDeb(t)

	for field, want := range map[string]string{
		"Package": "ferry", "Version": testVersion, "Architecture": "amd64",
	} {
		if got := strings.TrimSpace(run(t, "dpkg-deb", "-f", deb, field)); got != want {
			t.Errorf("control field %s = %q, want %q", field, got, want)
		}
	}
	depends := run(t, "dpkg-deb", "-f", deb, "Depends")
	for _, dep := range []string{"qemu-system-x86", "qemu-utils"} {
		if !strings.Contains(depends, dep) {
			t.Errorf("Depends %q lacks %s", strings.TrimSpace(depends), dep)
		}
	}

	contents := run(t, "dpkg-deb", "--contents", deb)
	for _, path := range []string{
		"./usr/bin/ferry",
		"./usr/lib/systemd/system/ferry-server.service",
		"./usr/lib/systemd/system/ferry-agent.service",
		"./etc/ferry/server.yaml",
		"./etc/ferry/agent.yaml",
		"./usr/share/bash-completion/completions/ferry",
		"./usr/share/zsh/vendor-completions/_ferry",
		"./usr/share/fish/vendor_completions.d/ferry.fish",
		"./usr/share/man/man1/ferry.1.gz",
		"./usr/share/man/man1/ferry-server.1.gz",
		"./usr/share/man/man1/ferry-agent.1.gz",
		"./usr/lib/ferry/qemu-user.sh",
	} {
		if !strings.Contains(contents, " "+path+"\n") {
			t.Errorf("package lacks %s", path)
		}
	}
	if !strings.Contains(contents, "-rwxr-xr-x root/root") {
		t.Error("no executable owned by root in the package (want /usr/bin/ferry mode 0755)")
	}

	ctrl := t.TempDir()
	run(t, "dpkg-deb", "--control", deb, ctrl)
	conffiles, err := os.ReadFile(filepath.Join(ctrl, "conffiles"))
	if err != nil {
		t.Fatalf("package has no conffiles: %v", err)
	}
	if got := strings.Fields(string(conffiles)); strings.Join(got, " ") != "/etc/ferry/agent.yaml /etc/ferry/server.yaml" {
		t.Errorf("conffiles = %q, want /etc/ferry/agent.yaml and /etc/ferry/server.yaml", got)
	}

	// postinst creates the unprivileged user the agent's QEMUs run as.
	postinst, err := os.ReadFile(filepath.Join(ctrl, "postinst"))
	if err != nil || !strings.Contains(string(postinst), "/usr/lib/ferry/qemu-user.sh ferry-qemu") {
		t.Errorf("package postinst (err %v) does not run qemu-user.sh ferry-qemu:\n%s", err, postinst)
	}

	root := t.TempDir()
	run(t, "dpkg-deb", "-x", deb, root)
	bin := filepath.Join(root, "usr/bin/ferry")
	if v := run(t, bin, "version"); !strings.HasPrefix(v, "ferry "+testVersion+"\n") {
		t.Errorf("installed ferry version:\n%s\nwant ferry %s first", v, testVersion)
	}
	// The shipped configs name only real flags: the daemons accept them.
	srv := run(t, bin, "server", "--config", filepath.Join(root, "etc/ferry/server.yaml"), "--print-config")
	if !strings.Contains(srv, "data-dir: /var/lib/ferry/server\n") {
		t.Errorf("server --print-config with the shipped server.yaml:\n%s", srv)
	}
	agent := run(t, bin, "agent", "--config", filepath.Join(root, "etc/ferry/agent.yaml"), "--print-config")
	if !strings.Contains(agent, "qemu-user: ferry-qemu\n") || !strings.Contains(agent, "qemu-scope: auto\n") || !strings.Contains(agent, "data-dir: /var/lib/ferry/agent\n") {
		t.Errorf("agent --print-config with the shipped agent.yaml:\n%s", agent)
	}
	// The installed server starts with the shipped config (JSON logs on
	// stderr) and answers the installed client.
	_, env := startInstalledServer(t, root)
	status := exec.Command(bin, "server", "status")
	status.Env = env
	if out, err := status.CombinedOutput(); err != nil {
		t.Errorf("installed ferry server status: %v\n%s", err, out)
	}
	unit, err := os.ReadFile(filepath.Join(root, "usr/lib/systemd/system/ferry-agent.service"))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(unit), "\nKillMode=process\n") {
		t.Error("ferry-agent.service must have KillMode=process: a restart of the agent never signals a QEMU")
	}
	verifyUnits(t, root)
}

// verifyUnits runs systemd-analyze verify on the installed units, with
// ExecStart pointing at the extracted binary (the host has no
// /usr/bin/ferry); any message it prints is a failure.
func verifyUnits(t *testing.T, root string) {
	t.Helper()
	if _, err := exec.LookPath("systemd-analyze"); err != nil {
		t.Log("systemd-analyze not installed: units not verified")
		return
	}
	dir := t.TempDir()
	var units []string
	for _, name := range []string{"ferry-server.service", "ferry-agent.service"} {
		b, err := os.ReadFile(filepath.Join(root, "usr/lib/systemd/system", name))
		if err != nil {
			t.Fatal(err)
		}
		b = bytes.ReplaceAll(b, []byte("/usr/bin/ferry"), []byte(filepath.Join(root, "usr/bin/ferry")))
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
		units = append(units, p)
	}
	out, err := exec.Command("systemd-analyze", append([]string{"verify", "--man=no"}, units...)...).CombinedOutput()
	if err != nil || len(bytes.TrimSpace(out)) > 0 {
		t.Errorf("systemd-analyze verify: %v\n%s", err, out)
	}
}
