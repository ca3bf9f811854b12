package netdev_test

import (
	"strings"
	"testing"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/ferryvm/ferry/internal/netdev"
	"github.com/ferryvm/ferry/internal/netnsutil"
	"github.com/ferryvm/ferry/internal/netnsutil/nstest"
)

func TestTapName(t *testing.T) {
	a := netdev.TapName("vm-a", 0)
	if a != netdev.TapName("vm-a", 0) {
		t.Fatal("TapName is not deterministic")
	}
	if !strings.HasPrefix(a, "ft") || len(a) != 13 {
		t.Fatalf("TapName(vm-a, 0) = %q, want ft + 10 hex + index", a)
	}
	seen := map[string]bool{}
	for _, vm := range []string{"vm-a", "vm-b", strings.Repeat("x", 300)} {
		for _, idx := range []int{0, 1, 9, 10, 999, 1000, 123456, -1} {
			n := netdev.TapName(vm, idx)
			if len(n) > netdev.MaxNameLen {
				t.Errorf("TapName(%q, %d) = %q is longer than %d", vm, idx, n, netdev.MaxNameLen)
			}
			if seen[n] {
				t.Errorf("TapName(%q, %d) = %q collides", vm, idx, n)
			}
			seen[n] = true
		}
	}
}

// inNS runs fn inside ns and fails the test on error.
func inNS(t *testing.T, ns string, fn func() error) {
	t.Helper()
	if err := netnsutil.Do(ns, fn); err != nil {
		t.Fatal(err)
	}
}

func TestBridgeExistsAndCreateBridge(t *testing.T) {
	ns := nstest.New(t)
	inNS(t, ns, func() error {
		if ok, err := netdev.BridgeExists("br0"); ok || err != nil {
			t.Errorf("BridgeExists before create = %v, %v", ok, err)
		}
		if err := netdev.CreateBridge("br0"); err != nil {
			return err
		}
		if err := netdev.CreateBridge("br0"); err != nil {
			t.Errorf("second CreateBridge: %v", err)
		}
		if ok, err := netdev.BridgeExists("br0"); !ok || err != nil {
			t.Errorf("BridgeExists after create = %v, %v", ok, err)
		}
		if _, err := netdev.BridgeExists("lo"); err == nil || !strings.Contains(err.Error(), "not a bridge") {
			t.Errorf("BridgeExists(lo) error = %v, want 'not a bridge'", err)
		}
		link, err := netlink.LinkByName("br0")
		if err != nil {
			return err
		}
		if link.Attrs().Flags&unix.IFF_UP == 0 {
			t.Error("bridge is not up")
		}
		return nil
	})
	out, err := netnsutil.Command(ns, "ip", "-d", "link", "show", "br0").CombinedOutput()
	if err != nil {
		t.Fatalf("ip -d link: %v: %s", err, out)
	}
	for _, want := range []string{"forward_delay 0 ", "stp_state 0 "} {
		if !strings.Contains(string(out), want) {
			t.Errorf("bridge details lack %q:\n%s", want, out)
		}
	}
}

