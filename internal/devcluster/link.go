package devcluster

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/ferryvm/ferry/internal/linkemu"
	"github.com/ferryvm/ferry/internal/netnsutil"
	"github.com/ferryvm/ferry/internal/revert"
)

// The link emulator of a host sits in the segment namespace between the
// host's veth end (named like the host, "h1") and the segment bridge:
//
//	P-h1: uplink ══ P-seg: h1  ⇄ forwarder ⇄  h1-em ══ h1-sg (on seg0)
//
// Inserting it takes h1 off seg0, adds the veth pair h1-em/h1-sg with h1-sg
// on seg0, switches offloads off on every link that transmits into the
// forwarder, and starts `ferry dev cluster link-forwarder` in P-seg
// (recorded like any other process, so Down stops it). ClearLink undoes
// all of it except the offload settings.

// LinkStartTimeout bounds the wait for a new forwarder's control socket.
const LinkStartTimeout = 10 * time.Second

// linkForwarderCmd is the hidden CLI command that runs a forwarder.
var linkForwarderCmd = []string{"dev", "cluster", "link-forwarder"}

func emuLink(h Host) string { return h.Name + "-em" }
func segLink(h Host) string { return h.Name + "-sg" }

// LinkControlPath is the control socket of host's link emulator.
func (c *Cluster) LinkControlPath(host string) string {
	return filepath.Join(c.Config.Dir, "links", host+".sock")
}

// LinkForwarderArgv is the command line Link starts for host h (after the
// binary).
func (c *Cluster) linkForwarderArgv(binary string, h Host, p linkemu.Params) ([]string, error) {
	b, err := json.Marshal(p)
	if err != nil {
		return nil, fmt.Errorf("encode link parameters: %w", err)
	}
	return append(append([]string{binary}, linkForwarderCmd...),
		"--a", h.Name, "--b", emuLink(h), "--control", c.LinkControlPath(h.Name), "--params", string(b)), nil
}

// linkProcess returns the recorded forwarder of host h, if any.
func (c *Cluster) linkProcess(h Host) (Process, bool, error) {
	st, err := readState(c.Config.Dir)
	if err != nil {
		return Process{}, false, err
	}
	for _, p := range st.Processes {
		if p.Netns == c.Segment && slices.Contains(p.Argv, c.LinkControlPath(h.Name)) && isRecorded(p) {
			return p, true, nil
		}
	}
	return Process{}, false, nil
}

// LinkStatus returns the status of host's link emulator; ok is false when
// none is inserted.
func (c *Cluster) LinkStatus(ctx context.Context, host string) (st linkemu.Status, ok bool, err error) {
	h, found := c.Host(host)
	if !found {
		return st, false, fmt.Errorf("dev cluster %q has no host %q", c.Config.Prefix, host)
	}
	if _, running, err := c.linkProcess(h); err != nil || !running {
		return st, false, err
	}
	st, err = linkemu.Get(ctx, c.LinkControlPath(h.Name))
	return st, err == nil, err
}

// Link shapes host's link to the segment in both directions: update is
// applied to the current parameters (zero when no emulator is inserted
// yet), and the emulator is inserted first if needed. binary is the ferry
// executable that runs the forwarder (default: this process's).
func (c *Cluster) Link(ctx context.Context, host, binary string, update func(*linkemu.Params)) (linkemu.Status, error) {
	h, found := c.Host(host)
	if !found {
		return linkemu.Status{}, fmt.Errorf("dev cluster %q has no host %q (hosts are h1..h%d)", c.Config.Prefix, host, len(c.Hosts))
	}
	cur, running, err := c.LinkStatus(ctx, h.Name)
	if running && err != nil {
		return linkemu.Status{}, err
	}
	p := cur.Params
	update(&p)
	if err := p.Validate(); err != nil {
		return linkemu.Status{}, err
	}
	if running {
		return linkemu.Set(ctx, c.LinkControlPath(h.Name), p)
	}
	if binary == "" {
		if binary, err = os.Executable(); err != nil {
			return linkemu.Status{}, fmt.Errorf("find ferry binary: %w", err)
		}
	}
	return c.insertLink(ctx, h, binary, p)
}

