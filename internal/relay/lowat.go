package relay

import (
	"net"
	"syscall"

	"golang.org/x/sys/unix"
)

// TLS record framing, as the relay's TCP connections carry it: a 5-byte
// header whose last two bytes are the length of the body that follows.
const (
	recordHeaderLen = 5
	maxRecordBody   = 16384 + 256 // TLS 1.3's largest ciphertext body
)

// lowatConn is a TCP connection carrying TLS records whose reads wake up
// once per record rather than once per segment: before each read it sets
// SO_RCVLOWAT to what the record being received still lacks, so the
// kernel signals the socket readable only when that much has arrived.
// (crypto/tls reads until it holds a whole record; on a link whose
// segments arrive one MTU at a time, each wake-up used to bring 1448
// bytes of a 16 KiB record.) A read never waits for more than the current
// record's rest, so a short record — a page request — is never held back.
// If the kernel refuses the option, reads go on without it.
type lowatConn struct {
	*net.TCPConn
	raw  syscall.RawConn
	set  int // the SO_RCVLOWAT last set (0: the kernel's default, 1)
	off  bool
	hdr  [recordHeaderLen]byte
	nhdr int // header bytes seen of the record being received
	body int // body bytes of that record still to come (after its header)
}

// newLowatConn wraps c; a connection that is not TCP is returned as is.
func newLowatConn(c net.Conn) net.Conn {
	tc, ok := c.(*net.TCPConn)
	if !ok {
		return c
	}
	raw, err := tc.SyscallConn()
	if err != nil {
		return c
	}
	return &lowatConn{TCPConn: tc, raw: raw}
}

// need is how many bytes the record being received still lacks.
func (c *lowatConn) need() int {
	if c.nhdr < recordHeaderLen {
		return recordHeaderLen - c.nhdr
	}
	return c.body
}

// Read implements net.Conn.
func (c *lowatConn) Read(p []byte) (int, error) {
	if !c.off {
		want := min(c.need(), len(p), maxRecordBody)
		if want < 1 {
			want = 1
		}
		if want != c.set {
			var serr error
			if err := c.raw.Control(func(fd uintptr) {
				serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVLOWAT, want)
			}); err != nil || serr != nil {
				c.off = true
			} else {
				c.set = want
			}
		}
	}
	n, err := c.TCPConn.Read(p)
	c.track(p[:n])
	return n, err
}

// track follows the record framing through b.
func (c *lowatConn) track(b []byte) {
	for len(b) > 0 {
		if c.nhdr < recordHeaderLen {
			k := copy(c.hdr[c.nhdr:], b)
			c.nhdr += k
			b = b[k:]
			if c.nhdr == recordHeaderLen {
				c.body = int(c.hdr[3])<<8 | int(c.hdr[4])
				if c.body == 0 {
					c.nhdr = 0
				}
			}
			continue
		}
		k := min(c.body, len(b))
		c.body -= k
		b = b[k:]
		if c.body == 0 {
			c.nhdr = 0
		}
	}
}