func TestCreateTapLifecycle(t *testing.T) {
	ns := nstest.New(t)
	tap := netdev.TapName("lifecycle", 0)
	inNS(t, ns, func() error {
		err := netdev.CreateTap(tap, "br-missing", 0)
		if err == nil || !strings.Contains(err.Error(), `bridge "br-missing" not found on this host: create it or pass --bridge`) {
			t.Errorf("CreateTap on missing bridge: %v", err)
		}
		if _, err := netlink.LinkByName(tap); err == nil {
			t.Error("tap was created although the bridge is missing")
		}

		for _, br := range []string{"br0", "br1"} {
			if err := netdev.CreateBridge(br); err != nil {
				return err
			}
		}
		if err := netdev.CreateTap(tap, "br0", 1400); err != nil {
			return err
		}
		checkTap(t, tap, "br0", 1400)
		if l, err := netlink.LinkByName(tap); err != nil || l.(*netlink.Tuntap).Flags&netlink.TUNTAP_VNET_HDR != 0 {
			t.Errorf("new tap has IFF_VNET_HDR set (or lookup failed: %v)", err)
		}
		out, err := netnsutil.Command(ns, "ip", "-d", "link", "show", tap).CombinedOutput()
		if err != nil || !strings.Contains(string(out), "tun type tap pi off vnet_hdr off persist on user root group root") {
			t.Errorf("tap details (want root-owned persistent tap without pi/vnet_hdr): %v\n%s", err, out)
		}
		if err := netdev.CreateTap(tap, "br0", 1400); err != nil {
			t.Errorf("CreateTap again on the same bridge: %v", err)
		}
		checkTap(t, tap, "br0", 1400)
		if err := netdev.CreateTap(tap, "br1", 0); err == nil || !strings.Contains(err.Error(), `exists on bridge "br0"`) {
			t.Errorf("CreateTap onto another bridge: %v", err)
		}

		// Not a tap: refuse to adopt or delete it.
		if err := netdev.CreateTap("br1", "br0", 0); err == nil || !strings.Contains(err.Error(), "not a tap") {
			t.Errorf("CreateTap over a bridge name: %v", err)
		}
		if err := netdev.DeleteTap("br1"); err == nil {
			t.Error("DeleteTap deleted a bridge")
		}
		if err := netdev.CreateTap("this-name-is-too-long", "br0", 0); err == nil {
			t.Error("CreateTap accepted a 21-character name")
		}

		// A tap on no bridge is adopted.
		loose := netdev.TapName("lifecycle", 1)
		if err := netdev.CreateTap(loose, "br0", 0); err != nil {
			return err
		}
		l, err := netlink.LinkByName(loose)
		if err != nil {
			return err
		}
		if err := netlink.LinkSetNoMaster(l); err != nil {
			return err
		}
		if err := netdev.CreateTap(loose, "br1", 0); err != nil {
			t.Errorf("CreateTap adopting an unbridged tap: %v", err)
		}
		checkTap(t, loose, "br1", 1500)

		for _, name := range []string{tap, loose} {
			if err := netdev.DeleteTap(name); err != nil {
				return err
			}
			if _, err := netlink.LinkByName(name); err == nil {
				t.Errorf("%s still exists after DeleteTap", name)
			}
			if err := netdev.DeleteTap(name); err != nil {
				t.Errorf("DeleteTap of an absent tap: %v", err)
			}
		}
		return nil
	})
}

// checkTap asserts that name is a persistent single-queue tap without
// packet info, on bridge, up, with the given MTU. (IFF_VNET_HDR is not
// checked: QEMU sets it when it attaches.)
func checkTap(t *testing.T, name, bridge string, mtu int) {
	t.Helper()
	link, err := netlink.LinkByName(name)
	if err != nil {
		t.Fatalf("tap %s: %v", name, err)
	}
	tap, ok := link.(*netlink.Tuntap)
	if !ok {
		t.Fatalf("%s is a %s, want tuntap", name, link.Type())
	}
	if tap.Mode != netlink.TUNTAP_MODE_TAP {
		t.Errorf("%s mode = %v, want tap", name, tap.Mode)
	}
	if tap.NonPersist {
		t.Errorf("%s is not persistent", name)
	}
	if tap.Flags&netlink.TUNTAP_MULTI_QUEUE != 0 {
		t.Errorf("%s is multi-queue", name)
	}
	if tap.Flags&netlink.TUNTAP_NO_PI == 0 {
		t.Errorf("%s carries packet info (IFF_NO_PI missing)", name)
	}
	if tap.Attrs().Flags&unix.IFF_UP == 0 {
		t.Errorf("%s is not up", name)
	}
	if tap.Attrs().MTU != mtu {
		t.Errorf("%s MTU = %d, want %d", name, tap.Attrs().MTU, mtu)
	}
	br, err := netlink.LinkByName(bridge)
	if err != nil {
		t.Fatal(err)
	}
	if tap.Attrs().MasterIndex != br.Attrs().Index {
		t.Errorf("%s master index = %d, want %s (%d)", name, tap.Attrs().MasterIndex, bridge, br.Attrs().Index)
	}
}
