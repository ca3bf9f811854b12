//go:build linux

package guestalive

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// etherRARP is the ethertype of QEMU's self-announcements: after a
// migration QEMU itself sends RARP frames from the guest's MAC, so they
// say nothing about the guest.
const etherRARP = 0x8035

// guestFrame reports whether a frame seen on a VM's tap was sent by the
// guest: not one the host sends towards the guest (PACKET_OUTGOING on the
// tap) and not QEMU's RARP announcement.
func guestFrame(pkttype uint8, frame []byte) bool {
	if pkttype == unix.PACKET_OUTGOING || len(frame) < 14 {
		return false
	}
	return binary.BigEndian.Uint16(frame[12:14]) != etherRARP
}

// FrameWatch counts the frames a VM's guest sends on its taps (see
// guestFrame), from when it was started.
type FrameWatch struct {
	n    atomic.Uint64
	stop atomic.Bool
	wg   sync.WaitGroup
	fds  []int
}

// WatchGuestFrames starts counting guest-sent frames on the named taps
// (in the caller's network namespace; needs CAP_NET_RAW). Close it.
func WatchGuestFrames(taps []string) (*FrameWatch, error) {
	w := &FrameWatch{}
	for _, tap := range taps {
		fd, err := openTap(tap)
		if err != nil {
			w.Close()
			return nil, err
		}
		w.fds = append(w.fds, fd)
		w.wg.Add(1)
		go w.read(fd)
	}
	return w, nil
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

func openTap(tap string) (int, error) {
	ifi, err := net.InterfaceByName(tap)
	if err != nil {
		return -1, fmt.Errorf("watch frames on %s: %w", tap, err)
	}
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, int(htons(unix.ETH_P_ALL)))
	if err != nil {
		return -1, fmt.Errorf("watch frames on %s: packet socket: %w", tap, err)
	}
	if err := unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_ALL), Ifindex: ifi.Index}); err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("watch frames on %s: bind: %w", tap, err)
	}
	// A short receive timeout lets the reader see Close.
	tv := unix.NsecToTimeval((50 * time.Millisecond).Nanoseconds())
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("watch frames on %s: receive timeout: %w", tap, err)
	}
	return fd, nil
}

func (w *FrameWatch) read(fd int) {
	defer w.wg.Done()
	buf := make([]byte, 64) // the header is enough; the rest is truncated
	for !w.stop.Load() {
		n, from, err := unix.Recvfrom(fd, buf, 0)
		if err != nil {
			if errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EINTR) {
				continue
			}
			return
		}
		if ll, ok := from.(*unix.SockaddrLinklayer); ok && guestFrame(ll.Pkttype, buf[:n]) {
			w.n.Add(1)
		}
	}
}

// Count is the number of guest-sent frames seen so far.
func (w *FrameWatch) Count() uint64 { return w.n.Load() }

// Close stops the watch and closes its sockets.
func (w *FrameWatch) Close() {
	w.stop.Store(true)
	w.wg.Wait()
	for _, fd := range w.fds {
		unix.Close(fd)
	}
	w.fds = nil
}
