package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ferryvm/ferry/internal/qmp"
)

// Temporary: does plain QEMU (no Ferry) corrupt the guest the same way?
func TestZZScratchPlainQEMU(t *testing.T) {
	iters := 8
	bad := 0
	for i := 0; i < iters; i++ {
		if plainOnce(t, i) {
			bad++
		}
	}
	t.Logf("PLAIN QEMU: %d of %d migrations left a crashed guest", bad, iters)
}

func qemuArgs(dir string, incoming bool) []string {
	a := []string{"-name", "guest=x", "-machine", "pc-q35-7.2", "-accel", "tcg", "-cpu", "qemu64", "-smp", "1", "-m", "256M",
		"-nodefaults", "-no-user-config", "-display", "none",
		"-chardev", "socket,id=qmp,path=" + dir + "/qmp.sock,server=on,wait=off", "-mon", "chardev=qmp,mode=control",
		"-chardev", "file,id=serial0,path=" + dir + "/serial.log,append=on", "-serial", "chardev:serial0",
		"-kernel", filepath.Join(guestDir, "vmlinuz"), "-initrd", filepath.Join(guestDir, "initrd.img"),
		"-append", "console=ttyS0 ferry.ip=10.0.2.15/24 ferry.dirty=64:16",
		"-netdev", "user,id=net0", "-device", "virtio-net-pci,netdev=net0,mac=52:54:00:12:34:56,id=nic0"}
	if incoming {
		a = append(a, "-S", "-incoming", "defer")
	}
	return a
}

func startQEMU(t *testing.T, dir string, incoming bool) (*exec.Cmd, *qmp.Monitor) {
	os.MkdirAll(dir, 0o755)
	cmd := exec.Command("qemu-system-x86_64", qemuArgs(dir, incoming)...)
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _, _ = cmd.Process.Wait() })
	var mon *qmp.Monitor
	var err error
	for j := 0; j < 100; j++ {
		mon, err = qmp.Connect(context.Background(), dir+"/qmp.sock")
		if err == nil {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { mon.Close() })
	return cmd, mon
}

func waitMig(t *testing.T, sub *qmp.Subscription, want qmp.MigrationStatus) {
	to := time.After(60 * time.Second)
	for {
		select {
		case ev := <-sub.C():
			me, _ := ev.AsMigration()
			if me.Status == want {
				return
			}
			if me.Status == "failed" {
				t.Fatalf("migration failed waiting for %s", want)
			}
		case <-to:
			t.Fatalf("no %s", want)
		}
	}
}

func plainOnce(t *testing.T, i int) bool {
	ctx := context.Background()
	base := t.TempDir()
	src, dst := filepath.Join(base, "src"), filepath.Join(base, "dst")
	_, sm := startQEMU(t, src, false)
	for j := 0; ; j++ {
		b, _ := os.ReadFile(src + "/serial.log")
		if strings.Contains(string(b), "dirtier running") || strings.Contains(string(b), "FERRY-GUEST READY") && j > 40 {
			break
		}
		if j > 600 {
			t.Fatalf("no READY")
		}
		time.Sleep(50 * time.Millisecond)
	}
	time.Sleep(800 * time.Millisecond)
	_, dm := startQEMU(t, dst, true)
	dsub := dm.Subscribe(qmp.EventMigration)
	must(t, dm.MigrateSetCapabilities(ctx, []qmp.CapabilityState{{Capability: qmp.CapEvents, State: true}}))
	must(t, dm.MigrateIncoming(ctx, "tcp:127.0.0.1:0"))
	info, err := dm.QueryMigrate(ctx)
	must(t, err)
	port := ""
	for _, sa := range info.SocketAddress {
		port = sa.Port
	}
	ssub := sm.Subscribe(qmp.EventMigration)
	must(t, sm.MigrateSetCapabilities(ctx, []qmp.CapabilityState{{Capability: qmp.CapEvents, State: true}, {Capability: qmp.CapPauseBeforeSwitchover, State: true}}))
	must(t, sm.MigrateSetParameters(ctx, qmp.MigrationParameters{MaxBandwidth: qmp.Ptr(int64(1) << 40), DowntimeLimit: qmp.Ptr(int64(300))}))
	start := time.Now()
	must(t, sm.Migrate(ctx, "tcp:127.0.0.1:"+port, qmp.MigrateOptions{}))
	waitMig(t, ssub, "pre-switchover")
	time.Sleep(10 * time.Millisecond) // like the owner CAS
	must(t, sm.MigrateContinue(ctx, "pre-switchover"))
	waitMig(t, dsub, "completed")
	must(t, dm.Cont(ctx))
	_ = sm.Quit(ctx)
	d := time.Since(start)
	time.Sleep(2500 * time.Millisecond)
	b, _ := os.ReadFile(dst + "/serial.log")
	s := string(b)
	crashed := strings.Contains(s, "panic") || strings.Contains(s, "Oops") || strings.Contains(s, "BUG")
	st, _ := dm.QueryStatus(ctx)
	t.Logf("iteration %d: migrated in %s, dest status %s, crashed %v, dest serial %d bytes", i, d.Round(time.Millisecond), st.Status, crashed, len(b))
	if crashed {
		if len(s) > 1500 {
			s = s[:1500]
		}
		t.Logf("%s", s)
	}
	_ = fmt.Sprint
	return crashed
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}
