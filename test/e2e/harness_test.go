// Package e2e holds Ferry's end-to-end tests: the real ferry binary, real
// QEMU (TCG), real etcd and real network namespaces. They need root.
package e2e

import (
	"bytes"
	"compress/gzip"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	ferryv1 "github.com/ferryvm/ferry/gen/ferry/v1"
	"github.com/ferryvm/ferry/guest/guestapi"
	"github.com/ferryvm/ferry/internal/devcluster"
	"github.com/ferryvm/ferry/internal/netnsutil"
	"google.golang.org/protobuf/encoding/protojson"
)

var (
	ferryBin string // the ferry binary under test
	guestDir string // vmlinuz + initrd.img
)

func TestMain(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	flag.Parse()
	if testing.Short() {
		// `go test -short ./...` means the fast tests: these boot real
		// guests for minutes, so under -short none of them runs (and none
		// is reported as passed: the package prints this and no test).
		fmt.Fprintln(os.Stderr, "e2e: not run under -short: these tests boot real QEMU guests (run them without -short)")
		return 0
	}
	if os.Geteuid() != 0 {
		fmt.Fprintln(os.Stderr, "e2e: these tests need root (network namespaces, taps)")
		return 1
	}
	_, file, _, _ := runtime.Caller(0)
	root := filepath.Join(filepath.Dir(file), "..", "..")
	tmp, err := os.MkdirTemp("", "ferry-e2e-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(tmp)
	ferryBin = os.Getenv("FERRY_BIN")
	if ferryBin == "" {
		ferryBin = filepath.Join(tmp, "ferry")
		cmd := exec.Command("go", "build", "-o", ferryBin, "./cmd/ferry")
		cmd.Dir = root
		if out, err := cmd.CombinedOutput(); err != nil {
			fmt.Fprintf(os.Stderr, "e2e: build ferry: %v\n%s", err, out)
			return 1
		}
	}
	reaped, err := reapStaleClusters(ferryBin)
	for _, d := range reaped {
		fmt.Fprintf(os.Stderr, "e2e: tore down %s, left behind by a test process that died before its cleanups\n", d)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "e2e: %v\n", err)
		return 1
	}
	guestDir = os.Getenv("FERRY_GUEST_DIR")
	if guestDir == "" {
		guestDir = filepath.Join(root, "build", "guest")
		if _, err := os.Stat(filepath.Join(guestDir, "initrd.img")); err != nil {
			cmd := exec.Command("bash", "hack/build-guest.sh", guestDir)
			cmd.Dir = root
			if out, err := cmd.CombinedOutput(); err != nil {
				fmt.Fprintf(os.Stderr, "e2e: build guest: %v\n%s", err, out)
				return 1
			}
		}
	}
	if guestHasAgent, err = initrdHasGuestAgent(filepath.Join(guestDir, "initrd.img")); err != nil {
		fmt.Fprintf(os.Stderr, "e2e: %v\n", err)
		return 1
	}
	if !guestHasAgent {
		fmt.Fprintf(os.Stderr, "e2e: WARNING: the test guest in %s predates the guest agent channel (no virtio_console in its initramfs): "+
			"VMs get no guestAgent and the guest-alive tests fail; rebuild it with make guest (hack/build-guest.sh)\n", guestDir)
	}
	return m.Run()
}

// guestHasAgent: the test guest answers the guest agent protocol (its
// initramfs loads virtio_console), so its specs get guestAgent: true.
var guestHasAgent bool

// initrdHasGuestAgent looks for virtio_console.ko in the gzip'd initramfs.
func initrdHasGuestAgent(path string) (bool, error) {
	f, err := os.Open(path)
	if err != nil {
		return false, fmt.Errorf("test guest initramfs: %w", err)
	}
	defer f.Close()
	zr, err := gzip.NewReader(f)
	if err != nil {
		return false, fmt.Errorf("test guest initramfs %s: %w", path, err)
	}
	b, err := io.ReadAll(zr)
	if err != nil {
		return false, fmt.Errorf("test guest initramfs %s: %w", path, err)
	}
	return bytes.Contains(b, []byte("virtio_console.ko")), nil
}

// cluster is a dev cluster made for one test through the CLI.
type cluster struct {
	t      *testing.T
	dir    string
	prefix string
	server string
	c      *devcluster.Cluster
	bin    string // the ferry CLI the helpers run; ferryBin when empty
}

// upCluster runs `ferry dev cluster up` with a unique prefix and registers
// `ferry dev cluster down` plus a check that nothing is left behind.
func upCluster(t *testing.T, hosts int) *cluster {
	t.Helper()
	return upClusterWith(t, hosts)
}

