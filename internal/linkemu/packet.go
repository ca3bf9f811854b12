package linkemu

import (
	"errors"
	"fmt"
	"net"
	"os"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// MaxFrame is the largest frame read: the MTU plus headers, with room for
// a VLAN tag. Longer frames (offloads left on) are truncated and counted.
const MaxFrame = 1600

// socketBuffer is the send and receive buffer of each packet socket.
const socketBuffer = 8 << 20

// packetConn is an AF_PACKET socket bound to one interface, seeing every
// frame the interface receives (promiscuous) but not those it sends.
type packetConn struct {
	name string
	f    *os.File
	rc   syscall.RawConn
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

// openPacket opens a packet socket on interface name in the calling
// thread's network namespace.
func openPacket(name string) (_ *packetConn, err error) {
	ifi, err := net.InterfaceByName(name)
	if err != nil {
		return nil, fmt.Errorf("find interface %s: %w", name, err)
	}
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, int(htons(unix.ETH_P_ALL)))
	if err != nil {
		return nil, fmt.Errorf("open packet socket for %s: %w (needs CAP_NET_RAW)", name, err)
	}
	defer func() {
		if err != nil {
			unix.Close(fd)
		}
	}()
	if err := unix.SetsockoptInt(fd, unix.SOL_PACKET, unix.PACKET_IGNORE_OUTGOING, 1); err != nil {
		return nil, fmt.Errorf("packet socket on %s: ignore outgoing: %w", name, err)
	}
	for _, o := range []int{unix.SO_RCVBUFFORCE, unix.SO_SNDBUFFORCE} {
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, o, socketBuffer); err != nil {
			return nil, fmt.Errorf("packet socket on %s: set buffer: %w", name, err)
		}
	}
	if err := unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_ALL), Ifindex: ifi.Index}); err != nil {
		return nil, fmt.Errorf("bind packet socket to %s: %w", name, err)
	}
	mreq := unix.PacketMreq{Ifindex: int32(ifi.Index), Type: unix.PACKET_MR_PROMISC}
	if err := unix.SetsockoptPacketMreq(fd, unix.SOL_PACKET, unix.PACKET_ADD_MEMBERSHIP, &mreq); err != nil {
		return nil, fmt.Errorf("set %s promiscuous: %w", name, err)
	}
	f := os.NewFile(uintptr(fd), "packet:"+name)
	rc, err := f.SyscallConn()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("packet socket on %s: %w", name, err)
	}
	return &packetConn{name: name, f: f, rc: rc}, nil
}

// read reads one frame into buf, waiting in the runtime's poller.
func (c *packetConn) read(buf []byte) (int, error) {
	var n int
	var rerr error
	err := c.rc.Read(func(fd uintptr) bool {
		n, _, rerr = unix.Recvfrom(int(fd), buf, unix.MSG_TRUNC)
		return !errors.Is(rerr, unix.EAGAIN)
	})
	if err != nil {
		return 0, fmt.Errorf("read from %s: %w", c.name, err)
	}
	if rerr != nil {
		return 0, fmt.Errorf("read from %s: %w", c.name, rerr)
	}
	return n, nil
}

// write sends one frame out of the interface.
func (c *packetConn) write(frame []byte) error {
	var werr error
	err := c.rc.Write(func(fd uintptr) bool {
		_, werr = unix.Write(int(fd), frame)
		return !errors.Is(werr, unix.EAGAIN)
	})
	if err != nil {
		return fmt.Errorf("write to %s: %w", c.name, err)
	}
	if werr != nil {
		return fmt.Errorf("write to %s: %w", c.name, werr)
	}
	return nil
}

func (c *packetConn) close() error { return c.f.Close() }

// ethtoolValue is struct ethtool_value.
type ethtoolValue struct {
	cmd  uint32
	data uint32
}

// ifreqData is struct ifreq with its ifr_data member.
type ifreqData struct {
	name [unix.IFNAMSIZ]byte
	data uintptr
	_    [16]byte
}

// offloads are the legacy ethtool settings DisableOffloads turns off, in an
// order that satisfies their dependencies (TSO needs SG needs checksums).
var offloads = []struct {
	cmd  uint32
	name string
}{
	{unix.ETHTOOL_SGRO, "generic-receive-offload"},
	{unix.ETHTOOL_SGSO, "generic-segmentation-offload"},
	{unix.ETHTOOL_STSO, "tcp-segmentation-offload"},
	{unix.ETHTOOL_SSG, "scatter-gather"},
	{unix.ETHTOOL_STXCSUM, "tx-checksumming"},
}

// DisableOffloads turns off receive coalescing, segmentation offloads,
// scatter-gather and transmit checksum offload on interface name in the
// calling thread's network namespace, so that what it sends is whole,
// checksummed frames no longer than its MTU (as `ethtool -K NAME gro off
// gso off tso off sg off tx off`).
func DisableOffloads(name string) error {
	if len(name) >= unix.IFNAMSIZ {
		return fmt.Errorf("disable offloads: interface name %q too long", name)
	}
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("disable offloads on %s: %w", name, err)
	}
	defer unix.Close(fd)
	for _, o := range offloads {
		v := ethtoolValue{cmd: o.cmd, data: 0}
		var ifr ifreqData
		copy(ifr.name[:], name)
		ifr.data = uintptr(unsafe.Pointer(&v))
		_, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), unix.SIOCETHTOOL, uintptr(unsafe.Pointer(&ifr)))
		if errno != 0 && errno != unix.EOPNOTSUPP {
			return fmt.Errorf("disable %s on %s: %w", o.name, name, errno)
		}
	}
	return nil
}
