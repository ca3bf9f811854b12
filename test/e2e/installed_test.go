package e2e

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ferryvm/ferry/internal/devcluster"
	"github.com/ferryvm/ferry/internal/netnsutil"
	"github.com/ferryvm/ferry/internal/pki"
	"github.com/ferryvm/ferry/internal/qemu"
	"github.com/ferryvm/ferry/internal/rpcaddr"
)

// installed is a cluster run from the files of the Debian package
// unpacked into a scratch root (dpkg -x): root/usr/bin/ferry started by
// hand (no systemd) with the shipped /etc/ferry/server.yaml and agent.yaml,
// paths and addresses changed only by documented flags. The namespaces are
// a dev cluster's (devcluster.Up), so `ferry dev cluster down` removes
// them and everything running inside.
type installed struct {
	*cluster
	root    string               // the unpacked package
	version string               // the package's version
	cgroup  string               // the test's cgroup v2 directory ("" without --qemu-scope cgroup)
	agents  map[string]*pkgAgent // by host name
}

// pkgAgent is one hand-started `ferry agent`.
type pkgAgent struct {
	host   devcluster.Host
	argv   []string
	log    string
	cgroup string // the cgroup the agent runs in ("" = the test's own)
	pid    int
}

// repoRoot is the source tree (for hack/package.sh and go build).
func repoRoot() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..")
}

// buildPackage runs hack/package.sh (what `make package` runs) with
// version into a scratch directory, unpacks the .deb with dpkg -x into a
// scratch root and returns the root.
func buildPackage(t *testing.T, version string) string {
	t.Helper()
	out := t.TempDir()
	cmd := exec.Command("bash", "hack/package.sh", out)
	cmd.Dir = repoRoot()
	cmd.Env = append(os.Environ(), "FERRY_VERSION="+version)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	start := time.Now()
	if err := cmd.Run(); err != nil {
		t.Fatalf("hack/package.sh: %v\n%s", err, stderr.String())
	}
	deb := strings.TrimSpace(stdout.String())
	root := t.TempDir()
	if b, err := exec.Command("dpkg", "-x", deb, root).CombinedOutput(); err != nil {
		t.Fatalf("dpkg -x %s: %v\n%s", deb, err, b)
	}
	t.Logf("built and unpacked %s in %s", filepath.Base(deb), time.Since(start).Round(time.Millisecond))
	for _, f := range []string{"usr/bin/ferry", "etc/ferry/server.yaml", "etc/ferry/agent.yaml"} {
		if _, err := os.Stat(filepath.Join(root, f)); err != nil {
			t.Fatalf("package lacks /%s: %v", f, err)
		}
	}
	return root
}

// buildVersioned links a ferry binary from the source tree that reports
// version (the link-time override make package uses).
func buildVersioned(t *testing.T, version string) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "ferry-"+version)
	cmd := exec.Command("go", "build", "-ldflags", "-X github.com/ferryvm/ferry/internal/version.override="+version, "-o", bin, "./cmd/ferry")
	cmd.Dir = repoRoot()
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build ferry %s: %v\n%s", version, err, b)
	}
	return bin
}

