package e2e

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net"
	"os"
	"os/exec"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ferryvm/ferry/internal/devcluster"
	"github.com/ferryvm/ferry/internal/linkemu"
	"github.com/ferryvm/ferry/internal/netnsutil"
)

// TestLinkEmulator shapes h1's link with `ferry dev cluster link` and
// measures it with real TCP between the namespaces h1 and h2: asked 20 ms
// one-way delay and 48 MiB/s, the round trip h1↔h2 (which crosses h1's
// link twice) must be ≈40 ms and the rate within 10 %; --down stops
// traffic, --up restores it with the same shaping, --clear removes it.
func TestLinkEmulator(t *testing.T) {
	b := make([]byte, 3)
	_, _ = rand.Read(b)
	cfg := devcluster.Config{Prefix: "fl" + hex.EncodeToString(b), Hosts: 2, Dir: t.TempDir()}
	c, err := devcluster.Up(ctxT(t, time.Minute), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := c.Down(context.Background()); err != nil {
			t.Errorf("down: %v", err)
		}
	})
	h1, _ := c.Host("h1")
	h2, _ := c.Host("h2")
	link := func(args ...string) string {
		t.Helper()
		out, err := exec.Command(ferryBin, append([]string{"dev", "cluster", "link", "h1", "--dir", cfg.Dir}, args...)...).CombinedOutput()
		if err != nil {
			t.Fatalf("ferry dev cluster link h1 %v: %v\n%s", args, err, out)
		}
		return string(out)
	}

	// An echo server in h2; the client dials from h1.
	l, err := netnsutil.Listen(h2.Netns, "tcp", h2.IP+":7000")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		for {
			conn, err := l.Accept()
			if err != nil {
				return
			}
			go func() { defer conn.Close(); _, _ = io.Copy(conn, conn) }()
		}
	}()
	base := medianRTT(t, h1.Netns, h2.IP+":7000", 10)
	t.Logf("RTT without emulator: %v", base)

	out := link("--delay", "20ms", "--rate", "48MiB")
	t.Logf("%s", out)
	rtt := medianRTT(t, h1.Netns, h2.IP+":7000", 20)
	t.Logf("RTT asked 2×20ms: measured median %v", rtt)
	if math.Abs(float64(rtt-40*time.Millisecond)) > float64(4*time.Millisecond) {
		t.Errorf("RTT %v, want 40ms ± 10%%", rtt)
	}

	// Rate: h1 sends to a sink in h2 for 5 s; count what arrives in the
	// last 3.5 s (after slow start).
	fwd := forwarderPID(t, c)
	sink, err := netnsutil.Listen(h2.Netns, "tcp", h2.IP+":7001")
	if err != nil {
		t.Fatal(err)
	}
	defer sink.Close()
	type result struct {
		bytes int64
		dur   time.Duration
		err   error
	}
	res := make(chan result, 1)
	var cpu0 float64
	var wire0 uint64
	go func() {
		conn, err := sink.Accept()
		if err != nil {
			res <- result{err: err}
			return
		}
		defer conn.Close()
		buf := make([]byte, 256<<10)
		start := time.Now()
		var counted int64
		var t1 time.Time
		for {
			n, err := conn.Read(buf)
			if time.Since(start) >= 1500*time.Millisecond {
				if t1.IsZero() {
					t1 = time.Now()
					cpu0 = procCPU(fwd)
					wire0 = linkDelivered(t, c)
				} else {
					counted += int64(n)
				}
			}
			if err != nil {
				res <- result{bytes: counted, dur: time.Since(t1)}
				return
			}
		}
	}()
	conn, err := netnsutil.Dial(h1.Netns, "tcp", h2.IP+":7001")
	if err != nil {
		t.Fatal(err)
	}
	chunk := make([]byte, 256<<10)
	end := time.Now().Add(5 * time.Second)
	for time.Now().Before(end) {
		if _, err := conn.Write(chunk); err != nil {
			t.Fatal(err)
		}
	}
	conn.Close()
	r := <-res
	if r.err != nil {
		t.Fatal(r.err)
	}
	cpu := procCPU(fwd) - cpu0
	wire := linkDelivered(t, c) - wire0
	goodput := float64(r.bytes) / r.dur.Seconds()
	wireRate := float64(wire) / r.dur.Seconds()
	const asked = 48 << 20
	t.Logf("rate asked 48 MiB/s: TCP goodput %.1f MiB/s (%.1f%%), frames on the emulated link %.1f MiB/s (%.1f%%); forwarder CPU %.2fs in %.2fs = %.0f%% of a core",
		goodput/(1<<20), 100*goodput/asked, wireRate/(1<<20), 100*wireRate/asked, cpu, r.dur.Seconds(), 100*cpu/r.dur.Seconds())
	// The link may never carry more than asked (5 % for the window's
	// edges); it carries less when TCP's window, halved at each tail drop,
	// leaves it idle for a moment, and more so on a busy machine (one CI
	// run under the rest of the suite: 93 %), hence −15 %. TCP's goodput
	// is the link's frames less headers (about 4 %): well below that, TCP
	// was retransmitting or stalling on the emulator.
	if wireRate > 1.05*asked || wireRate < 0.85*asked {
		t.Errorf("link rate %.1f MiB/s, want 48 MiB/s −15 %%/+5 %%", wireRate/(1<<20))
	}
	if goodput > wireRate || goodput < 0.90*wireRate {
		t.Errorf("TCP goodput %.1f MiB/s on a link that carried %.1f MiB/s of frames: want 90–100 %% of it", goodput/(1<<20), wireRate/(1<<20))
	}

	// Down: nothing passes; up: back with the same shaping.
	link("--down")
	if d, err := rttOnce(h1.Netns, h2.IP+":7000", 2*time.Second); err == nil {
		t.Errorf("link down but a round trip took %v", d)
	}
	link("--up")
	if rtt := medianRTT(t, h1.Netns, h2.IP+":7000", 5); math.Abs(float64(rtt-40*time.Millisecond)) > float64(4*time.Millisecond) {
		t.Errorf("after --up RTT %v, want 40ms ± 10%% (shaping kept)", rtt)
	}

	// Loss and jitter: 2 % of UDP datagrams h1→h2 lost (one crossing of the
	// link), round trips spread over 40 ms ± 2×5 ms.
	link("--loss", "2%", "--jitter", "5ms")
	st0, rcvErr0 := linkStatus(t, c), udpRcvbufErrors(t, h2.Netns)
	const sent = 4000
	got := udpReceived(t, h1.Netns, h2.Netns, h2.IP+":7002", sent)
	st1, rcvErr1 := linkStatus(t, c), udpRcvbufErrors(t, h2.Netns)
	out0, out1 := st0.Stats[linkemu.AToB], st1.Stats[linkemu.AToB]
	frames, drawn, full := out1.Frames-out0.Frames, out1.DroppedLoss-out0.DroppedLoss, out1.DroppedFull-out0.DroppedFull
	hostDrops := int(rcvErr1 - rcvErr0)
	// What the link lost is what h2 neither received nor dropped itself: a
	// receiving socket that overflowed while the shared machine was busy is
	// h2's loss, counted by h2's kernel, not the link's.
	linkLost := float64(sent-got-hostDrops) / sent
	t.Logf("loss asked 2%%: %d of %d UDP datagrams arrived, %d dropped by h2's full socket buffer: the link lost %.2f%%; the emulator saw %d frames, drew loss for %d (%.2f%%), tail-dropped %d, write errors %d",
		got, sent, hostDrops, 100*linkLost, frames, drawn, 100*float64(drawn)/float64(max(frames, 1)), full, st1.WriteErrors-st0.WriteErrors)
	if linkLost < 0.01 || linkLost > 0.03 {
		t.Errorf("the link lost %.2f%% of UDP datagrams, want 2%% ± 1%%", 100*linkLost)
	}
	link("--loss", "0%")
	rtts := jitterSamples(t, h1.Netns, h2.IP+":7000", 40)
	lo, hi := rtts[0], rtts[len(rtts)-1]
	p5, p95 := rtts[len(rtts)*5/100], rtts[len(rtts)*95/100]
	t.Logf("jitter asked 5ms each way: round trips %v..%v, 5th..95th percentile %v..%v", lo, hi, p5, p95)
	// The emulator can never make a round trip shorter than 2×(20−5) ms, so
	// the floor is hard. The ceiling is the emulator's 2×(20+5) ms plus this
	// shared 2-core machine's scheduling: a stray slow round trip (53 ms in
	// one CI run) is the host's, not the emulator's, so the 95th percentile
	// carries the bound.
	if lo < 29*time.Millisecond || p95 > 52*time.Millisecond || p95-p5 < 3*time.Millisecond {
		t.Errorf("round trips %v..%v (5th..95th percentile %v..%v), want at least 29 ms, 95th percentile at most 52 ms, and spread out", lo, hi, p5, p95)
	}
	link("--jitter", "0s")

	// Clear: the emulator and its links are gone, the host is plugged in
	// directly again.
	link("--clear")
	if alive(fwd) {
		t.Errorf("forwarder %d still running after --clear", fwd)
	}
	if rtt := medianRTT(t, h1.Netns, h2.IP+":7000", 5); rtt > 10*time.Millisecond {
		t.Errorf("after --clear RTT %v, want the direct link's (%v)", rtt, base)
	}
	links, err := netnsutil.Command(c.Segment, "ip", "-o", "link", "show").CombinedOutput()
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(links), "h1-em") || strings.Contains(string(links), "h1-sg") {
		t.Errorf("emulator links left after --clear:\n%s", links)
	}
}

