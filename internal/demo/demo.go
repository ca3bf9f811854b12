// Package demo is `ferry dev demo`, the main job: it brings up a namespaced
// cluster on this machine, boots the test guest through the real control
// plane, shows it running and its /status, and tears everything down.
package demo

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"time"

	"connectrpc.com/connect"
	ferryv1 "github.com/ferryvm/ferry/gen/ferry/v1"
	"github.com/ferryvm/ferry/gen/ferry/v1/ferryv1connect"
	"github.com/ferryvm/ferry/internal/devcluster"
	"github.com/ferryvm/ferry/internal/netnsutil"
	"github.com/ferryvm/ferry/internal/rpcaddr"
)

// Options configures the demo.
type Options struct {
	// GuestDir holds vmlinuz and initrd.img (make guest).
	GuestDir string
	// Dir is the cluster's state directory.
	Dir string
	// Prefix names the namespaces.
	Prefix string
	// Accel is the agents' accelerator policy.
	Accel string
	// Keep leaves the cluster running at the end.
	Keep bool
}

// GuestIP is the demo guest's address on the segment.
const GuestIP = "198.19.0.10"

// Run runs the demo, printing what it does to out.
func Run(ctx context.Context, opt Options, out io.Writer) (err error) {
	kernel, initrd := filepath.Join(opt.GuestDir, "vmlinuz"), filepath.Join(opt.GuestDir, "initrd.img")
	for _, f := range []string{kernel, initrd} {
		if _, err := os.Stat(f); err != nil {
			return fmt.Errorf("guest image %s missing: run `make guest`", f)
		}
	}
	kernel, _ = filepath.Abs(kernel)
	initrd, _ = filepath.Abs(initrd)
	step := func(format string, args ...any) {
		fmt.Fprintf(out, "==> "+format+"\n", args...)
	}

	step("bringing up a 2-host cluster in network namespaces (prefix %s)", opt.Prefix)
	c, err := devcluster.Up(ctx, devcluster.Config{Prefix: opt.Prefix, Hosts: 2, Dir: opt.Dir})
	if err != nil {
		return err
	}
	defer func() {
		if opt.Keep && err == nil {
			step("cluster left running: ferry dev cluster down --dir %s", c.Config.Dir)
			return
		}
		step("tearing down")
		dctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if derr := c.Down(dctx); derr != nil && err == nil {
			err = derr
		}
	}()
	if err := c.StartFerry(ctx, devcluster.FerryOptions{Accel: opt.Accel}); err != nil {
		return err
	}
	hc, base := rpcaddr.Client(c.ServerURL())
	hosts := ferryv1connect.NewHostServiceClient(hc, base)
	vms := ferryv1connect.NewVMServiceClient(hc, base)
	hl, err := hosts.ListHosts(ctx, connect.NewRequest(&ferryv1.ListHostsRequest{}))
	if err != nil {
		return err
	}
	for _, h := range hl.Msg.Hosts {
		fmt.Fprintf(out, "    host %-3s %-6s accel=%s migration-ip=%s cpus=%d memory=%d MiB\n", h.Name, h.State, h.Accel, h.MigrationIp, h.Capacity.GetCpus(), h.Capacity.GetMemoryMib())
	}

	spec := &ferryv1.VMSpec{
		Name: "demo", Vcpus: 1, MemoryMib: 512, Accel: opt.Accel,
		Boot: &ferryv1.BootSpec{Kernel: kernel, Initrd: initrd, Cmdline: "console=ttyS0 ferry.ip=" + GuestIP + "/15 ferry.dirty=64:8"},
		Nics: []*ferryv1.NICSpec{{}},
	}
	step("creating VM %q on h1 (real QEMU, %s)", spec.Name, opt.Accel)
	start := time.Now()
	cr, err := vms.CreateVM(ctx, connect.NewRequest(&ferryv1.CreateVMRequest{Spec: spec, Host: "h1"}))
	if err != nil {
		return err
	}
	vm := cr.Msg.Vm
	fmt.Fprintf(out, "    VM %s is %s on %s (pid %d, accel %s) after %s\n", vm.Spec.Name, vm.State, vm.Host, vm.Pid, vm.Accel, time.Since(start).Round(time.Millisecond))

	step("waiting for the guest to answer on %s:8080 (from namespace %s)", GuestIP, c.Client)
	st, err := waitStatus(ctx, c.Client, GuestIP, 90*time.Second)
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "    guest ready %s after create\n", time.Since(start).Round(time.Millisecond))
	pretty, _ := json.MarshalIndent(st, "    ", "  ")
	fmt.Fprintf(out, "    GET /status:\n    %s\n", pretty)

	gr, err := vms.GetVM(ctx, connect.NewRequest(&ferryv1.GetVMRequest{Name: spec.Name}))
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "    record: state=%s host=%s generation=%d\n", gr.Msg.Vm.State, gr.Msg.Vm.Host, gr.Msg.Vm.Generation)
	if !opt.Keep {
		step("deleting VM %q", spec.Name)
		if _, err := vms.DeleteVM(ctx, connect.NewRequest(&ferryv1.DeleteVMRequest{Name: spec.Name})); err != nil {
			return err
		}
	}
	return nil
}

// GuestStatus is the test guest's GET /status.
type GuestStatus map[string]any

// waitStatus polls the guest's /status from inside namespace ns.
func waitStatus(ctx context.Context, ns, ip string, timeout time.Duration) (GuestStatus, error) {
	client := netnsutil.HTTPClient(ns)
	client.Timeout = 2 * time.Second
	deadline := time.Now().Add(timeout)
	var lastErr error
	for time.Now().Before(deadline) {
		st, err := fetchStatus(ctx, client, ip)
		if err == nil {
			return st, nil
		}
		lastErr = err
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(500 * time.Millisecond):
		}
	}
	return nil, fmt.Errorf("guest %s did not answer /status within %s: %w", ip, timeout, lastErr)
}

func fetchStatus(ctx context.Context, client *http.Client, ip string) (GuestStatus, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+ip+":8080/status", nil)
	if err != nil {
		return nil, err
	}
	resp, err := client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET /status: %s", resp.Status)
	}
	var st GuestStatus
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		return nil, fmt.Errorf("decode /status: %w", err)
	}
	return st, nil
}
