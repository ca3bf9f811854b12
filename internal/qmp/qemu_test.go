package qmp

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// Real-QEMU tests. They need qemu-system-x86_64 and FAIL without it unless
// FERRY_SKIP_QEMU=1. With FERRY_UPDATE_TESTDATA=1 they rewrite the captured
// query-migrate replies in testdata/.

func qemuBinary(t *testing.T) string {
	t.Helper()
	if os.Getenv("FERRY_SKIP_QEMU") == "1" {
		t.Skip("FERRY_SKIP_QEMU=1: skipping real-QEMU test")
	}
	bin, err := exec.LookPath("qemu-system-x86_64")
	if err != nil {
		t.Fatalf("qemu-system-x86_64 is required for this test but was not found in PATH (%v); "+
			"install it (Debian: apt-get install qemu-system-x86) or set FERRY_SKIP_QEMU=1 to skip", err)
	}
	return bin
}

// qemuVM is one QEMU process under test.
type qemuVM struct {
	name    string
	mon     *Monitor
	cmd     *exec.Cmd
	exited  chan struct{}
	logPath string
}

// startQEMU starts a diskless q35/TCG VM with extra args (paused with -S
// if prelaunch) and connects a Monitor to it. Cleanup closes the monitor
// and kills exactly the PID it started.
func startQEMU(t *testing.T, name string, prelaunch bool, extra ...string) *qemuVM {
	t.Helper()
	bin := qemuBinary(t)
	dir := t.TempDir()
	sock := filepath.Join(dir, name+".qmp")
	pidFile := filepath.Join(dir, name+".pid")
	args := []string{
		"-machine", "q35", "-accel", "tcg", "-m", "64", "-nodefaults", "-display", "none",
		"-qmp", "unix:" + sock + ",server=on,wait=off", "-pidfile", pidFile,
	}
	if prelaunch {
		args = append(args, "-S")
	}
	args = append(args, extra...)
	cmd := exec.Command(bin, args...)
	var stderr bytes.Buffer
	cmd.Stdout = &stderr
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting %s: %v", bin, err)
	}
	vm := &qemuVM{name: name, cmd: cmd, exited: make(chan struct{}), logPath: filepath.Join(dir, name+"-qmp.log")}
	go func() {
		_ = cmd.Wait()
		close(vm.exited)
	}()
	pid := cmd.Process.Pid
	t.Cleanup(func() {
		select {
		case <-vm.exited:
		default:
			_ = cmd.Process.Kill() // exactly the process we started
			<-vm.exited
		}
		if t.Failed() {
			data, _ := os.ReadFile(vm.logPath)
			t.Logf("%s (pid %d) stderr:\n%s\nQMP log:\n%s", name, pid, stderr.String(), data)
		}
	})

	// wait=off: the socket exists as soon as QEMU has parsed its options.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for {
		m, err := Connect(ctx, sock, WithLogFile(vm.logPath), WithName(name))
		if err == nil {
			vm.mon = m
			break
		}
		select {
		case <-vm.exited:
			t.Fatalf("%s exited early: %s", name, stderr.String())
		case <-ctx.Done():
			t.Fatalf("connecting to %s: %v", name, err)
		case <-time.After(10 * time.Millisecond):
		}
	}
	t.Cleanup(func() { _ = vm.mon.Close() })

	b, err := os.ReadFile(pidFile)
	if err != nil || strings.TrimSpace(string(b)) != strconv.Itoa(pid) {
		t.Fatalf("pidfile %q (%v) does not name the process we started (%d)", b, err, pid)
	}
	return vm
}

