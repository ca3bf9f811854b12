package netdev

import (
	"errors"
	"fmt"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"
)

// MaxNameLen is the longest network interface name Linux accepts.
const MaxNameLen = unix.IFNAMSIZ - 1

func validIfName(kind, name string) error {
	if name == "" || len(name) > MaxNameLen {
		return fmt.Errorf("invalid %s name %q: must be 1-%d characters", kind, name, MaxNameLen)
	}
	for _, r := range name {
		if r == '/' || r == ':' || r <= ' ' || r == 0x7f {
			return fmt.Errorf("invalid %s name %q: no '/', ':', spaces or control characters", kind, name)
		}
	}
	if name == "." || name == ".." {
		return fmt.Errorf("invalid %s name %q", kind, name)
	}
	return nil
}

func isNotFound(err error) bool {
	var nf netlink.LinkNotFoundError
	return errors.As(err, &nf) || errors.Is(err, unix.ENODEV)
}

// BridgeExists reports whether a bridge called name exists in the current
// namespace. A link of that name that is not a bridge is an error.
func BridgeExists(name string) (bool, error) {
	if err := validIfName("bridge", name); err != nil {
		return false, err
	}
	link, err := netlink.LinkByName(name)
	if isNotFound(err) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("look up bridge %q: %w", name, err)
	}
	if _, ok := link.(*netlink.Bridge); !ok {
		return false, fmt.Errorf("link %q is a %s, not a bridge: pass the name of a bridge", name, link.Type())
	}
	return true, nil
}

// lookupBridge returns the bridge called name, with the error message the
// agent shows when the configured bridge is missing.
func lookupBridge(name string) (*netlink.Bridge, error) {
	if err := validIfName("bridge", name); err != nil {
		return nil, err
	}
	link, err := netlink.LinkByName(name)
	if isNotFound(err) {
		return nil, fmt.Errorf("bridge %q not found on this host: create it or pass --bridge", name)
	}
	if err != nil {
		return nil, fmt.Errorf("look up bridge %q: %w", name, err)
	}
	br, ok := link.(*netlink.Bridge)
	if !ok {
		return nil, fmt.Errorf("link %q is a %s, not a bridge: create a bridge or pass --bridge", name, link.Type())
	}
	return br, nil
}

// CreateBridge creates a bridge called name (or adopts an existing one),
// turns STP off, sets its forward delay to 0 so new ports forward at once,
// pins its MAC address (so ports joining never change it) and sets it up.
// It assigns no IP address.
func CreateBridge(name string) error {
	ok, err := BridgeExists(name)
	if err != nil {
		return err
	}
	if !ok {
		if err := netlink.LinkAdd(&netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: name}}); err != nil && !errors.Is(err, unix.EEXIST) {
			return fmt.Errorf("create bridge %q: %w (needs CAP_NET_ADMIN: run as root)", name, err)
		}
	}
	br, err := lookupBridge(name)
	if err != nil {
		return err
	}
	if err := setBridgeNoDelay(br.Attrs().Index); err != nil {
		return fmt.Errorf("configure bridge %q: %w", name, err)
	}
	// Pin the bridge's MAC: a bridge whose address was never set takes the
	// lowest port MAC, so a VM tap joining would change the host's MAC
	// under its IP and strand every neighbour's ARP entry for seconds.
	if hw := br.Attrs().HardwareAddr; len(hw) == 6 {
		if err := netlink.LinkSetHardwareAddr(br, hw); err != nil {
			return fmt.Errorf("pin MAC of bridge %q: %w", name, err)
		}
	}
	if err := netlink.LinkSetUp(br); err != nil {
		return fmt.Errorf("set bridge %q up: %w", name, err)
	}
	return nil
}

// setBridgeNoDelay turns STP off and then sets forward_delay to 0 (the
// kernel refuses a delay below 2 s while STP is on). netlink.Bridge does
// not expose these attributes, so the request is built by hand.
func setBridgeNoDelay(index int) error {
	for _, attr := range []struct {
		typ  int
		name string
	}{
		{nl.IFLA_BR_STP_STATE, "stp_state"},
		{nl.IFLA_BR_FORWARD_DELAY, "forward_delay"},
	} {
		req := nl.NewNetlinkRequest(unix.RTM_NEWLINK, unix.NLM_F_ACK)
		msg := nl.NewIfInfomsg(unix.AF_UNSPEC)
		msg.Index = int32(index)
		req.AddData(msg)
		info := nl.NewRtAttr(unix.IFLA_LINKINFO, nil)
		info.AddRtAttr(nl.IFLA_INFO_KIND, nl.NonZeroTerminated("bridge"))
		data := info.AddRtAttr(nl.IFLA_INFO_DATA, nil)
		data.AddRtAttr(attr.typ, nl.Uint32Attr(0))
		req.AddData(info)
		if _, err := req.Execute(unix.NETLINK_ROUTE, 0); err != nil {
			return fmt.Errorf("set %s 0: %w", attr.name, err)
		}
	}
	return nil
}