// upInstalled makes the namespaces of hosts hosts, a cluster CA and an
// admin credential, and starts the installed server (embedded etcd, a
// unix socket). Agents are started with startAgent. With cgroups, the test
// gets a cgroup v2 directory of its own: one child per agent and one, vms,
// under which the agents put each QEMU (--qemu-scope cgroup).
func upInstalled(t *testing.T, hosts int, version string, cgroups bool) *installed {
	t.Helper()
	root := buildPackage(t, version)
	b := make([]byte, 3)
	_, _ = rand.Read(b)
	prefix := "fp" + hex.EncodeToString(b)
	dir, err := os.MkdirTemp("", "ferry-e2e-"+prefix+"-")
	if err != nil {
		t.Fatal(err)
	}
	if err := markOwner(dir); err != nil {
		os.RemoveAll(dir)
		t.Fatal(err)
	}
	in := &installed{cluster: &cluster{t: t, dir: dir, prefix: prefix, bin: filepath.Join(root, "usr/bin/ferry")},
		root: root, version: version, agents: map[string]*pkgAgent{}}
	t.Cleanup(func() {
		if t.Failed() {
			dumpLogs(t, dir)
		}
		out, err := exec.Command(ferryBin, "dev", "cluster", "down", "--dir", dir).CombinedOutput()
		if err != nil {
			t.Errorf("dev cluster down: %v\n%s", err, out)
		}
		nss, _ := netnsutil.List()
		for _, ns := range nss {
			if strings.HasPrefix(ns, prefix+"-") {
				t.Errorf("namespace %s left behind", ns)
			}
		}
		in.removeCgroups()
		os.RemoveAll(dir)
	})
	in.c, err = devcluster.Up(ctxT(t, time.Minute), devcluster.Config{Prefix: prefix, Hosts: hosts, Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	if cgroups {
		mount, err := qemu.Cgroup2Mount()
		if err != nil {
			t.Fatalf("cgroup v2: %v", err)
		}
		in.cgroup = filepath.Join(mount, "ferry-e2e-"+prefix)
		if err := os.MkdirAll(filepath.Join(in.cgroup, "vms"), 0o755); err != nil {
			t.Fatal(err)
		}
	}

	ca, _, err := pki.LoadOrCreateCA(in.c.CADir())
	if err != nil {
		t.Fatal(err)
	}
	cert, key, err := ca.IssueKeyPair(pki.KindAdmin, "e2e-admin", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	entry := rpcaddr.Entry{CA: string(ca.CertPEM), Cert: string(cert), Key: string(key)}
	if err := rpcaddr.WriteEntry(in.c.AdminCredentials(), entry); err != nil {
		t.Fatal(err)
	}
	in.server = "unix://" + filepath.Join(dir, "server.sock")
	// The CLI finds the admin credential for this server in the user's
	// store, as after `ferry login`.
	if err := rpcaddr.SaveUserEntry(in.server, entry); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { rpcaddr.RemoveUserEntry(in.server) })
	argv := []string{in.bin, "server", "--config", filepath.Join(root, "etc/ferry/server.yaml"),
		"--data-dir", filepath.Join(dir, "server"), "--listen", in.server, "--ca", in.c.CADir()}
	if _, err := in.c.StartProcess("", filepath.Join(dir, "logs", "server.log"), argv); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		_, errOut, err := in.ferry("host", "list")
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("installed server does not answer host list after 30s: %v\n%s", err, errOut)
		}
		time.Sleep(200 * time.Millisecond)
	}
	return in
}