// rttOnce dials addr from namespace ns and times one 1-byte echo.
func rttOnce(ns, addr string, timeout time.Duration) (time.Duration, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	conn, err := netnsutil.DialContext(ctx, ns, "tcp", addr)
	if err != nil {
		return 0, err
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(timeout))
	// Warm the connection (the handshake is one round trip of its own).
	start := time.Now()
	if _, err := conn.Write([]byte{1}); err != nil {
		return 0, err
	}
	if _, err := io.ReadFull(conn, make([]byte, 1)); err != nil {
		return 0, err
	}
	return time.Since(start), nil
}

// medianRTT measures n round trips of one byte on one connection.
func medianRTT(t *testing.T, ns, addr string, n int) time.Duration {
	t.Helper()
	conn, err := netnsutil.Dial(ns, "tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.(*net.TCPConn).SetNoDelay(true)
	_ = conn.SetDeadline(time.Now().Add(30 * time.Second))
	var ds []time.Duration
	buf := make([]byte, 1)
	for range n {
		start := time.Now()
		if _, err := conn.Write(buf); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(conn, buf); err != nil {
			t.Fatal(err)
		}
		ds = append(ds, time.Since(start))
		time.Sleep(10 * time.Millisecond)
	}
	sort.Slice(ds, func(i, j int) bool { return ds[i] < ds[j] })
	return ds[len(ds)/2]
}

// forwarderPID finds the recorded link forwarder's PID.
func forwarderPID(t *testing.T, c *devcluster.Cluster) int {
	t.Helper()
	ps, err := c.Processes()
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range ps {
		if slices.Contains(p.Argv, "link-forwarder") {
			return p.PID
		}
	}
	t.Fatal("no link-forwarder process recorded")
	return 0
}

// procCPU returns the user+system CPU seconds of pid.
func procCPU(pid int) float64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	ut, _ := strconv.ParseFloat(f[11], 64)
	st, _ := strconv.ParseFloat(f[12], 64)
	return (ut + st) / 100 // USER_HZ
}

