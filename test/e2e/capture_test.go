package e2e

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"sync"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/ferryvm/ferry/internal/netnsutil"
)

// capture is a packet capture on one link (AF_PACKET, every protocol, both
// directions) that looks for a byte pattern in every frame as it arrives:
// nothing is written to disk and the pattern's hits are counted.
type capture struct {
	fd      int
	pattern []byte
	done    chan struct{}

	mu     sync.Mutex
	frames int64
	bytes  int64
	hits   int64
	err    error
}

// captureStats is what a capture saw.
type captureStats struct {
	Frames, Bytes, Hits int64
	// Drops are the frames the kernel dropped because the reader lagged.
	Drops uint32
}

func (s captureStats) String() string {
	return fmt.Sprintf("%d frames, %.1f MiB, %d drops, %d marker hits", s.Frames, float64(s.Bytes)/(1<<20), s.Drops, s.Hits)
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

// startCapture opens a capture on link ifname of namespace ns; t's cleanup
// closes it.
func startCapture(t *testing.T, ns, ifname string, pattern []byte) *capture {
	t.Helper()
	c := &capture{fd: -1, pattern: pattern, done: make(chan struct{})}
	err := netnsutil.Do(ns, func() error {
		ifi, err := net.InterfaceByName(ifname)
		if err != nil {
			return err
		}
		fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, int(htons(unix.ETH_P_ALL)))
		if err != nil {
			return fmt.Errorf("AF_PACKET socket: %w", err)
		}
		c.fd = fd
		// A large buffer: the stream runs at hundreds of MiB/s.
		_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, 256<<20)
		if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &unix.Timeval{Usec: 200000}); err != nil {
			return err
		}
		return unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_ALL), Ifindex: ifi.Index})
	})
	if err != nil {
		if c.fd >= 0 {
			unix.Close(c.fd)
		}
		t.Fatalf("capture on %s in %s: %v", ifname, ns, err)
	}
	go c.run()
	t.Cleanup(func() { c.stop() })
	return c
}

func (c *capture) run() {
	defer close(c.done)
	buf := make([]byte, 256<<10) // a GSO frame on a veth is up to 64 KiB
	for {
		n, _, err := unix.Recvfrom(c.fd, buf, unix.MSG_TRUNC)
		if errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EINTR) {
			c.mu.Lock()
			stopped := c.fd < 0
			c.mu.Unlock()
			if stopped {
				return
			}
			continue
		}
		if err != nil {
			c.mu.Lock()
			if c.fd >= 0 {
				c.err = err
			}
			c.mu.Unlock()
			return
		}
		frame := buf[:min(n, len(buf))]
		hits := int64(bytes.Count(frame, c.pattern))
		c.mu.Lock()
		c.frames++
		c.bytes += int64(n)
		c.hits += hits
		stopped := c.fd < 0
		c.mu.Unlock()
		if stopped {
			return
		}
	}
}

// snapshot returns the counts so far (and resets nothing).
func (c *capture) snapshot() captureStats {
	c.mu.Lock()
	defer c.mu.Unlock()
	return captureStats{Frames: c.frames, Bytes: c.bytes, Hits: c.hits}
}

// reset zeroes the counts (between two migrations on one capture).
func (c *capture) reset() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.frames, c.bytes, c.hits = 0, 0, 0
	if c.fd >= 0 {
		_, _ = packetDrops(c.fd) // reading the statistics clears them
	}
}

// stats returns the counts and the kernel's drops since the last call.
func (c *capture) stats() captureStats {
	s := c.snapshot()
	c.mu.Lock()
	if c.fd >= 0 {
		s.Drops, _ = packetDrops(c.fd)
	}
	c.mu.Unlock()
	return s
}

// stop closes the socket and waits for the reader.
func (c *capture) stop() error {
	c.mu.Lock()
	fd := c.fd
	c.fd = -1
	c.mu.Unlock()
	if fd < 0 {
		return c.err
	}
	<-c.done
	unix.Close(fd)
	return c.err
}

// packetDrops reads (and clears) the socket's PACKET_STATISTICS drops.
func packetDrops(fd int) (uint32, error) {
	st, err := unix.GetsockoptTpacketStats(fd, unix.SOL_PACKET, unix.PACKET_STATISTICS)
	if err != nil {
		return 0, err
	}
	return st.Drops, nil
}