// removeCgroups kills whatever is left in the test's cgroups and removes
// them, children first.
func (in *installed) removeCgroups() {
	if in.cgroup == "" {
		return
	}
	var dirs []string
	_ = filepath.WalkDir(in.cgroup, func(p string, d os.DirEntry, err error) error {
		if err == nil && d.IsDir() {
			dirs = append(dirs, p)
		}
		return nil
	})
	_ = os.WriteFile(filepath.Join(in.cgroup, "cgroup.kill"), []byte("1"), 0)
	for i := len(dirs) - 1; i >= 0; i-- {
		deadline := time.Now().Add(5 * time.Second)
		for {
			err := os.Remove(dirs[i])
			if err == nil || os.IsNotExist(err) || time.Now().After(deadline) {
				if err != nil && !os.IsNotExist(err) {
					in.t.Errorf("remove cgroup %s: %v", dirs[i], err)
				}
				break
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
}

// startAgent starts `ferry agent` (binary bin, default the installed one)
// for host in its namespace with the shipped agent.yaml and a join token,
// in its own session (process group) and, in a cgroups cluster, in its own
// cgroup with --qemu-scope cgroup.
func (in *installed) startAgent(host string, bin string) *pkgAgent {
	t := in.t
	t.Helper()
	h, ok := in.c.Host(host)
	if !ok {
		t.Fatalf("no host %s", host)
	}
	if bin == "" {
		bin = in.bin
	}
	data := filepath.Join(in.dir, host)
	if err := os.MkdirAll(data, 0o755); err != nil {
		t.Fatal(err)
	}
	tok := strings.TrimSpace(in.mustFerry("token", "create", "--role", "agent"))
	if i := strings.LastIndexByte(tok, '\n'); i >= 0 {
		tok = strings.TrimSpace(tok[i+1:])
	}
	tokFile := filepath.Join(data, "join.token")
	if err := os.WriteFile(tokFile, []byte(tok+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	a := &pkgAgent{host: h, log: filepath.Join(in.dir, "logs", host+"-agent.log")}
	a.argv = []string{bin, "agent", "--config", filepath.Join(in.root, "etc/ferry/agent.yaml"),
		"--name", host, "--server", in.server, "--listen", "unix://" + filepath.Join(data, "agent.sock"),
		"--data-dir", data, "--bridge", h.Bridge, "--migration-ip", h.IP, "--accel", "tcg",
		"--join", "@" + tokFile, "--allow-path", guestDir}
	if in.cgroup != "" {
		a.cgroup = filepath.Join(in.cgroup, "agent-"+host)
		a.argv = append(a.argv, "--qemu-scope", qemu.ScopeCgroup, "--qemu-cgroup", filepath.Join(in.cgroup, "vms"))
	}
	in.agents[host] = a
	in.run(a)
	return a
}

// run (re)starts a's process: `ip netns exec` (or nsenter) runs it in
// place, so its PID and process group are the agent's; in a cgroups cluster clone3 puts it
// straight into a.cgroup. The namespace's teardown stops it.
func (in *installed) run(a *pkgAgent) {
	t := in.t
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(a.log), 0o755); err != nil {
		t.Fatal(err)
	}
	logf, err := os.OpenFile(a.log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	cmd := exec.Command("ip", append([]string{"netns", "exec", a.host.Netns}, a.argv...)...)
	if a.cgroup != "" {
		// `ip netns exec` mounts a fresh /sys for the namespace, without
		// /sys/fs/cgroup; nsenter joins only the network namespace, so the
		// agent sees the cgroup hierarchy as on a real host.
		cmd = exec.Command("nsenter", append([]string{"--net=/run/netns/" + a.host.Netns, "--"}, a.argv...)...)
	}
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if a.cgroup != "" {
		// Each start gets a fresh cgroup, as systemd gives each start a new
		// one: a process cloned into a cgroup after its cgroup.kill is
		// killed at once (seen on Linux 6.18).
		if err := os.Remove(a.cgroup); err != nil && !os.IsNotExist(err) {
			t.Fatalf("remove the agent's old cgroup: %v", err)
		}
		if err := os.Mkdir(a.cgroup, 0o755); err != nil {
			t.Fatal(err)
		}
		fd, err := unix.Open(a.cgroup, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		defer unix.Close(fd)
		cmd.SysProcAttr.UseCgroupFD, cmd.SysProcAttr.CgroupFD = true, fd
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start agent %s: %v", a.host.Name, err)
	}
	a.pid = cmd.Process.Pid
	go func() { _ = cmd.Wait() }()
	pid := a.pid
	t.Cleanup(func() {
		if alive(pid) {
			_ = syscall.Kill(-pid, syscall.SIGKILL)
		}
	})
}

// waitLog waits until the agent's log has a line with every one of words
// written after offset, and returns that line.
func (a *pkgAgent) waitLog(t *testing.T, offset int, timeout time.Duration, words ...string) string {
	t.Helper()
	return waitLogLine(t, a.log, offset, timeout, words...)
}

// waitLogLine waits until the file at path has a line with every one of
// words past byte offset, and returns that line.
func waitLogLine(t *testing.T, path string, offset int, timeout time.Duration, words ...string) string {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		b, _ := os.ReadFile(path)
		if offset < len(b) {
			for _, l := range strings.Split(string(b[offset:]), "\n") {
				ok := true
				for _, w := range words {
					ok = ok && strings.Contains(l, w)
				}
				if ok {
					return l
				}
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s has no line with %q within %s:\n%s", path, words, timeout, b[min(offset, len(b)):])
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// fileSize is the current length of the file at path (0 if missing).
func fileSize(path string) int {
	fi, err := os.Stat(path)
	if err != nil {
		return 0
	}
	return int(fi.Size())
}

// logSize is the current length of the agent's log.
func (a *pkgAgent) logSize() int { return fileSize(a.log) }

// procCgroup is the cgroup v2 path pid runs in (relative to the mount).
func procCgroup(t *testing.T, pid int) string {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if rel, ok := strings.CutPrefix(l, "0::"); ok {
			return rel
		}
	}
	t.Fatalf("pid %d has no cgroup v2 line in /proc/%d/cgroup:\n%s", pid, pid, b)
	return ""
}
