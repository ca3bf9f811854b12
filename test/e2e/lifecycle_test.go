package e2e

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"connectrpc.com/connect"
	ferryv1 "github.com/ferryvm/ferry/gen/ferry/v1"
	"github.com/ferryvm/ferry/gen/ferry/v1/ferryv1connect"
	"github.com/ferryvm/ferry/internal/etcdembed"
	"github.com/ferryvm/ferry/internal/failover"
	"github.com/ferryvm/ferry/internal/pki"
	"github.com/ferryvm/ferry/internal/rpcaddr"
	"github.com/ferryvm/ferry/internal/spec"
	"google.golang.org/protobuf/encoding/protojson"
)

// TestVMLifecycle drives one VM through the real CLI, server, agent and
// QEMU: create → running with FERRY-GUEST READY; SIGKILL of the agent leaves
// QEMU running and a new agent reattaches (same boot_id); a server restart
// keeps hosts and VMs; stop, start (new boot), delete leave nothing behind.
func TestVMLifecycle(t *testing.T) {
	c := upCluster(t, 1)
	ns := c.c.Hosts[0].Netns
	const ip = "198.19.0.21"
	specPath := c.writeSpec("life", ip, "")

	created := time.Now()
	c.mustFerry("vm", "create", "-f", specPath)
	vm := c.waitVM("life", 60*time.Second, "running", func(v *ferryv1.VM) bool { return v.State == "running" })
	t.Logf("running %s after create (pid %d, accel %s)", time.Since(created).Round(time.Millisecond), vm.Pid, vm.Accel)
	if vm.Host != "h1" || vm.Pid == 0 || vm.Accel != "tcg" {
		t.Fatalf("record = host %q pid %d accel %q; want h1, a pid, tcg", vm.Host, vm.Pid, vm.Accel)
	}
	waitConsole(t, c, "life", "FERRY-GUEST READY", 60*time.Second)
	st, err := c.guestStatus(ip, 60*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	bootID := st["boot_id"].(string)
	if len(bootID) != 32 {
		t.Fatalf("boot_id %q is not 32 hex chars", bootID)
	}
	if got := taps(t, ns); len(got) != 1 {
		t.Fatalf("taps in %s = %v, want one", ns, got)
	}
	list := c.mustFerry("vm", "list")
	if !strings.Contains(list, "life") || !strings.Contains(list, "running") || !strings.Contains(list, "h1") {
		t.Fatalf("vm list does not show life running on h1:\n%s", list)
	}

	// SIGKILL the agent: QEMU must keep running; a new agent reattaches.
	agent := c.process("agent", "h1")
	if err := syscall.Kill(agent.PID, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	waitGone(t, agent.PID, 5*time.Second)
	time.Sleep(500 * time.Millisecond)
	if !alive(int(vm.Pid)) {
		t.Fatalf("QEMU pid %d died with the agent", vm.Pid)
	}
	if _, err := c.c.StartProcess(agent.Netns, filepath.Join(c.dir, "logs", "h1-agent.log"), agent.Argv); err != nil {
		t.Fatal(err)
	}
	if err := c.c.WaitHostsReady(ctxT(t, time.Minute), 30*time.Second); err != nil {
		t.Fatal(err)
	}
	again := c.waitVM("life", 20*time.Second, "running after reattach", func(v *ferryv1.VM) bool { return v.State == "running" })
	if again.Pid != vm.Pid {
		t.Fatalf("after agent restart pid = %d, want %d (reattach, not restart)", again.Pid, vm.Pid)
	}
	st, err = c.guestStatus(ip, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if st["boot_id"] != bootID {
		t.Fatalf("boot_id changed across agent restart: %v -> %v", bootID, st["boot_id"])
	}
	// The reattached agent still controls the VM: its QMP works.
	out := c.mustFerry("host", "list", "-o", "json")
	hl := &ferryv1.ListHostsResponse{}
	if err := protojson.Unmarshal([]byte(out), hl); err != nil {
		t.Fatalf("decode host list: %v\n%s", err, out)
	}
	qmpOK := false
	for _, h := range hl.Hosts {
		for _, st := range h.Vms {
			qmpOK = qmpOK || (st.Name == "life" && st.QemuStatus == "running")
		}
	}
	if !qmpOK {
		t.Fatalf("reattached agent does not report QMP status running:\n%s", out)
	}

	// Restart the server: hosts and VMs come back from etcd.
	server := c.process("server")
	if err := syscall.Kill(server.PID, syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	waitGone(t, server.PID, 15*time.Second)
	if _, err := c.c.StartProcess("", filepath.Join(c.dir, "logs", "server.log"), server.Argv); err != nil {
		t.Fatal(err)
	}
	if err := c.c.WaitHostsReady(ctxT(t, time.Minute), 30*time.Second); err != nil {
		t.Fatal(err)
	}
	after := c.waitVM("life", 10*time.Second, "kept across server restart", func(v *ferryv1.VM) bool { return v.State == "running" })
	if after.Host != "h1" || after.Generation < vm.Generation || !after.CreatedAt.AsTime().Equal(vm.CreatedAt.AsTime()) {
		t.Fatalf("record after server restart = %v; want the same VM on h1", after)
	}

	// Stop: QEMU and tap gone, state stopped.
	c.mustFerry("vm", "stop", "life", "--force")
	stopped := c.waitVM("life", 20*time.Second, "stopped", func(v *ferryv1.VM) bool { return v.State == "stopped" })
	waitGone(t, int(vm.Pid), 10*time.Second)
	if got := taps(t, ns); len(got) != 0 {
		t.Fatalf("taps after stop = %v, want none", got)
	}
	if stopped.Pid != 0 {
		t.Fatalf("stopped VM still has pid %d", stopped.Pid)
	}

	// Start again: a new boot on the same host.
	c.mustFerry("vm", "start", "life")
	c.waitVM("life", 60*time.Second, "running again", func(v *ferryv1.VM) bool { return v.State == "running" })
	st, err = c.guestStatus(ip, 60*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if st["boot_id"] == bootID {
		t.Fatal("boot_id unchanged after stop/start: the guest did not reboot")
	}

	// Delete: no record, no QEMU, no tap, no VM directory.
	c.mustFerry("vm", "delete", "life")
	if _, errOut, err := c.ferry("vm", "get", "life"); err == nil || !strings.Contains(errOut, "not found") {
		t.Fatalf("vm get after delete: err %v, stderr %q; want not found", err, errOut)
	}
	if p := qemuPIDs(t, ns); len(p) != 0 {
		t.Fatalf("QEMU processes left in %s: %v", ns, p)
	}
	if got := taps(t, ns); len(got) != 0 {
		t.Fatalf("taps left after delete: %v", got)
	}
	if _, err := os.Stat(filepath.Join(c.dir, "h1", "vms", "life")); !os.IsNotExist(err) {
		t.Fatalf("VM directory left after delete (stat err %v)", err)
	}
}

func waitConsole(t *testing.T, c *cluster, name, want string, timeout time.Duration) string {
	t.Helper()
	deadline := time.Now().Add(timeout)
	var out string
	for time.Now().Before(deadline) {
		out, _, _ = c.ferry("vm", "console", name)
		if strings.Contains(out, want) {
			return out
		}
		time.Sleep(500 * time.Millisecond)
	}
	t.Fatalf("console of %s has no %q after %s; last:\n%s", name, want, timeout, out)
	return ""
}

// TestBadSpecLeavesNothing checks that a spec with three bad fields is
// refused with three field-level messages, by the CLI and by the server,
// and that a start failing on the host leaves no QEMU, tap, directory or
// record.
func TestBadSpecLeavesNothing(t *testing.T) {
	c := upCluster(t, 1)
	ns := c.c.Hosts[0].Netns
	bad := filepath.Join(c.dir, "bad.yaml")
	if err := os.WriteFile(bad, []byte("name: Bad_Name\nvcpus: 1\nmemoryMiB: 0\naccel: xen\nboot:\n  kernel: /k\nnics:\n  - {}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	_, errOut, err := c.ferry("vm", "create", "-f", bad)
	if err == nil {
		t.Fatal("CLI accepted a spec with three bad fields")
	}
	for _, field := range []string{"spec.name:", "spec.memoryMiB: must be >= 64, got 0", "spec.accel:"} {
		if !strings.Contains(errOut, field) {
			t.Errorf("CLI error lacks %q:\n%s", field, errOut)
		}
	}
	if n := strings.Count(errOut, "\n  spec."); n != 3 {
		t.Errorf("CLI error has %d field lines, want 3:\n%s", n, errOut)
	}

	// The server validates too (a client may skip local validation).
	hc, base := failover.Client(c.server)
	vms := ferryv1connect.NewVMServiceClient(hc, base)
	_, err = vms.CreateVM(context.Background(), connect.NewRequest(&ferryv1.CreateVMRequest{Spec: &ferryv1.VMSpec{
		Name: "Bad_Name", Vcpus: 1, MemoryMib: 0, Accel: "xen", Boot: &ferryv1.BootSpec{Kernel: "/k"},
	}}))
	var ce *connect.Error
	if !errors.As(err, &ce) || ce.Code() != connect.CodeInvalidArgument {
		t.Fatalf("server CreateVM err = %v, want InvalidArgument", err)
	}
	var br *ferryv1.BadRequest
	for _, d := range ce.Details() {
		if v, derr := d.Value(); derr == nil {
			br, _ = v.(*ferryv1.BadRequest)
		}
	}
	if br == nil || len(br.Violations) != 3 {
		t.Fatalf("server error details = %v, want a BadRequest with 3 violations", br)
	}
	if ve := spec.FromBadRequest(br); ve == nil || len(ve.Violations) != 3 {
		t.Fatalf("BadRequest does not round-trip: %v", ve)
	}

	// A valid spec whose kernel is missing on the host: the agent refuses,
	// naming the field, and its undo removes everything.
	missing := c.writeSpec("nokernel", "198.19.0.22", "")
	b, _ := os.ReadFile(missing)
	b = []byte(strings.Replace(string(b), filepath.Join(guestDir, "vmlinuz"), "/nonexistent/vmlinuz", 1))
	if err := os.WriteFile(missing, b, 0o644); err != nil {
		t.Fatal(err)
	}
	_, errOut, err = c.ferry("vm", "create", "-f", missing)
	if err == nil || !strings.Contains(errOut, "spec.boot.kernel") {
		t.Fatalf("create with missing kernel: err %v stderr %q; want an error naming spec.boot.kernel", err, errOut)
	}

	if out := c.mustFerry("vm", "list", "-o", "json"); strings.Contains(out, "Bad_Name") || strings.Contains(out, "nokernel") {
		t.Fatalf("a record was left behind:\n%s", out)
	}
	if p := qemuPIDs(t, ns); len(p) != 0 {
		t.Fatalf("QEMU left in %s: %v", ns, p)
	}
	if got := taps(t, ns); len(got) != 0 {
		t.Fatalf("taps left in %s: %v", ns, got)
	}
	if entries, _ := os.ReadDir(filepath.Join(c.dir, "h1", "vms")); len(entries) != 0 {
		t.Fatalf("VM directories left: %v", entries)
	}
}

// TestServerExternalEtcd runs `ferry server --etcd-endpoints` against a
// separately started etcd and checks the API answers from it.
func TestServerExternalEtcd(t *testing.T) {
	dir := t.TempDir()
	e, err := etcdembed.Start(context.Background(), filepath.Join(dir, "etcd"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.Close)
	sock := "unix://" + filepath.Join(dir, "server.sock")
	caDir := filepath.Join(dir, "pki")
	cmd := exec.Command(ferryBin, "server", "--etcd-endpoints", e.Endpoint, "--listen", sock, "--ca", caDir, "--name", "x1")
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	// The server creates the CA in --ca on first start; the test holds
	// it, so it mints an agent certificate for "hx" to heartbeat with.
	deadline := time.Now().Add(20 * time.Second)
	agentCreds := waitCredentials(t, caDir, pki.KindAgent, "hx", deadline)
	hc, base := rpcaddr.ClientWith(sock, agentCreds)
	hosts := ferryv1connect.NewHostServiceClient(hc, base)
	for {
		_, err := hosts.Heartbeat(context.Background(), connect.NewRequest(&ferryv1.HeartbeatRequest{Host: &ferryv1.Host{Name: "hx", Address: "unix:///nowhere"}}))
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("server with external etcd not answering: %v", err)
		}
		time.Sleep(200 * time.Millisecond)
	}
	admin := waitCredentials(t, caDir, pki.KindAdmin, "test-admin", deadline)
	ahc, abase := rpcaddr.ClientWith(sock, admin)
	resp, err := ferryv1connect.NewHostServiceClient(ahc, abase).ListHosts(context.Background(), connect.NewRequest(&ferryv1.ListHostsRequest{}))
	if err != nil || len(resp.Msg.Hosts) != 1 || resp.Msg.Hosts[0].State != "ready" {
		t.Fatalf("ListHosts = %v, %v; want hx ready", resp, err)
	}
	// The record is in the external etcd: visible to a second server.
	sock2 := "unix://" + filepath.Join(dir, "server2.sock")
	cmd2 := exec.Command(ferryBin, "server", "--etcd-endpoints", e.Endpoint, "--listen", sock2, "--ca", caDir, "--name", "x2")
	if err := cmd2.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd2.Process.Kill(); _ = cmd2.Wait() })
	hc2, base2 := rpcaddr.ClientWith(sock2, admin)
	h2 := ferryv1connect.NewHostServiceClient(hc2, base2)
	for {
		resp, err = h2.ListHosts(context.Background(), connect.NewRequest(&ferryv1.ListHostsRequest{}))
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("second server: %v", err)
		}
		time.Sleep(200 * time.Millisecond)
	}
	if len(resp.Msg.Hosts) != 1 || resp.Msg.Hosts[0].Name != "hx" {
		t.Fatalf("second server sees %v, want hx", resp.Msg.Hosts)
	}
}

// waitCredentials waits (until deadline) for a CA in caDir and returns
// client credentials of a certificate of kind for name minted from it.
func waitCredentials(t *testing.T, caDir string, kind pki.Kind, name string, deadline time.Time) *rpcaddr.Credentials {
	t.Helper()
	for {
		ca, err := pki.LoadCA(caDir)
		if err == nil {
			cert, key, err := ca.IssueKeyPair(kind, name, time.Hour)
			if err != nil {
				t.Fatal(err)
			}
			kp, err := pki.NewKeypair(cert, key, ca.CertPEM)
			if err != nil {
				t.Fatal(err)
			}
			return &rpcaddr.Credentials{TLS: pki.ClientTLS(ca.Pool(), kp, pki.KindServer)}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no CA in %s: %v", caDir, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
