// Package demo is `ferry dev demo`, the main job: it brings up a namespaced
// cluster on this machine, boots the test guest through the real control
// plane, live-migrates it h1→h2→h1 while a client streams from it, prints
// a report per migration and checks the guest never noticed.
package demo

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"connectrpc.com/connect"
	ferryv1 "github.com/ferryvm/ferry/gen/ferry/v1"
	"github.com/ferryvm/ferry/gen/ferry/v1/ferryv1connect"
	"github.com/ferryvm/ferry/guest/guestapi"
	"github.com/ferryvm/ferry/internal/devcluster"
	"github.com/ferryvm/ferry/internal/guestprobe"
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
	if err := c.StartFerry(ctx, devcluster.FerryOptions{Accel: opt.Accel, AllowPaths: []string{filepath.Dir(kernel), filepath.Dir(initrd)}}); err != nil {
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
		Boot: &ferryv1.BootSpec{Kernel: kernel, Initrd: initrd, Cmdline: guestapi.BaseCmdline + " ferry.ip=" + GuestIP + "/15 ferry.dirty=128:32"},
		Nics: []*ferryv1.NICSpec{{}},
		// The test guest answers guest-ping: the post-migration check uses it.
		GuestAgent: true,
	}
	step("creating VM %q on h1 (real QEMU; guest dirties a 128 MiB working set at 32 MiB/s)", spec.Name)
	start := time.Now()
	cr, err := vms.CreateVM(ctx, connect.NewRequest(&ferryv1.CreateVMRequest{Spec: spec, Host: "h1"}))
	if err != nil {
		return err
	}
	vm := cr.Msg.Vm
	fmt.Fprintf(out, "    VM %s is %s on %s (pid %d, accel %s) after %s\n", vm.Spec.Name, vm.State, vm.Host, vm.Pid, vm.Accel, time.Since(start).Round(time.Millisecond))

	step("waiting for the guest to answer on %s:8080 (from namespace %s)", GuestIP, c.Client)
	client := netnsutil.HTTPClient(c.Client)
	client.Timeout = 5 * time.Second
	before, err := guestprobe.WaitStatus(ctx, client, GuestIP, 90*time.Second)
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "    guest ready %s after create: boot_id=%s\n", time.Since(start).Round(time.Millisecond), before.BootID)

	step("a client in %s holds one TCP connection to the guest's counter stream (%s:7000)", c.Client, GuestIP)
	stream, err := guestprobe.Dial(ctx, func(ctx context.Context, network, addr string) (net.Conn, error) {
		return netnsutil.DialContext(ctx, c.Client, network, addr)
	}, GuestIP)
	if err != nil {
		return err
	}
	defer stream.Close()
	if err := stream.WaitLines(ctx, 250); err != nil {
		return err
	}
	mig := ferryv1connect.NewMigrationServiceClient(hc, base)
	var rows []row
	for _, to := range []string{"h2", "h1"} {
		step("live-migrating %s to %s under load", spec.Name, to)
		stream.WindowGap()
		m, err := migrate(ctx, mig, spec.Name, to, out)
		if err != nil {
			return err
		}
		time.Sleep(500 * time.Millisecond) // let the stream show any lingering gap
		rows = append(rows, row{m: m, gap: stream.WindowGap()})
		if m.Status != "completed" {
			return fmt.Errorf("migration %s %s: %s", m.Id, m.Status, m.Error)
		}
	}
	after, err := guestprobe.GetStatus(ctx, client, GuestIP)
	if err != nil {
		return err
	}
	st := stream.Close()
	printTable(out, rows)
	fmt.Fprintf(out, "    guest dirty rate achieved: %.1f MiB/s (asked 32)\n", after.AchievedMiBps)
	fmt.Fprintf(out, "    stream: %d lines, last counter %d, missing %d, repeated %d, longest gap %s\n",
		st.Lines, st.Last, st.Missing, st.Repeated, st.MaxGap.Round(time.Millisecond))
	var problems []string
	if after.BootID != before.BootID {
		problems = append(problems, fmt.Sprintf("the guest rebooted (boot_id %s → %s)", before.BootID, after.BootID))
	}
	if st.Missing > 0 || st.Repeated > 0 || st.Garbled > 0 || (st.Err != nil && !st.Ended) {
		problems = append(problems, "the stream lost or repeated counters")
	}
	if st.Ended && st.Err != nil {
		problems = append(problems, "the stream broke: "+st.Err.Error())
	}
	if len(problems) > 0 {
		return fmt.Errorf("demo checks failed: %s", strings.Join(problems, "; "))
	}
	fmt.Fprintf(out, "    OK: boot_id %s unchanged, the TCP stream never broke, no counter lost or repeated\n", after.BootID)
	if !opt.Keep {
		step("deleting VM %q", spec.Name)
		if _, err := vms.DeleteVM(ctx, connect.NewRequest(&ferryv1.DeleteVMRequest{Name: spec.Name})); err != nil {
			return err
		}
	}
	return nil
}

type row struct {
	m   *ferryv1.Migration
	gap time.Duration
}

// migrate runs one migration through the API, printing its state changes.
func migrate(ctx context.Context, c ferryv1connect.MigrationServiceClient, vm, to string, out io.Writer) (*ferryv1.Migration, error) {
	resp, err := c.Migrate(ctx, connect.NewRequest(&ferryv1.MigrateRequest{Vm: vm, To: to}))
	if err != nil {
		return nil, err
	}
	id := resp.Msg.Migration.Id
	last := ""
	for {
		g, err := c.GetMigration(ctx, connect.NewRequest(&ferryv1.GetMigrationRequest{Id: id, WithoutSamples: true}))
		if err != nil {
			return nil, err
		}
		m := g.Msg.Migration
		if m.State != last {
			fmt.Fprintf(out, "    %-13s %6.1f/%.1f MiB sent, round %d\n", m.State, float64(m.TransferredBytes)/(1<<20), float64(m.TotalBytes)/(1<<20), m.Rounds)
			last = m.State
		}
		if m.Status != "running" {
			return m, nil
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func printTable(out io.Writer, rows []row) {
	fmt.Fprintf(out, "\n    %-14s %-8s %-9s %9s %10s %12s %12s %7s %10s %18s\n", "MIGRATION", "ROUTE", "STRATEGY", "TOTAL", "DOWNTIME", "(QEMU says)", "CLIENT GAP", "ROUNDS", "SENT", "PREDICTED total/down")
	for _, r := range rows {
		m := r.m
		pred := "-"
		if p := m.GetPredicted(); p != nil {
			pred = fmt.Sprintf("%dms/%dms", p.TotalMs, p.DowntimeMs)
		}
		fmt.Fprintf(out, "    %-14s %-8s %-9s %7dms %8dms %10dms %10dms %7d %6.0f MiB %18s\n", m.Id, m.From+"→"+m.To, m.Strategy, m.TotalMs,
			m.GetDowntimePhases().GetTotalMs(), m.DowntimeMs, r.gap.Milliseconds(), m.Rounds, float64(m.TransferredBytes)/(1<<20), pred)
	}
	fmt.Fprintln(out)
}
