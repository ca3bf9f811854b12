package relay

import (
	"fmt"
	"net"

	"golang.org/x/sys/unix"
)

// retransmitCapMs caps the exponential backoff of a relay connection's
// retransmission timer (TCP_RTO_MAX_MS, Linux 6.15 and later; the kernel
// takes 1000 ms at the least, and its default is 120 s). While a link is
// down, each unanswered retransmission doubles the wait before the next,
// so the stream resumes only at the first retransmission after the link
// is back: after a 2 s outage, up to about 2 s later, and every relayed
// multifd channel waits for its own. Measured in the flaky bench before
// the cap (session 12's run of record): each 2 s outage stalled the
// pre-copy for about 4 s. With the cap, a stream resumes within a second
// of the link coming back, at the cost of one retransmitted segment per
// second while it is down. The kernel's give-up rule (tcp_retries2, 15
// retransmissions, modelled on the capped backoff) then ends a connection
// after about 13 s of continuous outage instead of about 15 min; the
// engine's stall timeout (15 s by default) ends such a pre-copy anyway, and
// the retry policy takes over.
const retransmitCapMs = 1000

// capBackoff sets retransmitCapMs on c when it is a TCP connection. An
// error means the kernel refused it (before 6.15): the connection works
// as before, with the default backoff.
func capBackoff(c net.Conn) error {
	tc, ok := c.(*net.TCPConn)
	if !ok {
		return nil
	}
	raw, err := tc.SyscallConn()
	if err != nil {
		return fmt.Errorf("cap TCP retransmission backoff: %w", err)
	}
	var serr error
	if err := raw.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_RTO_MAX_MS, retransmitCapMs)
	}); err != nil {
		return fmt.Errorf("cap TCP retransmission backoff: %w", err)
	}
	if serr != nil {
		return fmt.Errorf("cap TCP retransmission backoff (TCP_RTO_MAX_MS, Linux 6.15 or later): %w", serr)
	}
	return nil
}
