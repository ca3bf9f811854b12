package devcluster

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/ferryvm/ferry/internal/netnsutil"
	"github.com/ferryvm/ferry/internal/netnsutil/nstest"
)

// testConfig returns a config with a unique short prefix and a temporary
// state directory, and registers a cleanup that tears the cluster down and
// removes any namespace left with that prefix.
func testConfig(t *testing.T, hosts int) Config {
	t.Helper()
	nstest.RequireRoot(t)
	b := make([]byte, 3)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	cfg := Config{Prefix: "fut" + hex.EncodeToString(b), Hosts: hosts, Dir: t.TempDir()}
	t.Cleanup(func() {
		if err := Down(context.Background(), cfg); err != nil {
			t.Errorf("cleanup Down: %v", err)
		}
		for _, ns := range prefixNamespaces(t, cfg.Prefix) {
			t.Errorf("namespace %s left behind", ns)
			nstest.Remove(t, ns)
		}
	})
	return cfg
}

// prefixNamespaces lists the namespaces whose names start with prefix-.
func prefixNamespaces(t *testing.T, prefix string) []string {
	t.Helper()
	out, err := exec.Command("ip", "netns", "list").Output()
	if err != nil {
		t.Fatalf("ip netns list: %v", err)
	}
	var found []string
	for _, line := range strings.Split(string(out), "\n") {
		if f := strings.Fields(line); len(f) > 0 && strings.HasPrefix(f[0], prefix+"-") {
			found = append(found, f[0])
		}
	}
	return found
}

// echoServer listens on addr inside ns and echoes one line per connection.
func echoServer(t *testing.T, ns, addr string) string {
	t.Helper()
	l, err := netnsutil.Listen(ns, "tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				line, _ := bufio.NewReader(c).ReadString('\n')
				fmt.Fprintf(c, "%s says %s", ns, line)
			}()
		}
	}()
	return l.Addr().String()
}

