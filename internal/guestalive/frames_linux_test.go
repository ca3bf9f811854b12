//go:build linux

package guestalive

import (
	"net"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func TestGuestFrame(t *testing.T) {
	frame := func(ethertype uint16) []byte {
		f := make([]byte, 60)
		f[12], f[13] = byte(ethertype>>8), byte(ethertype)
		return f
	}
	for _, tt := range []struct {
		name    string
		pkttype uint8
		frame   []byte
		want    bool
	}{
		{"guest ARP", unix.PACKET_BROADCAST, frame(0x0806), true},
		{"guest IPv4", unix.PACKET_HOST, frame(0x0800), true},
		{"QEMU's RARP announcement", unix.PACKET_BROADCAST, frame(etherRARP), false},
		{"host to guest", unix.PACKET_OUTGOING, frame(0x0800), false},
		{"runt", unix.PACKET_HOST, []byte{1, 2, 3}, false},
	} {
		if got := guestFrame(tt.pkttype, tt.frame); got != tt.want {
			t.Errorf("%s: guestFrame = %v, want %v", tt.name, got, tt.want)
		}
	}
}

// TestWatchGuestFramesOnLoopback counts real frames: a UDP datagram on
// lo shows up as an outgoing and an incoming frame; only the incoming one
// (what a tap receives from its guest) counts.
func TestWatchGuestFramesOnLoopback(t *testing.T) {
	w, err := WatchGuestFrames([]string{"lo"})
	if err != nil {
		t.Fatalf("WatchGuestFrames(lo): %v (needs CAP_NET_RAW)", err)
	}
	defer w.Close()
	l, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	c, err := net.DialUDP("udp", nil, l.LocalAddr().(*net.UDPAddr))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	deadline := time.Now().Add(5 * time.Second)
	for w.Count() == 0 {
		if time.Now().After(deadline) {
			t.Fatal("no frame counted on lo within 5s of sending datagrams")
		}
		c.Write([]byte("ping"))
		time.Sleep(10 * time.Millisecond)
	}
	if _, err := WatchGuestFrames([]string{"fr-none-0"}); err == nil {
		t.Error("WatchGuestFrames on a missing interface: want an error")
	}
}
