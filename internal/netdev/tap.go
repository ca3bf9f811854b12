package netdev

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// TapName returns the tap device name for NIC index of the VM called
// vmName: "ft", the first 10 hex digits of sha256(vmName), and the index in
// decimal, e.g. "ft3a7bd3e2360". Names are at most 15 characters. Indexes
// outside 0-999 fold the index into the hash instead ("ft" + 13 hex).
func TapName(vmName string, index int) string {
	if index >= 0 && index <= 999 {
		sum := sha256.Sum256([]byte(vmName))
		return "ft" + hex.EncodeToString(sum[:])[:10] + strconv.Itoa(index)
	}
	sum := sha256.Sum256([]byte(vmName + "/" + strconv.Itoa(index)))
	return "ft" + hex.EncodeToString(sum[:])[:13]
}

// CreateTap creates a persistent tap device called name, attaches it to
// bridge and sets it up. mtu 0 means the bridge's MTU. The bridge must
// exist. If the tap already exists on that bridge (or on no bridge) it is
// reused, so retries are safe; a tap on another bridge is an error.
func CreateTap(name, bridge string, mtu int) error {
	if err := validIfName("tap", name); err != nil {
		return err
	}
	if mtu < 0 {
		return fmt.Errorf("create tap %q: invalid MTU %d", name, mtu)
	}
	br, err := lookupBridge(bridge)
	if err != nil {
		return fmt.Errorf("create tap %q: %w", name, err)
	}
	if mtu == 0 {
		mtu = br.Attrs().MTU
	}

	link, err := netlink.LinkByName(name)
	switch {
	case err == nil:
		return adoptTap(link, br, mtu)
	case !isNotFound(err):
		return fmt.Errorf("create tap %q: look up existing link: %w", name, err)
	}

	if err := newPersistentTap(name); err != nil {
		if errors.Is(err, unix.EEXIST) || errors.Is(err, unix.EBUSY) {
			// Created concurrently: adopt it if it is what we want.
			if link, lerr := netlink.LinkByName(name); lerr == nil {
				return adoptTap(link, br, mtu)
			}
		}
		return fmt.Errorf("create tap %q: %w", name, err)
	}
	link, err = netlink.LinkByName(name)
	if err == nil {
		err = configureTap(link, br, mtu)
	}
	if err != nil {
		if derr := netlink.LinkDel(&netlink.Tuntap{LinkAttrs: netlink.LinkAttrs{Name: name}}); derr != nil && !isNotFound(derr) {
			err = errors.Join(err, fmt.Errorf("remove half-made tap %q: %w", name, derr))
		}
		return fmt.Errorf("create tap %q: %w", name, err)
	}
	return nil
}

// newPersistentTap opens /dev/net/tun, creates the tap with TUNSETIFF
// (IFF_TUN_EXCL refuses an existing device), restricts attaching to root,
// and marks it persistent so it outlives the file descriptor. Until
// TUNSETPERSIST succeeds, closing the descriptor destroys the device.
func newPersistentTap(name string) error {
	fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("open /dev/net/tun: %w (load the tun module with `modprobe tun` and run as root)", err)
	}
	defer unix.Close(fd)
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		return fmt.Errorf("tap name: %w", err)
	}
	ifr.SetUint16(unix.IFF_TAP | unix.IFF_NO_PI | unix.IFF_TUN_EXCL)
	if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
		return fmt.Errorf("TUNSETIFF: %w", err)
	}
	// Owner and group root: only root (or CAP_NET_ADMIN) may attach. An
	// unowned persistent tap could be opened by any local user.
	if err := unix.IoctlSetInt(fd, unix.TUNSETOWNER, 0); err != nil {
		return fmt.Errorf("TUNSETOWNER: %w", err)
	}
	if err := unix.IoctlSetInt(fd, unix.TUNSETGROUP, 0); err != nil {
		return fmt.Errorf("TUNSETGROUP: %w", err)
	}
	if err := unix.IoctlSetInt(fd, unix.TUNSETPERSIST, 1); err != nil {
		return fmt.Errorf("TUNSETPERSIST: %w", err)
	}
	return nil
}

// adoptTap checks that an existing link is a tap QEMU can attach to and
// that it sits on br (or on no bridge), then configures it.
func adoptTap(link netlink.Link, br *netlink.Bridge, mtu int) error {
	name := link.Attrs().Name
	tap, ok := link.(*netlink.Tuntap)
	if !ok || tap.Mode != netlink.TUNTAP_MODE_TAP {
		return fmt.Errorf("create tap %q: a link of that name exists and is a %s, not a tap: delete it or choose another name",
			name, describe(link))
	}
	if tap.Flags&netlink.TUNTAP_MULTI_QUEUE != 0 {
		return fmt.Errorf("create tap %q: it exists as a multi-queue tap, which a single-queue QEMU netdev cannot attach to: delete it with DeleteTap and retry", name)
	}
	if m := tap.Attrs().MasterIndex; m != 0 && m != br.Attrs().Index {
		master := strconv.Itoa(m)
		if ml, err := netlink.LinkByIndex(m); err == nil {
			master = ml.Attrs().Name
		}
		return fmt.Errorf("create tap %q: it exists on bridge %q, not %q: delete it with DeleteTap and retry",
			name, master, br.Attrs().Name)
	}
	if err := configureTap(link, br, mtu); err != nil {
		return fmt.Errorf("create tap %q: %w", name, err)
	}
	return nil
}

func describe(link netlink.Link) string {
	if tap, ok := link.(*netlink.Tuntap); ok && tap.Mode == netlink.TUNTAP_MODE_TUN {
		return "tun device"
	}
	return link.Type()
}

// configureTap sets the MTU, enslaves the tap to br and sets it up.
func configureTap(link netlink.Link, br *netlink.Bridge, mtu int) error {
	if link.Attrs().MTU != mtu {
		if err := netlink.LinkSetMTU(link, mtu); err != nil {
			return fmt.Errorf("set MTU %d: %w", mtu, err)
		}
	}
	if link.Attrs().MasterIndex != br.Attrs().Index {
		if err := netlink.LinkSetMaster(link, br); err != nil {
			return fmt.Errorf("attach to bridge %q: %w", br.Attrs().Name, err)
		}
	}
	if err := netlink.LinkSetUp(link); err != nil {
		return fmt.Errorf("set up: %w", err)
	}
	return nil
}

// DeleteTap removes the tap device called name. A missing device is not an
// error; a link of that name that is not a tap is refused and left alone.
func DeleteTap(name string) error {
	if err := validIfName("tap", name); err != nil {
		return err
	}
	link, err := netlink.LinkByName(name)
	if isNotFound(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("delete tap %q: look it up: %w", name, err)
	}
	if tap, ok := link.(*netlink.Tuntap); !ok || tap.Mode != netlink.TUNTAP_MODE_TAP {
		return fmt.Errorf("delete tap %q: the link of that name is a %s, not a tap: refusing to delete it", name, describe(link))
	}
	if err := netlink.LinkDel(link); err != nil && !isNotFound(err) {
		return fmt.Errorf("delete tap %q: %w", name, err)
	}
	return nil
}
