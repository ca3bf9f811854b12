package netdev_test

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"net"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/ferryvm/ferry/internal/netdev"
	"github.com/ferryvm/ferry/internal/netnsutil"
	"github.com/ferryvm/ferry/internal/netnsutil/nstest"
)

// TestQEMUAttachesToTap starts QEMU (no guest: machine "none") on a tap
// made by CreateTap, with the exact -netdev options the agent uses, and
// joins that tap through a QEMU hub to a unix datagram socket the test
// holds. Frames then flow both ways between the bridge and the test: an ARP
// request sent by the namespace's kernel reaches the test through QEMU,
// and a UDP packet the test injects reaches a socket in the namespace.
// Every address is inside the throwaway namespace.
func TestQEMUAttachesToTap(t *testing.T) {
	qemu, err := exec.LookPath("qemu-system-x86_64")
	if err != nil {
		t.Skip("qemu-system-x86_64 not installed")
	}
	help, _ := exec.Command(qemu, "-netdev", "help").Output()
	if !bytes.Contains(help, []byte("dgram")) {
		t.Skip("QEMU lacks the dgram netdev (needs QEMU 7.2 or later)")
	}
	ns := nstest.New(t)
	tap := netdev.TapName("qemu-attach", 0)
	const brIP, peerIP = "198.18.0.1", "198.18.0.77"

	inNS(t, ns, func() error {
		if err := netdev.CreateBridge("br0"); err != nil {
			return err
		}
		br, err := netlink.LinkByName("br0")
		if err != nil {
			return err
		}
		addr, _ := netlink.ParseAddr(brIP + "/15")
		if err := netlink.AddrAdd(br, addr); err != nil {
			return fmt.Errorf("address br0: %w", err)
		}
		return netdev.CreateTap(tap, "br0", 0)
	})
	if carrier(t, ns, tap) {
		t.Fatal("tap has carrier before QEMU attached")
	}

	dir := t.TempDir()
	qemuSock, testSock := filepath.Join(dir, "q.sock"), filepath.Join(dir, "t.sock")
	frames, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: testSock, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { frames.Close() })

	var logBuf syncBuffer
	cmd := netnsutil.Command(ns, qemu, "-M", "none", "-nodefaults", "-no-user-config", "-display", "none",
		"-netdev", "tap,id=n0,ifname="+tap+",script=no,downscript=no,vhost=off",
		"-netdev", "dgram,id=d0,local.type=unix,local.path="+qemuSock+",remote.type=unix,remote.path="+testSock,
		"-netdev", "hubport,id=p0,hubid=0,netdev=n0",
		"-netdev", "hubport,id=p1,hubid=0,netdev=d0")
	cmd.Stdout, cmd.Stderr = &logBuf, &logBuf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	stopQEMU := func() {
		select {
		case <-exited:
			return
		default:
		}
		_ = cmd.Process.Kill() // the PID we started
		<-exited
	}
	t.Cleanup(stopQEMU)

	deadline := time.Now().Add(5 * time.Second)
	for !carrier(t, ns, tap) {
		select {
		case <-exited:
			t.Fatalf("QEMU exited before attaching to %s:\n%s", tap, logBuf.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("QEMU did not attach to %s within 5s:\n%s", tap, logBuf.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	inNS(t, ns, func() error { checkTap(t, tap, "br0", 1500); return nil })

	// Bridge -> tap -> QEMU: the kernel's ARP request for peerIP.
	udp, err := netnsutil.ListenPacket(ns, "udp4", brIP+":0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { udp.Close() })
	peer := &net.UDPAddr{IP: net.ParseIP(peerIP), Port: 9}
	brMAC := waitForARP(t, frames, udp, peer)

	// QEMU -> tap -> bridge: a UDP datagram from peerIP to the listener.
	port := udp.LocalAddr().(*net.UDPAddr).Port
	frame := udpFrame(brMAC, net.HardwareAddr{0x02, 0, 0, 0, 0, 0x77},
		net.ParseIP(peerIP).To4(), net.ParseIP(brIP).To4(), 4000, uint16(port), []byte("hello from qemu"))
	if _, err := frames.WriteToUnix(frame, &net.UnixAddr{Name: qemuSock, Net: "unixgram"}); err != nil {
		t.Fatalf("inject frame into QEMU: %v", err)
	}
	buf := make([]byte, 1500)
	_ = udp.SetReadDeadline(time.Now().Add(5 * time.Second))
	n, from, err := udp.ReadFrom(buf)
	if err != nil {
		t.Fatalf("datagram injected through QEMU never arrived: %v\nQEMU log:\n%s", err, logBuf.String())
	}
	if got := string(buf[:n]); got != "hello from qemu" || !strings.HasPrefix(from.String(), peerIP+":") {
		t.Fatalf("got %q from %v", got, from)
	}

	// The tap outlives QEMU (persistent) and can then be deleted.
	stopQEMU()
	inNS(t, ns, func() error {
		if _, err := netlink.LinkByName(tap); err != nil {
			t.Errorf("tap vanished with QEMU: %v", err)
		}
		return netdev.DeleteTap(tap)
	})
}

// waitForARP sends datagrams to peer from inside the namespace until the
// resulting ARP request arrives on frames, and returns its sender MAC.
func waitForARP(t *testing.T, frames *net.UnixConn, udp net.PacketConn, peer *net.UDPAddr) net.HardwareAddr {
	t.Helper()
	buf := make([]byte, 65536)
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		if _, err := udp.WriteTo([]byte("ping"), peer); err != nil {
			t.Fatalf("send to %v inside the namespace: %v", peer, err)
		}
		_ = frames.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
		for {
			n, _, err := frames.ReadFromUnix(buf)
			if err != nil {
				break // timeout: send again
			}
			f := buf[:n]
			// Ethernet + ARP request (op 1) whose target IP is peer.
			if n >= 42 && binary.BigEndian.Uint16(f[12:14]) == 0x0806 &&
				binary.BigEndian.Uint16(f[20:22]) == 1 && net.IP(f[38:42]).Equal(peer.IP) {
				return net.HardwareAddr(append([]byte(nil), f[22:28]...))
			}
		}
	}
	t.Fatal("no ARP request reached QEMU through the tap within 5s")
	return nil
}

// carrier reports whether link name in ns has its lower layer up, which a
// tap has only while a process holds it open.
func carrier(t *testing.T, ns, name string) bool {
	t.Helper()
	var up bool
	inNS(t, ns, func() error {
		link, err := netlink.LinkByName(name)
		if err != nil {
			return err
		}
		up = link.Attrs().RawFlags&unix.IFF_LOWER_UP != 0
		return nil
	})
	return up
}

// udpFrame builds an Ethernet/IPv4/UDP frame (UDP checksum 0: none).
func udpFrame(dst, src net.HardwareAddr, srcIP, dstIP net.IP, sport, dport uint16, payload []byte) []byte {
	f := make([]byte, 14+20+8+len(payload))
	copy(f[0:6], dst)
	copy(f[6:12], src)
	binary.BigEndian.PutUint16(f[12:14], 0x0800)
	ip := f[14:34]
	ip[0] = 0x45
	binary.BigEndian.PutUint16(ip[2:4], uint16(20+8+len(payload)))
	binary.BigEndian.PutUint16(ip[6:8], 0x4000) // DF
	ip[8], ip[9] = 64, 17
	copy(ip[12:16], srcIP)
	copy(ip[16:20], dstIP)
	var sum uint32
	for i := 0; i < 20; i += 2 {
		sum += uint32(binary.BigEndian.Uint16(ip[i : i+2]))
	}
	for sum > 0xffff {
		sum = sum&0xffff + sum>>16
	}
	binary.BigEndian.PutUint16(ip[10:12], ^uint16(sum))
	u := f[34:42]
	binary.BigEndian.PutUint16(u[0:2], sport)
	binary.BigEndian.PutUint16(u[2:4], dport)
	binary.BigEndian.PutUint16(u[4:6], uint16(8+len(payload)))
	copy(f[42:], payload)
	return f
}

// syncBuffer is a bytes.Buffer safe for QEMU's output goroutines.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
