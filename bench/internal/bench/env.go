package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"time"

	"github.com/ferryvm/ferry/internal/devcluster"
	"github.com/ferryvm/ferry/internal/netnsutil"
)

// Env is the shared test bed: one dev cluster with two hosts and Ferry's
// daemons, reused by every system and run.
type Env struct {
	Cluster *devcluster.Cluster
	Src     devcluster.Host // h1
	Dst     devcluster.Host // h2
	// Dir is the benchmark's scratch directory (short paths: unix sockets).
	Dir string
	// FerryBin is the ferry binary; GuestDir holds vmlinuz and initrd.img.
	FerryBin, GuestDir string
	// shapedMiBps is the current host-to-host rate limit (0 = none).
	shapedMiBps float64
}

// upEnv tears down a leftover cluster of the same prefix (ours, from a
// crashed run), brings up a 2-host cluster and starts Ferry in it (TCG, as
// for the other systems).
// allow are the directories the agents let the benchmark's VM specs name
// files in (the guest, the work directory).
func upEnv(ctx context.Context, prefix, stateDir, ferryBin string, allow ...string) (*devcluster.Cluster, error) {
	cfg := devcluster.Config{Prefix: prefix, Hosts: 2, Dir: stateDir}
	if err := devcluster.Down(ctx, cfg); err != nil {
		return nil, fmt.Errorf("remove leftovers of an earlier benchmark cluster %q: %w", prefix, err)
	}
	c, err := devcluster.Up(ctx, cfg)
	if err != nil {
		return nil, err
	}
	if err := c.StartFerry(ctx, devcluster.FerryOptions{Binary: ferryBin, Accel: "tcg", AllowPaths: allow}); err != nil {
		_ = c.Down(context.Background())
		return nil, fmt.Errorf("start ferry in the benchmark cluster: %w", err)
	}
	return c, nil
}

// Shape limits host-to-host IP traffic (each host's address to the other
// host's) to mibps MiB/s on every host's uplink with an HTB class; all
// other traffic (guests ↔ client) goes through an unshaped class, so the
// client's stream never queues behind migration data. mibps 0 removes the
// shaping.
func (e *Env) Shape(ctx context.Context, mibps float64) error {
	for _, h := range []devcluster.Host{e.Src, e.Dst} {
		// Deleting a qdisc that is not there fails; that is fine.
		_, _ = run(ctx, h.Netns, "tc", "qdisc", "del", "dev", devcluster.HostUplink, "root")
	}
	e.shapedMiBps = 0
	if mibps <= 0 {
		return nil
	}
	rate := strconv.FormatInt(int64(mibps*1024*1024), 10) + "bps" // tc: bps = bytes/s
	for _, pair := range [][2]devcluster.Host{{e.Src, e.Dst}, {e.Dst, e.Src}} {
		h, peer := pair[0], pair[1]
		cmds := [][]string{
			{"qdisc", "add", "dev", devcluster.HostUplink, "root", "handle", "1:", "htb", "default", "20"},
			{"class", "add", "dev", devcluster.HostUplink, "parent", "1:", "classid", "1:10", "htb",
				"rate", rate, "ceil", rate, "burst", "256k", "cburst", "256k", "quantum", "60000"},
			{"class", "add", "dev", devcluster.HostUplink, "parent", "1:", "classid", "1:20", "htb",
				"rate", "20gbit", "ceil", "20gbit", "burst", "4m", "quantum", "60000"},
			{"filter", "add", "dev", devcluster.HostUplink, "parent", "1:", "protocol", "ip", "prio", "1", "u32",
				"match", "ip", "src", h.IP + "/32", "match", "ip", "dst", peer.IP + "/32", "flowid", "1:10"},
		}
		for _, args := range cmds {
			if _, err := run(ctx, h.Netns, "tc", args...); err != nil {
				return fmt.Errorf("shape the link of %s to %.0f MiB/s: %w", h.Name, mibps, err)
			}
		}
	}
	e.shapedMiBps = mibps
	return nil
}

// Unshape removes the shaping, ignoring errors (cleanup path).
func (e *Env) Unshape() {
	for _, h := range []devcluster.Host{e.Src, e.Dst} {
		_, _ = run(context.Background(), h.Netns, "tc", "qdisc", "del", "dev", devcluster.HostUplink, "root")
	}
	e.shapedMiBps = 0
}

// MeasureBandwidth sends bulk TCP data from the source host's namespace
// to a receiver in the destination host's namespace for d and returns the
// rate the receiver saw in MiB/s: the link as a migration stream sees it.
func (e *Env) MeasureBandwidth(ctx context.Context, d time.Duration) (float64, error) {
	l, err := netnsutil.Listen(e.Dst.Netns, "tcp", net.JoinHostPort(e.Dst.IP, "0"))
	if err != nil {
		return 0, fmt.Errorf("bandwidth probe: %w", err)
	}
	defer l.Close()
	type result struct {
		n   int64
		dur time.Duration
		err error
	}
	got := make(chan result, 1)
	go func() {
		conn, err := l.Accept()
		if err != nil {
			got <- result{err: err}
			return
		}
		defer conn.Close()
		buf := make([]byte, 1<<20)
		var n int64
		var start time.Time
		for {
			k, err := conn.Read(buf)
			if k > 0 && start.IsZero() {
				start = time.Now()
			}
			n += int64(k)
			if err != nil {
				if errors.Is(err, io.EOF) {
					err = nil
				}
				got <- result{n: n, dur: time.Since(start), err: err}
				return
			}
		}
	}()
	dctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	conn, err := netnsutil.DialContext(dctx, e.Src.Netns, "tcp", l.Addr().String())
	cancel()
	if err != nil {
		return 0, fmt.Errorf("bandwidth probe: %w", err)
	}
	buf := make([]byte, 256<<10)
	for i := range buf {
		buf[i] = byte(i*7 + 1)
	}
	deadline := time.Now().Add(d)
	_ = conn.SetWriteDeadline(deadline.Add(5 * time.Second))
	for time.Now().Before(deadline) && ctx.Err() == nil {
		if _, err := conn.Write(buf); err != nil {
			conn.Close()
			return 0, fmt.Errorf("bandwidth probe: send: %w", err)
		}
	}
	conn.Close()
	select {
	case r := <-got:
		if r.err != nil {
			return 0, fmt.Errorf("bandwidth probe: receive: %w", r.err)
		}
		if r.dur <= 0 {
			return 0, errors.New("bandwidth probe: nothing received")
		}
		return float64(r.n) / (1 << 20) / r.dur.Seconds(), nil
	case <-time.After(30 * time.Second):
		return 0, errors.New("bandwidth probe: receiver did not finish within 30s")
	}
}