func exchange(t *testing.T, fromNS, addr, wantPrefix string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	c, err := netnsutil.DialContext(ctx, fromNS, "tcp", addr)
	if err != nil {
		t.Fatalf("dial %s from %s: %v", addr, fromNS, err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(3 * time.Second))
	fmt.Fprintf(c, "hello from %s\n", fromNS)
	got, err := bufio.NewReader(c).ReadString('\n')
	if want := wantPrefix + " says hello from " + fromNS + "\n"; err != nil || got != want {
		t.Fatalf("reply from %s to %s = %q, %v; want %q", addr, fromNS, got, err, want)
	}
}

func sysctl(t *testing.T, ns, key string) string {
	t.Helper()
	out, err := netnsutil.Command(ns, "sysctl", "-n", key).Output()
	if err != nil {
		t.Fatalf("sysctl %s in %s: %v", key, ns, err)
	}
	return strings.TrimSpace(string(out))
}

// waitInNS waits until pid lives in namespace ns.
func waitInNS(t *testing.T, pid int, ns string) {
	t.Helper()
	deadline := time.Now().Add(3 * time.Second)
	for {
		pids, err := netnsutil.PIDs(ns)
		if err != nil {
			t.Fatal(err)
		}
		if slices.Contains(pids, pid) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("process %d never appeared in %s", pid, ns)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestUpConnectivityAndDown(t *testing.T) {
	cfg := testConfig(t, 2)
	ctx := context.Background()
	c, err := Up(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	p := cfg.Prefix
	if want := []string{p + "-seg", p + "-h1", p + "-h2", p + "-client"}; !slices.Equal(c.Namespaces(), want) {
		t.Fatalf("namespaces %v, want %v", c.Namespaces(), want)
	}
	if h := c.Hosts[1]; h.Name != "h2" || h.Netns != p+"-h2" || h.IP != "198.18.0.2" || h.Bridge != "br0" {
		t.Fatalf("host 2 = %+v", h)
	}

	// TCP on 198.18.0.2 inside h2, reached from h1 and from the client.
	addr := echoServer(t, c.Hosts[1].Netns, "198.18.0.2:0")
	exchange(t, c.Hosts[0].Netns, addr, c.Hosts[1].Netns)
	exchange(t, c.Client, addr, c.Hosts[1].Netns)
	// And the client's address from a host.
	clientAddr := echoServer(t, c.Client, ClientIP+":0")
	exchange(t, c.Hosts[0].Netns, clientAddr, c.Client)

	// Only the connected /15, no default route, and the sysctls.
	for _, ns := range c.Namespaces() {
		err := netnsutil.Do(ns, func() error {
			routes, err := netlink.RouteList(nil, netlink.FAMILY_V4)
			if err != nil {
				return err
			}
			for _, r := range routes {
				if r.Dst == nil || r.Dst.String() != Subnet {
					t.Errorf("%s has route %v; want only %s", ns, r, Subnet)
				}
			}
			if ns != c.Segment && len(routes) != 1 {
				t.Errorf("%s has %d IPv4 routes, want 1", ns, len(routes))
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		for _, key := range []string{"net.ipv4.ip_forward", "net.ipv4.conf.all.rp_filter", "net.ipv4.conf.default.rp_filter"} {
			if v := sysctl(t, ns, key); v != "0" {
				t.Errorf("%s: %s = %s, want 0", ns, key, v)
			}
		}
	}
	for ns, br := range map[string]string{c.Segment: SegmentBridge, c.Hosts[0].Netns: HostBridge} {
		out, err := netnsutil.Command(ns, "ip", "-d", "link", "show", br).CombinedOutput()
		if err != nil || !strings.Contains(string(out), "forward_delay 0 ") || !strings.Contains(string(out), "stp_state 0 ") {
			t.Errorf("%s/%s not a zero-delay bridge without STP: %v\n%s", ns, br, err, out)
		}
	}

	// A recorded daemon, and an unrecorded process like a QEMU an agent
	// would start.
	logPath := filepath.Join(cfg.Dir, "sleep.log")
	pid, err := c.StartProcess(c.Hosts[0].Netns, logPath, []string{"sleep", "300"})
	if err != nil {
		t.Fatal(err)
	}
	waitInNS(t, pid, c.Hosts[0].Netns)
	procs, err := c.Processes()
	if err != nil || len(procs) != 1 || procs[0].PID != pid || !slices.Equal(procs[0].Argv, []string{"sleep", "300"}) || procs[0].StartTime == 0 {
		t.Fatalf("recorded processes %+v, %v", procs, err)
	}
	if info, err := readProc(pid); err != nil || info.pgrp != pid {
		t.Errorf("daemon is not in its own session/group: %+v %v", info, err)
	}
	stray := netnsutil.Command(c.Hosts[1].Netns, "sleep", "301")
	if err := stray.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { _ = stray.Wait() }()
	t.Cleanup(func() { killIfStill(stray.Process.Pid, "sleep", "301") })
	waitInNS(t, stray.Process.Pid, c.Hosts[1].Netns)

	if l, err := Load(cfg.Dir); err != nil || !slices.Equal(l.Namespaces(), c.Namespaces()) {
		t.Fatalf("Load: %v", err)
	}

	start := time.Now()
	if err := c.Down(ctx); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("Down took %v", d)
	}
	for _, p := range []int{pid, stray.Process.Pid} {
		if alive(p) {
			t.Errorf("process %d survived Down", p)
		}
	}
	if left := prefixNamespaces(t, cfg.Prefix); len(left) > 0 {
		t.Errorf("namespaces left after Down: %v", left)
	}
	if _, err := os.Stat(c.StatePath()); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("state file still there: %v", err)
	}
	if _, err := Load(cfg.Dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("Load after Down = %v, want not-exist", err)
	}
	if err := Down(ctx, cfg); err != nil {
		t.Errorf("second Down: %v", err)
	}
}

// killIfStill SIGKILLs pid if it still runs argv (a process the test
// started and Down should already have stopped).
func killIfStill(pid int, argv ...string) {
	if cmd, err := readCmdline(pid); err == nil && slices.Equal(cmd, argv) {
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
}

func TestDownAfterCrash(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		name  string
		crash func(t *testing.T, cfg Config)
	}{
		{"process entry lost", func(t *testing.T, cfg Config) {
			st, err := readState(cfg.Dir)
			if err != nil {
				t.Fatal(err)
			}
			st.Processes = nil
			if err := writeState(cfg.Dir, st); err != nil {
				t.Fatal(err)
			}
		}},
		{"state file lost", func(t *testing.T, cfg Config) {
			if err := os.Remove(statePath(cfg.Dir)); err != nil {
				t.Fatal(err)
			}
		}},
		{"state file corrupt", func(t *testing.T, cfg Config) {
			if err := os.WriteFile(statePath(cfg.Dir), []byte("{garbage"), 0o644); err != nil {
				t.Fatal(err)
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			cfg := testConfig(t, 1)
			c, err := Up(ctx, cfg)
			if err != nil {
				t.Fatal(err)
			}
			pid, err := c.StartProcess(c.Hosts[0].Netns, "", []string{"sleep", "300"})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { killIfStill(pid, "sleep", "300") })
			waitInNS(t, pid, c.Hosts[0].Netns)
			if _, err := os.Stat(filepath.Join(cfg.Dir, "logs", c.Hosts[0].Netns+"-sleep.log")); err != nil {
				t.Errorf("default log: %v", err)
			}
			tc.crash(t, cfg)

			if tc.name == "state file corrupt" {
				// Without a prefix Down cannot know what to clean.
				noPrefix := Config{Dir: cfg.Dir}
				if err := Down(ctx, noPrefix); err == nil || !strings.Contains(err.Error(), "parse dev cluster state") {
					t.Fatalf("Down with corrupt state and no prefix = %v", err)
				}
			}
			if err := Down(ctx, cfg); err != nil {
				t.Fatal(err)
			}
			if tc.name == "state file corrupt" {
				if _, err := os.Stat(statePath(cfg.Dir) + ".corrupt"); err != nil {
					t.Errorf("corrupt state not moved aside: %v", err)
				}
			}
			if alive(pid) {
				t.Errorf("process %d survived Down", pid)
			}
			if left := prefixNamespaces(t, cfg.Prefix); len(left) > 0 {
				t.Errorf("namespaces left: %v", left)
			}
		})
	}
}

func TestDownHalfMadeCluster(t *testing.T) {
	cfg := testConfig(t, 1)
	// As if Up crashed before writing any state: namespaces exist, a
	// process runs in one, and a namespace of a different prefix that
	// merely starts with ours must be left alone.
	for _, ns := range []string{cfg.Prefix + "-seg", cfg.Prefix + "-h3"} {
		if err := netnsutil.Add(ns); err != nil {
			t.Fatal(err)
		}
	}
	other := cfg.Prefix + "-x-seg"
	if err := netnsutil.Add(other); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nstest.Remove(t, other) })
	sleeper := netnsutil.Command(cfg.Prefix+"-h3", "sleep", "302")
	if err := sleeper.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { _ = sleeper.Wait() }()
	t.Cleanup(func() { killIfStill(sleeper.Process.Pid, "sleep", "302") })
	waitInNS(t, sleeper.Process.Pid, cfg.Prefix+"-h3")

	if _, err := Up(context.Background(), cfg); err == nil || !strings.Contains(err.Error(), "already exists") {
		t.Fatalf("Up over leftovers = %v, want 'already exists'", err)
	}
	if err := Down(context.Background(), cfg); err != nil {
		t.Fatal(err)
	}
	if alive(sleeper.Process.Pid) {
		t.Error("process in a leftover namespace survived Down")
	}
	if left := prefixNamespaces(t, cfg.Prefix); !slices.Equal(left, []string{other}) {
		t.Errorf("namespaces after Down = %v, want only %s", left, other)
	}
}

func TestUpRollsBackOnFailure(t *testing.T) {
	cfg := testConfig(t, 2)
	boom := errors.New("injected failure")
	upHook = func(ns string) error {
		if ns == cfg.Prefix+"-h2" {
			return boom
		}
		return nil
	}
	t.Cleanup(func() { upHook = nil })
	if _, err := Up(context.Background(), cfg); !errors.Is(err, boom) {
		t.Fatalf("Up = %v, want injected failure", err)
	}
	if left := prefixNamespaces(t, cfg.Prefix); len(left) > 0 {
		t.Errorf("namespaces left after failed Up: %v", left)
	}
	if _, err := os.Stat(statePath(cfg.Dir)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("state file left after failed Up: %v", err)
	}
}

func TestUpRefusesRunningCluster(t *testing.T) {
	cfg := testConfig(t, 1)
	c, err := Up(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Up(context.Background(), cfg); err == nil || !strings.Contains(err.Error(), "already up") {
		t.Fatalf("second Up = %v, want 'already up'", err)
	}
	// The first cluster is intact.
	addr := echoServer(t, c.Hosts[0].Netns, "198.18.0.1:0")
	exchange(t, c.Client, addr, c.Hosts[0].Netns)

	if _, err := c.StartProcess("elsewhere", "", []string{"sleep", "1"}); err == nil {
		t.Error("StartProcess accepted a foreign namespace")
	}
	if _, err := c.StartProcess(c.Client, "", nil); err == nil {
		t.Error("StartProcess accepted an empty argv")
	}
	if err := Down(context.Background(), Config{Prefix: "other", Dir: cfg.Dir}); err == nil {
		t.Error("Down with a prefix that does not match the state file succeeded")
	}
}

func TestDownSparesReusedPID(t *testing.T) {
	cfg := testConfig(t, 1)
	if _, err := Up(context.Background(), cfg); err != nil {
		t.Fatal(err)
	}
	// A process outside the cluster whose PID the state file claims for
	// another command line, as after PID reuse.
	bystander := exec.Command("sleep", "303")
	if err := bystander.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { _ = bystander.Wait(); close(done) }()
	t.Cleanup(func() { _ = bystander.Process.Kill(); <-done })
	st, err := readState(cfg.Dir)
	if err != nil {
		t.Fatal(err)
	}
	st.Processes = append(st.Processes, Process{PID: bystander.Process.Pid, Netns: cfg.Prefix + "-h1", Argv: []string{"ferry", "agent"}})
	if err := writeState(cfg.Dir, st); err != nil {
		t.Fatal(err)
	}
	if err := Down(context.Background(), cfg); err != nil {
		t.Fatal(err)
	}
	select {
	case <-done:
		t.Fatal("Down killed a process whose command line did not match the record")
	default:
	}
}

// TestIsRecordedAfterEnv: a daemon restarted as `env VAR=... ferry ...`
// (the e2e tests' failpoint restarts) is recognised once env exec'd, so
// Down stops it; a process running a different command is not.
func TestIsRecordedAfterEnv(t *testing.T) {
	sleep, err := exec.LookPath("sleep")
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("env", "FERRY_TEST_MARK=1", sleep, "301")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	t.Cleanup(func() { _ = cmd.Process.Kill(); <-done })
	pid := cmd.Process.Pid
	deadline := time.Now().Add(5 * time.Second)
	for { // until env has exec'd sleep
		if c, err := readCmdline(pid); err == nil && len(c) > 0 && c[0] == sleep {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("env did not exec sleep within 5s")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if !isRecorded(Process{PID: pid, Argv: []string{"env", "FERRY_TEST_MARK=1", sleep, "301"}}) {
		t.Error("a process started through env is not recognised after env exec'd")
	}
	if isRecorded(Process{PID: pid, Argv: []string{"env", "FERRY_TEST_MARK=1", sleep, "302"}}) {
		t.Error("a process with other arguments is recognised")
	}
	if got := AfterEnv([]string{"env", "A=1", "B=2"}); got != nil {
		t.Errorf("AfterEnv of an env with no command = %v, want nil", got)
	}
}

func TestConfigValidation(t *testing.T) {
	for _, cfg := range []Config{
		{Prefix: "bad/prefix"},
		{Prefix: "-lead"},
		{Prefix: strings.Repeat("p", 33)},
		{Prefix: "ok", Hosts: MaxHosts + 1},
		{Prefix: "ok", Hosts: -1},
	} {
		if _, err := Up(context.Background(), cfg); err == nil {
			t.Errorf("Up(%+v) succeeded", cfg)
		}
	}
	got, err := Config{}.withDefaults()
	if err != nil || got.Prefix != DefaultPrefix || got.Hosts != DefaultHosts || got.Dir != DefaultDir(DefaultPrefix) {
		t.Errorf("defaults = %+v, %v", got, err)
	}
}

func TestString(t *testing.T) {
	c := newCluster(Config{Prefix: "ferry", Hosts: 2, Dir: "/run/ferry-dev/ferry"})
	s := c.String()
	for _, want := range []string{"ferry-seg", "ferry-h2", "198.18.0.2 on br0 (host h2)", "198.18.0.250 on eth0 (client)"} {
		if !strings.Contains(s, want) {
			t.Errorf("String() lacks %q:\n%s", want, s)
		}
	}
}

// TestCrashHelper is not a test: TestDownAfterUpCrashed runs the test
// binary with it to have Up die half-way, leaving no chance to undo.
func TestCrashHelper(t *testing.T) {
	prefix, dir := os.Getenv("FERRY_DEVCLUSTER_CRASH_PREFIX"), os.Getenv("FERRY_DEVCLUSTER_CRASH_DIR")
	if prefix == "" {
		t.Skip("helper process for TestDownAfterUpCrashed")
	}
	upHook = func(ns string) error {
		if ns == prefix+"-h2" {
			os.Exit(3)
		}
		return nil
	}
	_, err := Up(context.Background(), Config{Prefix: prefix, Hosts: 3, Dir: dir})
	t.Fatalf("Up returned %v instead of crashing", err)
}

func TestDownAfterUpCrashed(t *testing.T) {
	cfg := testConfig(t, 3)
	cmd := exec.Command(os.Args[0], "-test.run=^TestCrashHelper$")
	cmd.Env = append(os.Environ(), "FERRY_DEVCLUSTER_CRASH_PREFIX="+cfg.Prefix, "FERRY_DEVCLUSTER_CRASH_DIR="+cfg.Dir)
	out, err := cmd.CombinedOutput()
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.ExitCode() != 3 {
		t.Fatalf("helper did not crash as planned: %v\n%s", err, out)
	}
	if left := prefixNamespaces(t, cfg.Prefix); len(left) != 3 {
		t.Fatalf("after the crash, namespaces %v; want seg, h1, h2", left)
	}
	if _, err := Load(cfg.Dir); err == nil {
		t.Error("Load accepted a half-made cluster")
	}
	if _, err := Up(context.Background(), cfg); err == nil {
		t.Error("Up over a crashed cluster succeeded")
	}
	if err := Down(context.Background(), cfg); err != nil {
		t.Fatal(err)
	}
	if left := prefixNamespaces(t, cfg.Prefix); len(left) > 0 {
		t.Errorf("namespaces left: %v", left)
	}
	if _, err := os.Stat(statePath(cfg.Dir)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("state file left: %v", err)
	}
}