// upClusterWith is upCluster with extra `ferry dev cluster up` arguments
// (--servers N ...); c.server then lists every server address.
func upClusterWith(t *testing.T, hosts int, extra ...string) *cluster {
	t.Helper()
	return upClusterEnv(t, hosts, nil, extra...)
}

// upClusterEnv is upClusterWith with extra environment for every daemon
// (FERRY_FAILPOINTS=...).
func upClusterEnv(t *testing.T, hosts int, env []string, extra ...string) *cluster {
	t.Helper()
	return upClusterBin(t, ferryBin, hosts, env, extra...)
}

// upClusterBin is upClusterEnv with the daemons run from bin (a ferry
// linked with another version): `bin dev cluster up` starts them.
func upClusterBin(t *testing.T, bin string, hosts int, env []string, extra ...string) *cluster {
	t.Helper()
	b := make([]byte, 3)
	_, _ = rand.Read(b)
	prefix := "fe" + hex.EncodeToString(b)
	dir, err := os.MkdirTemp("", "ferry-e2e-"+prefix+"-")
	if err != nil {
		t.Fatal(err)
	}
	if err := markOwner(dir); err != nil {
		os.RemoveAll(dir)
		t.Fatal(err)
	}
	cl := &cluster{t: t, dir: dir, prefix: prefix}
	t.Cleanup(func() {
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
		if t.Failed() {
			dumpLogs(t, dir)
		}
		keepLogs(t, dir)
		os.RemoveAll(dir)
	})
	args := append([]string{"dev", "cluster", "up", "--hosts", fmt.Sprint(hosts), "--dir", dir, "--prefix", prefix, "--accel", "tcg", "--allow-path", guestDir}, extra...)
	up := exec.Command(bin, args...)
	up.Env = append(os.Environ(), env...)
	out, err := up.CombinedOutput()
	if err != nil {
		t.Fatalf("dev cluster up: %v\n%s", err, out)
	}
	cl.c, err = devcluster.Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	cl.server = strings.Join(cl.c.ServerURLs(), ",")
	return cl
}

// keepLogs copies the cluster's logs to $FERRY_E2E_KEEP_LOGS/<test name>/
// when that is set, passed or failed (the cluster's directory is removed).
func keepLogs(t *testing.T, dir string) {
	keep := os.Getenv("FERRY_E2E_KEEP_LOGS")
	if keep == "" {
		return
	}
	to := filepath.Join(keep, strings.ReplaceAll(t.Name(), "/", "_"))
	if err := os.MkdirAll(to, 0o755); err != nil {
		t.Logf("keep logs: %v", err)
		return
	}
	logs, _ := filepath.Glob(filepath.Join(dir, "logs", "*.log"))
	for _, l := range logs {
		b, err := os.ReadFile(l)
		if err == nil {
			err = os.WriteFile(filepath.Join(to, filepath.Base(l)), b, 0o644)
		}
		if err != nil {
			t.Logf("keep logs: %v", err)
		}
	}
}

func dumpLogs(t *testing.T, dir string) {
	logs, _ := filepath.Glob(filepath.Join(dir, "logs", "*.log"))
	for _, l := range logs {
		b, _ := os.ReadFile(l)
		if len(b) > 4000 {
			b = b[len(b)-4000:]
		}
		t.Logf("--- %s ---\n%s", l, b)
	}
}

// ferry runs the CLI against the cluster's server.
func (c *cluster) ferry(args ...string) (stdout, stderr string, err error) {
	bin := ferryBin
	if c.bin != "" {
		bin = c.bin
	}
	cmd := exec.Command(bin, args...)
	cmd.Env = append(os.Environ(), "FERRY_SERVER="+c.server)
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	err = cmd.Run()
	return o.String(), e.String(), err
}

// mustFerry runs the CLI and fails the test on error.
func (c *cluster) mustFerry(args ...string) string {
	c.t.Helper()
	out, errOut, err := c.ferry(args...)
	if err != nil {
		c.t.Fatalf("ferry %s: %v\n%s%s", strings.Join(args, " "), err, out, errOut)
	}
	return out
}