func (c *Cluster) insertLink(ctx context.Context, h Host, binary string, p linkemu.Params) (linkemu.Status, error) {
	fail := func(err error) (linkemu.Status, error) {
		return linkemu.Status{}, fmt.Errorf("insert link emulator for %s: %w", h.Name, err)
	}
	if err := os.MkdirAll(filepath.Dir(c.LinkControlPath(h.Name)), 0o755); err != nil {
		return fail(err)
	}
	argv, err := c.linkForwarderArgv(binary, h, p)
	if err != nil {
		return fail(err)
	}
	r := revert.New()
	defer r.Fail()
	if err := netnsutil.Do(h.Netns, func() error { return linkemu.DisableOffloads(HostUplink) }); err != nil {
		return fail(err)
	}
	err = netnsutil.Do(c.Segment, func() error {
		veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: emuLink(h)}, PeerName: segLink(h)}
		if err := netlink.LinkAdd(veth); err != nil {
			return fmt.Errorf("create veth %s <-> %s: %w", emuLink(h), segLink(h), err)
		}
		r.Add(func() { _ = netnsutil.Do(c.Segment, func() error { return deleteLink(emuLink(h)) }) })
		for _, name := range []string{h.Name, emuLink(h), segLink(h)} {
			if err := linkemu.DisableOffloads(name); err != nil {
				return err
			}
		}
		if err := enslaveUp(emuLink(h), ""); err != nil {
			return err
		}
		if err := enslaveUp(segLink(h), SegmentBridge); err != nil {
			return err
		}
		port, err := netlink.LinkByName(h.Name)
		if err != nil {
			return fmt.Errorf("find %s: %w", h.Name, err)
		}
		if err := netlink.LinkSetNoMaster(port); err != nil {
			return fmt.Errorf("take %s off %s: %w", h.Name, SegmentBridge, err)
		}
		r.Add(func() { _ = netnsutil.Do(c.Segment, func() error { return enslaveUp(h.Name, SegmentBridge) }) })
		return nil
	})
	if err != nil {
		return fail(err)
	}
	if err := c.waitLinksUp(ctx, c.Segment, emuLink(h), segLink(h)); err != nil {
		return fail(err)
	}
	pid, err := c.StartProcess(c.Segment, filepath.Join(c.Config.Dir, "logs", "link-"+h.Name+".log"), argv)
	if err != nil {
		return fail(err)
	}
	r.Add(func() { _ = c.stopRecorded(context.Background(), pid) })
	deadline := time.Now().Add(LinkStartTimeout)
	for {
		st, err := linkemu.Get(ctx, c.LinkControlPath(h.Name))
		if err == nil {
			r.Success()
			return st, nil
		}
		if !alive(pid) {
			return fail(fmt.Errorf("forwarder exited (see %s)", filepath.Join(c.Config.Dir, "logs", "link-"+h.Name+".log")))
		}
		if time.Now().After(deadline) {
			return fail(fmt.Errorf("forwarder not answering after %v: %w", LinkStartTimeout, err))
		}
		select {
		case <-ctx.Done():
			return fail(ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// ClearLink removes host's link emulator and plugs the host straight into
// the segment again. Without an emulator it does nothing.
func (c *Cluster) ClearLink(ctx context.Context, host string) error {
	h, found := c.Host(host)
	if !found {
		return fmt.Errorf("dev cluster %q has no host %q", c.Config.Prefix, host)
	}
	p, running, err := c.linkProcess(h)
	if err != nil {
		return err
	}
	if running {
		if err := c.stopRecorded(ctx, p.PID); err != nil {
			return fmt.Errorf("clear link emulator of %s: %w", h.Name, err)
		}
	}
	err = netnsutil.Do(c.Segment, func() error {
		if err := deleteLink(emuLink(h)); err != nil {
			return err
		}
		port, err := netlink.LinkByName(h.Name)
		if err != nil {
			return fmt.Errorf("find %s: %w", h.Name, err)
		}
		if port.Attrs().MasterIndex != 0 {
			return nil
		}
		return enslaveUp(h.Name, SegmentBridge)
	})
	if err != nil {
		return fmt.Errorf("clear link emulator of %s: %w", h.Name, err)
	}
	return nil
}

// deleteLink deletes link name (and a veth's peer); a missing link is fine.
func deleteLink(name string) error {
	link, err := netlink.LinkByName(name)
	if err != nil {
		var nf netlink.LinkNotFoundError
		if errors.As(err, &nf) {
			return nil
		}
		return fmt.Errorf("find %s: %w", name, err)
	}
	if err := netlink.LinkDel(link); err != nil {
		return fmt.Errorf("delete %s: %w", name, err)
	}
	return nil
}

// stopRecorded stops the recorded process pid and drops it from the state.
func (c *Cluster) stopRecorded(ctx context.Context, pid int) error {
	if left := stopPIDs(ctx, []int{pid}, map[int]bool{pid: true}); len(left) > 0 {
		return fmt.Errorf("process %d did not exit", pid)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	unlock, err := lockDir(c.Config.Dir)
	if err != nil {
		return err
	}
	defer unlock()
	st, err := readState(c.Config.Dir)
	if err != nil {
		return err
	}
	st.Processes = slices.DeleteFunc(st.Processes, func(p Process) bool { return p.PID == pid })
	return writeState(c.Config.Dir, st)
}

// waitLinksUp waits until the named links in namespace ns are operational.
func (c *Cluster) waitLinksUp(ctx context.Context, ns string, names ...string) error {
	deadline := time.Now().Add(ReadyTimeout)
	for _, name := range names {
		for {
			var up bool
			err := netnsutil.Do(ns, func() error {
				link, err := netlink.LinkByName(name)
				if err == nil {
					up = link.Attrs().OperState == netlink.OperUp
				}
				return err
			})
			if err != nil {
				return fmt.Errorf("wait for %s in %s: %w", name, ns, err)
			}
			if up {
				break
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("link %s in %s not up after %v", name, ns, ReadyTimeout)
			}
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(10 * time.Millisecond):
			}
		}
	}
	return nil
}
