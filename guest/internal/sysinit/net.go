//go:build linux

package sysinit

import (
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"os"
	"time"

	"golang.org/x/sys/unix"
)

// ConfigureNet brings lo up, waits up to wait for ifname to appear, assigns
// it addr (with prefix length), brings it up and, if gw is valid, adds a
// default route via gw.
func ConfigureNet(ifname string, addr netip.Prefix, gw netip.Addr, wait time.Duration) error {
	if lo, err := net.InterfaceByName("lo"); err == nil {
		if err := linkUp(lo.Index); err != nil {
			return fmt.Errorf("lo up: %w", err)
		}
	}
	if !addr.IsValid() {
		return nil
	}
	var ifc *net.Interface
	deadline := time.Now().Add(wait)
	for {
		var err error
		if ifc, err = net.InterfaceByName(ifname); err == nil {
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s did not appear within %v (virtio-net device attached? virtio_net loaded?)", ifname, wait)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err := addrAdd(ifc.Index, addr); err != nil && err != unix.EEXIST {
		return fmt.Errorf("add %v to %s: %w", addr, ifname, err)
	}
	if err := linkUp(ifc.Index); err != nil {
		return fmt.Errorf("%s up: %w", ifname, err)
	}
	if gw.IsValid() {
		if err := defaultRouteAdd(ifc.Index, gw); err != nil && err != unix.EEXIST {
			return fmt.Errorf("default route via %v: %w", gw, err)
		}
	}
	return nil
}

// --- minimal rtnetlink ---

var ne = binary.NativeEndian

func nlAttr(b []byte, typ uint16, data []byte) []byte {
	l := unix.SizeofRtAttr + len(data)
	hdr := make([]byte, unix.SizeofRtAttr)
	ne.PutUint16(hdr[0:2], uint16(l))
	ne.PutUint16(hdr[2:4], typ)
	b = append(b, hdr...)
	b = append(b, data...)
	for len(b)%4 != 0 {
		b = append(b, 0)
	}
	return b
}

// nlRequest sends one rtnetlink request and waits for its ack.
func nlRequest(typ, flags uint16, body []byte) error {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_ROUTE)
	if err != nil {
		return os.NewSyscallError("socket", err)
	}
	defer unix.Close(fd)
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return os.NewSyscallError("bind", err)
	}
	msg := make([]byte, unix.SizeofNlMsghdr, unix.SizeofNlMsghdr+len(body))
	msg = append(msg, body...)
	ne.PutUint32(msg[0:4], uint32(len(msg)))
	ne.PutUint16(msg[4:6], typ)
	ne.PutUint16(msg[6:8], flags|unix.NLM_F_REQUEST|unix.NLM_F_ACK)
	ne.PutUint32(msg[8:12], 1) // seq
	ne.PutUint32(msg[12:16], 0)
	if err := unix.Sendto(fd, msg, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return os.NewSyscallError("sendto", err)
	}
	buf := make([]byte, 8192)
	for {
		n, _, err := unix.Recvfrom(fd, buf, 0)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return os.NewSyscallError("recvfrom", err)
		}
		for b := buf[:n]; len(b) >= unix.SizeofNlMsghdr; {
			l := int(ne.Uint32(b[0:4]))
			t := ne.Uint16(b[4:6])
			if l < unix.SizeofNlMsghdr || l > len(b) {
				return fmt.Errorf("netlink: bad message length %d", l)
			}
			if t == unix.NLMSG_ERROR {
				if l < unix.SizeofNlMsghdr+4 {
					return fmt.Errorf("netlink: short error message")
				}
				if e := int32(ne.Uint32(b[16:20])); e != 0 {
					return unix.Errno(-e)
				}
				return nil
			}
			al := (l + 3) &^ 3
			if al > len(b) {
				break
			}
			b = b[al:]
		}
	}
}

func linkUp(index int) error {
	body := make([]byte, unix.SizeofIfInfomsg)
	body[0] = unix.AF_UNSPEC
	ne.PutUint32(body[4:8], uint32(index))
	ne.PutUint32(body[8:12], unix.IFF_UP)  // flags
	ne.PutUint32(body[12:16], unix.IFF_UP) // change mask
	return nlRequest(unix.RTM_NEWLINK, 0, body)
}

func addrAdd(index int, p netip.Prefix) error {
	body := make([]byte, unix.SizeofIfAddrmsg)
	body[0] = unix.AF_INET
	body[1] = byte(p.Bits())
	body[3] = unix.RT_SCOPE_UNIVERSE
	ne.PutUint32(body[4:8], uint32(index))
	a := p.Addr().As4()
	body = nlAttr(body, unix.IFA_LOCAL, a[:])
	body = nlAttr(body, unix.IFA_ADDRESS, a[:])
	if p.Bits() < 31 {
		bc := a
		m := ^uint32(0) >> p.Bits()
		v := binary.BigEndian.Uint32(bc[:]) | m
		binary.BigEndian.PutUint32(bc[:], v)
		body = nlAttr(body, unix.IFA_BROADCAST, bc[:])
	}
	return nlRequest(unix.RTM_NEWADDR, unix.NLM_F_CREATE|unix.NLM_F_EXCL, body)
}

func defaultRouteAdd(index int, gw netip.Addr) error {
	body := make([]byte, unix.SizeofRtMsg)
	body[0] = unix.AF_INET
	body[1] = 0 // dst_len
	body[4] = unix.RT_TABLE_MAIN
	body[5] = unix.RTPROT_BOOT
	body[6] = unix.RT_SCOPE_UNIVERSE
	body[7] = unix.RTN_UNICAST
	g := gw.As4()
	body = nlAttr(body, unix.RTA_GATEWAY, g[:])
	oif := make([]byte, 4)
	ne.PutUint32(oif, uint32(index))
	body = nlAttr(body, unix.RTA_OIF, oif)
	return nlRequest(unix.RTM_NEWROUTE, unix.NLM_F_CREATE|unix.NLM_F_EXCL, body)
}