// writeSpec writes a test-guest spec and returns its path. The test guest
// has the guest agent channel (guestAgent: true) unless extra says
// otherwise.
func (c *cluster) writeSpec(name, ip string, extra string) string {
	c.t.Helper()
	if guestHasAgent && !strings.Contains(extra, "guestAgent:") {
		extra = "guestAgent: true\n" + extra
	}
	spec := fmt.Sprintf(`name: %s
vcpus: 1
memoryMiB: 256
accel: tcg
boot:
  kernel: %s
  initrd: %s
  cmdline: "%s ferry.ip=%s/15"
nics:
  - {}
%s`, name, filepath.Join(guestDir, "vmlinuz"), filepath.Join(guestDir, "initrd.img"), guestapi.BaseCmdline, ip, extra)
	path := filepath.Join(c.dir, name+".yaml")
	if err := os.WriteFile(path, []byte(spec), 0o644); err != nil {
		c.t.Fatal(err)
	}
	return path
}

// getVM returns the VM record through `ferry vm get -o json`.
func (c *cluster) getVM(name string) (*ferryv1.VM, error) {
	out, errOut, err := c.ferry("vm", "get", name, "-o", "json")
	if err != nil {
		return nil, fmt.Errorf("%v: %s", err, errOut)
	}
	vm := &ferryv1.VM{}
	if err := protojson.Unmarshal([]byte(out), vm); err != nil {
		return nil, fmt.Errorf("decode vm get output: %w\n%s", err, out)
	}
	return vm, nil
}

// waitVM polls the record until cond holds.
func (c *cluster) waitVM(name string, timeout time.Duration, what string, cond func(*ferryv1.VM) bool) *ferryv1.VM {
	c.t.Helper()
	deadline := time.Now().Add(timeout)
	var last *ferryv1.VM
	var lastErr error
	for time.Now().Before(deadline) {
		last, lastErr = c.getVM(name)
		if lastErr == nil && cond(last) {
			return last
		}
		time.Sleep(250 * time.Millisecond)
	}
	c.t.Fatalf("VM %s not %s within %s: last %v, err %v", name, what, timeout, last, lastErr)
	return nil
}

// guestStatus fetches the guest's /status from the client namespace.
func (c *cluster) guestStatus(ip string, timeout time.Duration) (map[string]any, error) {
	client := netnsutil.HTTPClient(c.c.Client)
	client.Timeout = 2 * time.Second
	deadline := time.Now().Add(timeout)
	var lastErr error
	for time.Now().Before(deadline) {
		resp, err := client.Get("http://" + ip + ":8080/status")
		if err == nil {
			var st map[string]any
			if resp.StatusCode == http.StatusOK {
				err = json.NewDecoder(resp.Body).Decode(&st)
			} else {
				err = fmt.Errorf("status %s", resp.Status)
			}
			resp.Body.Close()
			if err == nil {
				return st, nil
			}
		}
		lastErr = err
		time.Sleep(300 * time.Millisecond)
	}
	return nil, fmt.Errorf("guest %s /status: %w", ip, lastErr)
}

// taps lists the VM taps (ft*) in a namespace.
func taps(t *testing.T, ns string) []string {
	t.Helper()
	out, err := exec.Command("ip", "-n", ns, "-o", "link", "show").CombinedOutput()
	if err != nil {
		t.Fatalf("ip link in %s: %v\n%s", ns, err, out)
	}
	var names []string
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line)
		if len(f) > 1 && strings.HasPrefix(f[1], "ft") {
			names = append(names, strings.TrimSuffix(strings.SplitN(f[1], "@", 2)[0], ":"))
		}
	}
	return names
}

// qemuPIDs lists the QEMU processes inside a namespace.
func qemuPIDs(t *testing.T, ns string) []int {
	t.Helper()
	pids, err := netnsutil.PIDs(ns)
	if err != nil {
		t.Fatal(err)
	}
	var out []int
	for _, pid := range pids {
		b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
		if strings.HasPrefix(strings.TrimSpace(string(b)), "qemu-system") {
			out = append(out, pid)
		}
	}
	return out
}

// process finds a recorded cluster process by argv words.
func (c *cluster) process(words ...string) devcluster.Process {
	c.t.Helper()
	ps, err := c.c.Processes()
	if err != nil {
		c.t.Fatal(err)
	}
	for i := len(ps) - 1; i >= 0; i-- {
		p := ps[i]
		ok := true
		for _, w := range words {
			if !slices.Contains(p.Argv, w) {
				ok = false
			}
		}
		if ok {
			return p
		}
	}
	c.t.Fatalf("no cluster process with %v", words)
	return devcluster.Process{}
}

func alive(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i > 0 && len(s) > i+2 && s[i+2] != 'Z'
}

func waitGone(t *testing.T, pid int, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if !alive(pid) {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("pid %d still alive after %s", pid, timeout)
}

func ctxT(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}