// linkStatus is the status of h1's link emulator.
func linkStatus(t *testing.T, c *devcluster.Cluster) linkemu.Status {
	t.Helper()
	out, err := exec.Command(ferryBin, "dev", "cluster", "link", "h1", "--dir", c.Config.Dir, "--json").Output()
	if err != nil {
		t.Fatalf("link status: %v", err)
	}
	var st linkemu.Status
	if err := json.Unmarshal(out, &st); err != nil {
		t.Fatalf("link status: %v\n%s", err, out)
	}
	return st
}

// linkDelivered is the bytes the emulator delivered from h1 to the segment.
func linkDelivered(t *testing.T, c *devcluster.Cluster) uint64 {
	t.Helper()
	return linkStatus(t, c).Stats[linkemu.AToB].DeliveredB
}

// udpRcvbufErrors is namespace ns's count of UDP datagrams its kernel
// dropped because a receiving socket's buffer was full (Udp: RcvbufErrors
// in /proc/net/snmp).
func udpRcvbufErrors(t *testing.T, ns string) uint64 {
	t.Helper()
	out, err := netnsutil.Command(ns, "cat", "/proc/net/snmp").Output()
	if err != nil {
		t.Fatalf("read /proc/net/snmp in %s: %v", ns, err)
	}
	var names []string
	for line := range strings.Lines(string(out)) {
		f := strings.Fields(line)
		if len(f) == 0 || f[0] != "Udp:" {
			continue
		}
		if names == nil {
			names = f
			continue
		}
		for i, name := range names {
			if name == "RcvbufErrors" && i < len(f) {
				v, err := strconv.ParseUint(f[i], 10, 64)
				if err != nil {
					t.Fatalf("/proc/net/snmp in %s: RcvbufErrors %q: %v", ns, f[i], err)
				}
				return v
			}
		}
	}
	t.Fatalf("/proc/net/snmp in %s has no Udp RcvbufErrors:\n%s", ns, out)
	return 0
}

// udpReceived sends n datagrams from namespace src to addr in namespace dst,
// paced at about five per millisecond, and returns how many arrived.
func udpReceived(t *testing.T, src, dst, addr string, n int) int {
	t.Helper()
	pc, err := netnsutil.ListenPacket(dst, "udp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	if uc, ok := pc.(*net.UDPConn); ok {
		_ = uc.SetReadBuffer(4 << 20) // capped by net.core.rmem_max
	}
	got := make(chan int, 1)
	go func() {
		buf := make([]byte, 2048)
		count := 0
		for {
			_ = pc.SetReadDeadline(time.Now().Add(time.Second))
			if _, _, err := pc.ReadFrom(buf); err != nil {
				got <- count
				return
			}
			count++
		}
	}()
	conn, err := netnsutil.Dial(src, "udp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	payload := make([]byte, 200)
	for i := range n {
		if _, err := conn.Write(payload); err != nil {
			t.Fatal(err)
		}
		if i%5 == 4 {
			time.Sleep(time.Millisecond)
		}
	}
	return <-got
}

// jitterSamples returns n round trips, sorted shortest first.
func jitterSamples(t *testing.T, ns, addr string, n int) []time.Duration {
	t.Helper()
	conn, err := netnsutil.Dial(ns, "tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(30 * time.Second))
	buf := make([]byte, 1)
	rtts := make([]time.Duration, 0, n)
	for range n {
		start := time.Now()
		if _, err := conn.Write(buf); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(conn, buf); err != nil {
			t.Fatal(err)
		}
		rtts = append(rtts, time.Since(start))
		time.Sleep(5 * time.Millisecond)
	}
	slices.Sort(rtts)
	return rtts
}
