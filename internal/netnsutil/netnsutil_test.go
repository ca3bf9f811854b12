package netnsutil_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"os"
	"runtime"
	"slices"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ferryvm/ferry/internal/netnsutil"
	"github.com/ferryvm/ferry/internal/netnsutil/nstest"
)

func threadNS(t *testing.T) netnsutil.ID {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Stat("/proc/thread-self/ns/net", &st); err != nil {
		t.Fatal(err)
	}
	return netnsutil.ID{Dev: st.Dev, Ino: st.Ino}
}

func TestAddDeleteExists(t *testing.T) {
	nstest.RequireRoot(t)
	name := nstest.UniqueName("ferry-ut")
	t.Cleanup(func() { nstest.Remove(t, name) })

	if netnsutil.Exists(name) {
		t.Fatalf("%s exists before Add", name)
	}
	if err := netnsutil.Add(name); err != nil {
		t.Fatal(err)
	}
	if !netnsutil.Exists(name) {
		t.Fatal("Exists = false after Add")
	}
	names, err := netnsutil.List()
	if err != nil || !slices.Contains(names, name) {
		t.Fatalf("List = %v, %v; want it to contain %s", names, err, name)
	}
	if err := netnsutil.Add(name); !errors.Is(err, fs.ErrExist) {
		t.Fatalf("second Add error = %v, want fs.ErrExist", err)
	}
	if _, err := netnsutil.Inode(name); err != nil {
		t.Fatal(err)
	}
	if err := netnsutil.Delete(name); err != nil {
		t.Fatal(err)
	}
	if netnsutil.Exists(name) {
		t.Fatal("Exists = true after Delete")
	}
	if err := netnsutil.Delete(name); err != nil {
		t.Fatalf("Delete of absent namespace: %v", err)
	}
	if err := netnsutil.Add("bad/name"); err == nil {
		t.Fatal("Add accepted a name with a slash")
	}
}

func TestDoSwitchesAndRestores(t *testing.T) {
	outer := nstest.New(t)
	inner := nstest.New(t)
	outerID, err := netnsutil.Inode(outer)
	if err != nil {
		t.Fatal(err)
	}
	innerID, err := netnsutil.Inode(inner)
	if err != nil {
		t.Fatal(err)
	}

	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	before := threadNS(t)

	var sawOuter, sawInner, backInOuter netnsutil.ID
	err = netnsutil.Do(outer, func() error {
		sawOuter = threadNS(t)
		if err := netnsutil.Do(inner, func() error {
			sawInner = threadNS(t)
			return nil
		}); err != nil {
			return err
		}
		backInOuter = threadNS(t)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if sawOuter != outerID || sawInner != innerID || backInOuter != outerID {
		t.Fatalf("namespaces seen: outer %v inner %v back %v; want %v %v %v",
			sawOuter, sawInner, backInOuter, outerID, innerID, outerID)
	}
	if after := threadNS(t); after != before {
		t.Fatalf("thread namespace after Do = %v, want %v", after, before)
	}

	boom := errors.New("boom")
	if err := netnsutil.Do(outer, func() error { return boom }); !errors.Is(err, boom) {
		t.Fatalf("Do error = %v, want fn's error", err)
	}
	if err := netnsutil.Do("ferry-ut-does-not-exist", func() error { return nil }); err == nil ||
		!strings.Contains(err.Error(), "ip netns add") {
		t.Fatalf("Do on missing namespace: %v", err)
	}
	if after := threadNS(t); after != before {
		t.Fatalf("thread namespace after failed Do = %v, want %v", after, before)
	}
}

func TestDialAndListenStayInNamespace(t *testing.T) {
	ns := nstest.New(t)
	l, err := netnsutil.Listen(ns, "tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	var accepted atomic.Int32
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			accepted.Add(1)
			go func() {
				defer c.Close()
				line, _ := bufio.NewReader(c).ReadString('\n')
				fmt.Fprintf(c, "echo %s", line)
			}()
		}
	}()

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := netnsutil.DialContext(ctx, ns, "tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(c, "hi\n")
	got, err := bufio.NewReader(c).ReadString('\n')
	c.Close()
	if err != nil || got != "echo hi\n" {
		t.Fatalf("reply %q, %v", got, err)
	}
	if n := accepted.Load(); n != 1 {
		t.Fatalf("accepted %d connections, want 1", n)
	}

	// The same address from the root namespace is a different loopback:
	// it must not reach the listener inside ns.
	if rc, err := net.DialTimeout("tcp", l.Addr().String(), time.Second); err == nil {
		rc.Close()
	}
	time.Sleep(50 * time.Millisecond)
	if n := accepted.Load(); n != 1 {
		t.Fatalf("a root-namespace dial reached the namespace's listener")
	}

	if _, err := netnsutil.DialContext(ctx, ns, "tcp", "localhost:80"); err == nil ||
		!strings.Contains(err.Error(), "IP literal") {
		t.Fatalf("dial with host name: %v, want IP literal error", err)
	}
}

func TestHTTPClient(t *testing.T) {
	ns := nstest.New(t)
	l, err := netnsutil.Listen(ns, "tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "hello from ns")
	})}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })

	client := netnsutil.HTTPClient(ns)
	client.Timeout = 5 * time.Second
	resp, err := client.Get("http://" + l.Addr().String() + "/")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if string(body) != "hello from ns" {
		t.Fatalf("body %q", body)
	}
}

func TestCommandAndPIDs(t *testing.T) {
	ns := nstest.New(t)
	id, err := netnsutil.Inode(ns)
	if err != nil {
		t.Fatal(err)
	}
	cmd := netnsutil.Command(ns, "readlink", "/proc/self/ns/net")
	if want := []string{"ip", "netns", "exec", ns, "readlink", "/proc/self/ns/net"}; !slices.Equal(cmd.Args, want) {
		t.Fatalf("argv %q, want %q", cmd.Args, want)
	}
	out, err := cmd.Output()
	if err != nil {
		t.Fatal(err)
	}
	if got, want := strings.TrimSpace(string(out)), fmt.Sprintf("net:[%d]", id.Ino); got != want {
		t.Fatalf("command ran in %s, want %s", got, want)
	}

	sleep := netnsutil.Command(ns, "sleep", "30")
	if err := sleep.Start(); err != nil {
		t.Fatal(err)
	}
	pid := sleep.Process.Pid
	t.Cleanup(func() {
		_ = syscall.Kill(pid, syscall.SIGKILL)
		_ = sleep.Wait()
	})
	deadline := time.Now().Add(3 * time.Second)
	for {
		pids, err := netnsutil.PIDs(ns)
		if err != nil {
			t.Fatal(err)
		}
		if slices.Contains(pids, pid) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("PIDs(%s) = %v, missing %d", ns, pids, pid)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if pids, _ := netnsutil.PIDs(ns); slices.Contains(pids, os.Getpid()) {
		t.Fatal("PIDs lists the caller")
	}
}