func (vm *qemuVM) waitStatus(t *testing.T, want RunState) StatusInfo {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for {
		st, err := vm.mon.QueryStatus(ctx)
		if err != nil {
			t.Fatalf("%s: query-status: %v", vm.name, err)
		}
		if st.Status == want {
			return st
		}
		select {
		case <-ctx.Done():
			t.Fatalf("%s: status %q, want %q", vm.name, st.Status, want)
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// waitMigration polls query-migrate until one of want (or a terminal
// state) is reached and returns the raw reply too.
func (vm *qemuVM) waitMigration(t *testing.T, want ...MigrationStatus) (MigrationInfo, json.RawMessage) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for {
		var raw json.RawMessage
		if err := vm.mon.Run(ctx, "query-migrate", nil, &raw); err != nil {
			t.Fatalf("%s: query-migrate: %v", vm.name, err)
		}
		var info MigrationInfo
		if err := json.Unmarshal(raw, &info); err != nil {
			t.Fatalf("%s: decoding query-migrate: %v", vm.name, err)
		}
		for _, w := range want {
			if info.Status == w {
				return info, raw
			}
		}
		if info.Status.Finished() {
			t.Fatalf("%s: migration ended %q (%s), want %v", vm.name, info.Status, info.ErrorDesc, want)
		}
		select {
		case <-ctx.Done():
			t.Fatalf("%s: migration stuck in %q, want %v", vm.name, info.Status, want)
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// drainMigration reads sub until a terminal MIGRATION event and returns
// the MIGRATION statuses seen plus every event read.
func drainMigration(t *testing.T, who string, sub *Subscription) ([]MigrationStatus, []Event) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	var seen []MigrationStatus
	var all []Event
	for {
		ev, err := sub.Next(ctx)
		if err != nil {
			t.Fatalf("%s: MIGRATION events so far %v: %v", who, seen, err)
		}
		all = append(all, ev)
		if ev.Name != EventMigration {
			continue
		}
		me, err := ev.AsMigration()
		if err != nil {
			t.Fatal(err)
		}
		seen = append(seen, me.Status)
		if me.Status.Finished() {
			return seen, all
		}
	}
}

func containsInOrder(got, want []MigrationStatus) bool {
	i := 0
	for _, g := range got {
		if i < len(want) && g == want[i] {
			i++
		}
	}
	return i == len(want)
}

// saveTestdata stores a captured reply when FERRY_UPDATE_TESTDATA=1.
func saveTestdata(t *testing.T, name string, raw json.RawMessage) {
	t.Helper()
	if os.Getenv("FERRY_UPDATE_TESTDATA") != "1" {
		return
	}
	var buf bytes.Buffer
	if err := json.Indent(&buf, raw, "", "  "); err != nil {
		t.Fatal(err)
	}
	buf.WriteByte('\n')
	if err := os.WriteFile(filepath.Join("testdata", name), buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("wrote testdata/%s", name)
}

func setCaps(t *testing.T, vm *qemuVM, caps ...Capability) {
	t.Helper()
	var states []CapabilityState
	for _, c := range caps {
		states = append(states, CapabilityState{Capability: c, State: true})
	}
	if err := vm.mon.MigrateSetCapabilities(context.Background(), states); err != nil {
		t.Fatalf("%s: %v", vm.name, err)
	}
}

func TestQEMUMonitor(t *testing.T) {
	t.Parallel()
	vm := startQEMU(t, "basic", true)
	m := vm.mon
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()

	if v := m.Version(); !v.AtLeast(7, 2) {
		t.Fatalf("greeting version %s", v)
	}
	qv, err := m.QueryVersion(ctx)
	if err != nil || qv != m.Version() {
		t.Fatalf("query-version %+v %v, greeting %+v", qv, err, m.Version())
	}

	st, err := m.QueryStatus(ctx)
	if err != nil || st.Status != RunStatePrelaunch || st.Running {
		t.Fatalf("initial status %+v %v", st, err)
	}
	events := m.Subscribe(EventStop, EventResume, EventShutdown, "POWERDOWN")
	defer events.Close()
	if err := m.Cont(ctx); err != nil {
		t.Fatal(err)
	}
	if st := vm.waitStatus(t, RunStateRunning); !st.Running {
		t.Fatalf("running but Running=false: %+v", st)
	}
	if _, err := events.Wait(ctx, EventResume, nil); err != nil {
		t.Fatalf("RESUME: %v", err)
	}
	if err := m.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	if st := vm.waitStatus(t, RunStatePaused); st.Running {
		t.Fatalf("paused but Running=true: %+v", st)
	}
	if _, err := events.Wait(ctx, EventStop, nil); err != nil {
		t.Fatalf("STOP: %v", err)
	}

	// Error mapping against the real thing.
	if err := m.Run(ctx, "no-such-command", nil, nil); !errors.Is(err, ErrCommandNotFound) {
		t.Fatalf("unknown command: %v", err)
	}
	err = m.MigrateContinue(ctx, MigrationStatusPreSwitchover)
	var ce *CommandError
	if !errors.Is(err, ErrGenericError) || !errors.As(err, &ce) || ce.Command != "migrate-continue" {
		t.Fatalf("migrate-continue with no migration: %v", err)
	}
	t.Logf("migrate-continue without migration: %v", err)

	// Out of band: QEMU offers it on this monitor, the session has it, and
	// an allow-oob command sent with exec-oob is run (it refuses for the
	// missing migration, not for the way it came).
	if !m.OOB() {
		t.Fatalf("QEMU's greeting offers %v but the session has no out-of-band execution", m.Capabilities())
	}
	err = m.MigratePause(ctx)
	if !errors.As(err, &ce) || ce.Command != "migrate-pause" || strings.Contains(strings.ToLower(ce.Desc), "oob") {
		t.Fatalf("migrate-pause out of band without a migration: %v, want QEMU's refusal for the state", err)
	}
	t.Logf("migrate-pause out of band without migration: %v", err)

	// Defaults of QEMU 7.2.
	p, err := m.QueryMigrateParameters(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if Deref(p.MaxBandwidth) != 134217728 || Deref(p.DowntimeLimit) != 300 || Deref(p.MultifdChannels) != 2 ||
		Deref(p.AnnounceInitial) != 50 || Deref(p.XBZRLECacheSize) != 64<<20 || Deref(p.MultifdCompression) != MultiFDCompressionNone ||
		p.TLSCreds == nil || *p.TLSCreds != "" || Deref(p.MaxPostcopyBandwidth) != 0 || p.MaxPostcopyBandwidth == nil {
		t.Fatalf("unexpected defaults: %+v", p)
	}
	set := MigrationParameters{
		MaxBandwidth:         Ptr[int64](1 << 30),
		DowntimeLimit:        Ptr[int64](50),
		MultifdChannels:      Ptr[int64](4),
		CPUThrottleInitial:   Ptr[int64](30),
		CPUThrottleTailslow:  Ptr(true),
		MaxPostcopyBandwidth: Ptr[int64](1 << 28),
	}
	if err := m.MigrateSetParameters(ctx, set); err != nil {
		t.Fatal(err)
	}
	p2, err := m.QueryMigrateParameters(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if *p2.MaxBandwidth != 1<<30 || *p2.DowntimeLimit != 50 || *p2.MultifdChannels != 4 || *p2.CPUThrottleInitial != 30 ||
		!*p2.CPUThrottleTailslow || *p2.MaxPostcopyBandwidth != 1<<28 ||
		*p2.CPUThrottleIncrement != *p.CPUThrottleIncrement || *p2.AnnounceMax != *p.AnnounceMax {
		t.Fatalf("after set: %+v", p2)
	}
	if err := m.MigrateSetParameters(ctx, MigrationParameters{DowntimeLimit: Ptr[int64](-1)}); !errors.Is(err, ErrGenericError) {
		t.Fatalf("invalid parameter: %v", err)
	}

	caps, err := m.QueryMigrateCapabilities(ctx)
	if err != nil {
		t.Fatal(err)
	}
	cm := CapabilityMap(caps)
	for _, c := range []Capability{CapXBZRLE, CapAutoConverge, CapPostcopyRAM, CapPauseBeforeSwitchover, CapMultifd,
		CapReturnPath, CapPostcopyPreempt, CapZeroCopySend, CapLateBlockActivate, CapEvents, CapDirtyBitmaps} {
		if on, ok := cm[c]; !ok || on {
			t.Fatalf("capability %s: present=%v on=%v", c, ok, on)
		}
	}
	setCaps(t, vm, CapPauseBeforeSwitchover, CapMultifd)
	caps, err = m.QueryMigrateCapabilities(ctx)
	if err != nil {
		t.Fatal(err)
	}
	cm = CapabilityMap(caps)
	if !cm[CapPauseBeforeSwitchover] || !cm[CapMultifd] || cm[CapXBZRLE] {
		t.Fatalf("capabilities after set: %v", cm)
	}

	info, err := m.QueryMigrate(ctx)
	if err != nil || info.Status != "" || info.CurrentStatus() != MigrationStatusNone || info.RAM != nil {
		t.Fatalf("idle query-migrate: %+v %v", info, err)
	}

	// Dirty-rate measurement (page sampling works under TCG).
	if err := m.Cont(ctx); err != nil {
		t.Fatal(err)
	}
	if err := m.CalcDirtyRate(ctx, 1, DirtyRateOptions{SamplePages: 256, Mode: DirtyRateModePageSampling}); err != nil {
		t.Fatal(err)
	}
	for {
		dr, err := m.QueryDirtyRate(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if dr.Status == DirtyRateStatusMeasured {
			if dr.DirtyRate == nil || dr.CalcTime != 1 || dr.SamplePages != 256 || dr.Mode != DirtyRateModePageSampling {
				t.Fatalf("dirty rate: %+v", dr)
			}
			break
		}
		// Right after calc-dirty-rate the thread may not have started yet.
		if dr.Status != DirtyRateStatusMeasuring && dr.Status != DirtyRateStatusUnstarted {
			t.Fatalf("dirty rate status %q", dr.Status)
		}
		time.Sleep(50 * time.Millisecond)
	}

	if err := m.AnnounceSelf(ctx, AnnounceParameters{Initial: 50, Max: 550, Rounds: 1, Step: 100}); err != nil {
		t.Fatal(err)
	}
	if err := m.SystemPowerdown(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := events.Wait(ctx, "POWERDOWN", nil); err != nil {
		t.Fatalf("POWERDOWN: %v", err)
	}

	if err := m.Quit(ctx); err != nil {
		t.Fatal(err)
	}
	ev, err := events.Wait(ctx, EventShutdown, nil)
	if err != nil {
		t.Fatalf("SHUTDOWN: %v", err)
	}
	if sd, err := ev.AsShutdown(); err != nil || sd.Guest || sd.Reason != "host-qmp-quit" {
		t.Fatalf("SHUTDOWN data %+v %v", sd, err)
	}
	select {
	case <-m.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("monitor did not notice QEMU exiting")
	}
	if !errors.Is(m.Err(), ErrDisconnected) {
		t.Fatalf("Err after quit: %v", m.Err())
	}
	if _, err := m.QueryStatus(ctx); !errors.Is(err, ErrClosed) {
		t.Fatalf("call after quit: %v", err)
	}
	select {
	case <-vm.exited:
	case <-time.After(5 * time.Second):
		t.Fatal("QEMU did not exit after quit")
	}
}

// startIncoming sets capabilities on dst, starts listening on an
// ephemeral port and returns the port QEMU picked.
func startIncoming(t *testing.T, dst *qemuVM) string {
	t.Helper()
	ctx := context.Background()
	st, err := dst.mon.QueryStatus(ctx)
	if err != nil || st.Status != RunStateInMigrate {
		t.Fatalf("destination status %+v %v", st, err)
	}
	if err := dst.mon.MigrateIncoming(ctx, "tcp:127.0.0.1:0"); err != nil {
		t.Fatal(err)
	}
	info, err := dst.mon.QueryMigrate(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("destination query-migrate after migrate-incoming: %+v", info)
	if len(info.SocketAddress) == 0 || info.SocketAddress[0].Type != "inet" || info.SocketAddress[0].Port == "" || info.SocketAddress[0].Port == "0" {
		t.Fatalf("destination socket-address %+v", info.SocketAddress)
	}
	return info.SocketAddress[0].Port
}

func TestQEMULiveMigration(t *testing.T) {
	t.Parallel()
	src := startQEMU(t, "src", true)
	dst := startQEMU(t, "dst", false, "-incoming", "defer") // no -S: autostarts
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()

	if err := src.mon.Cont(ctx); err != nil {
		t.Fatal(err)
	}
	src.waitStatus(t, RunStateRunning)
	setCaps(t, src, CapEvents, CapXBZRLE)
	setCaps(t, dst, CapEvents)
	srcEvents := src.mon.Subscribe(EventMigration, EventMigrationPass, EventStop)
	dstEvents := dst.mon.Subscribe(EventMigration, EventResume)
	port := startIncoming(t, dst)

	if err := src.mon.Migrate(ctx, "tcp:127.0.0.1:"+port, MigrateOptions{}); err != nil {
		t.Fatal(err)
	}
	info, raw := src.waitMigration(t, MigrationStatusCompleted)
	saveTestdata(t, "query-migrate-7.2.json", raw)
	if info.RAM == nil || info.RAM.Total != 64<<20+info.RAM.Total%(64<<20) || info.RAM.Transferred <= 0 || info.RAM.Remaining != 0 ||
		info.RAM.PageSize != 4096 || info.Downtime == nil || info.TotalTime == nil || info.SetupTime == nil || info.XBZRLECache == nil {
		t.Fatalf("completed query-migrate: %s", raw)
	}
	t.Logf("source completed: total %d ms, downtime %d ms, %d bytes at %.0f Mbps",
		*info.TotalTime, *info.Downtime, info.RAM.Transferred, info.RAM.Mbps)

	srcSeen, srcAll := drainMigration(t, "source", srcEvents)
	dstSeen, dstAll := drainMigration(t, "destination", dstEvents)
	t.Logf("MIGRATION events: source %v, destination %v", srcSeen, dstSeen)
	var passes []int64
	var stopped bool
	for _, ev := range srcAll {
		if p, err := ev.AsMigrationPass(); err == nil {
			passes = append(passes, p.Pass)
		}
		stopped = stopped || ev.Name == EventStop
	}
	if len(passes) == 0 || passes[0] != 1 || !stopped {
		t.Fatalf("source MIGRATION_PASS passes %v, STOP seen %v", passes, stopped)
	}
	if !containsInOrder(srcSeen, []MigrationStatus{MigrationStatusSetup, MigrationStatusActive, MigrationStatusCompleted}) {
		t.Fatalf("source MIGRATION events %v", srcSeen)
	}
	if !containsInOrder(dstSeen, []MigrationStatus{MigrationStatusActive, MigrationStatusCompleted}) {
		t.Fatalf("destination MIGRATION events %v", dstSeen)
	}

	// Source was running, so the destination (no -S) resumes by itself.
	dst.waitStatus(t, RunStateRunning)
	resumed := false
	for _, ev := range dstAll {
		resumed = resumed || ev.Name == EventResume
	}
	if !resumed {
		if _, err := dstEvents.Wait(ctx, EventResume, nil); err != nil {
			t.Fatalf("destination RESUME: %v", err)
		}
	}
	src.waitStatus(t, RunStatePostMigrate)
	dinfo, err := dst.mon.QueryMigrate(ctx)
	if err != nil || dinfo.Status != MigrationStatusCompleted {
		t.Fatalf("destination query-migrate %+v %v", dinfo, err)
	}
}

func TestQEMUPauseBeforeSwitchover(t *testing.T) {
	t.Parallel()
	src := startQEMU(t, "src", true)
	dst := startQEMU(t, "dst", true, "-incoming", "defer") // -S: stays paused
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()

	if err := src.mon.Cont(ctx); err != nil {
		t.Fatal(err)
	}
	setCaps(t, src, CapEvents, CapPauseBeforeSwitchover, CapMultifd)
	setCaps(t, dst, CapEvents, CapMultifd)
	srcEvents := src.mon.Subscribe(EventMigration)
	dstEvents := dst.mon.Subscribe(EventMigration)
	port := startIncoming(t, dst)
	if err := src.mon.Migrate(ctx, "tcp:127.0.0.1:"+port, MigrateOptions{}); err != nil {
		t.Fatal(err)
	}

	info, raw := src.waitMigration(t, MigrationStatusPreSwitchover)
	saveTestdata(t, "query-migrate-7.2-pre-switchover.json", raw)
	srcRun, err := src.mon.QueryStatus(ctx)
	if err != nil {
		t.Fatal(err)
	}
	dstMig, err := dst.mon.QueryMigrate(ctx)
	if err != nil {
		t.Fatal(err)
	}
	dstRun, err := dst.mon.QueryStatus(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("at pre-switchover: source migration %q runstate %q; destination migration %q runstate %q",
		info.Status, srcRun.Status, dstMig.Status, dstRun.Status)
	if srcRun.Running || srcRun.Status != RunStateFinishMigrate {
		t.Fatalf("source at pre-switchover: %+v", srcRun)
	}
	if dstMig.Status != MigrationStatusActive || dstRun.Status != RunStateInMigrate {
		t.Fatalf("destination at pre-switchover: %q / %q", dstMig.Status, dstRun.Status)
	}
	// It stays there until told to continue.
	time.Sleep(100 * time.Millisecond)
	if again, err := src.mon.QueryMigrate(ctx); err != nil || again.Status != MigrationStatusPreSwitchover {
		t.Fatalf("left pre-switchover on its own: %+v %v", again, err)
	}

	if err := src.mon.MigrateContinue(ctx, MigrationStatusPreSwitchover); err != nil {
		t.Fatal(err)
	}
	done, _ := src.waitMigration(t, MigrationStatusCompleted)
	if done.RAM == nil || done.RAM.MultifdBytes == 0 {
		t.Fatalf("multifd migration without multifd bytes: %+v", done.RAM)
	}
	srcSeen, _ := drainMigration(t, "source", srcEvents)
	dstSeen, _ := drainMigration(t, "destination", dstEvents)
	t.Logf("MIGRATION events: source %v, destination %v", srcSeen, dstSeen)
	if !containsInOrder(srcSeen, []MigrationStatus{MigrationStatusSetup, MigrationStatusActive,
		MigrationStatusPreSwitchover, MigrationStatusDevice, MigrationStatusCompleted}) {
		t.Fatalf("source MIGRATION events %v", srcSeen)
	}

	// Destination started with -S: paused after migration until cont.
	dst.waitStatus(t, RunStatePaused)
	if err := dst.mon.Cont(ctx); err != nil {
		t.Fatal(err)
	}
	dst.waitStatus(t, RunStateRunning)
	src.waitStatus(t, RunStatePostMigrate)
}
