// Package guestagent is a minimal client of the QEMU guest agent protocol
// over a VM's org.qemu.guest_agent.0 channel (the host side is a unix
// socket QEMU serves): it synchronises the stream with guest-sync-delimited
// and asks guest-ping, which is all Ferry needs to tell that a guest runs.
//
// The protocol is JSON objects over a byte stream. Because a previous
// client may have left a half-written command or unread replies in the
// channel, a session starts with a 0xFF byte (the guest agent discards any
// partial command when it reads one) and guest-sync-delimited with a fresh
// id: the guest answers with 0xFF followed by {"return": id}, so the client
// skips everything before the 0xFF and every reply with another id.
package guestagent

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"time"
)

// Delimiter is the byte that resets the guest agent's parser and precedes
// the reply to guest-sync-delimited.
const Delimiter = 0xFF

// ErrNoReply is what a call's error wraps when the guest agent did not
// answer within the deadline (a stopped guest, or no agent in the guest).
var ErrNoReply = errors.New("guest agent did not answer")

// maxReply bounds one reply, so a confused peer cannot make us buffer
// without end.
const maxReply = 64 << 10

// Conn is one session with a guest agent.
type Conn struct {
	c  net.Conn
	br *bufio.Reader
}

// Dial connects to the guest agent channel's unix socket at path.
func Dial(ctx context.Context, path string) (*Conn, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, "unix", path)
	if err != nil {
		return nil, fmt.Errorf("guest agent channel %s: %w", path, err)
	}
	return NewConn(c), nil
}

// NewConn wraps an established channel (tests pass one end of a net.Pipe).
func NewConn(c net.Conn) *Conn { return &Conn{c: c, br: bufio.NewReader(c)} }

// Close closes the channel.
func (c *Conn) Close() error { return c.c.Close() }

// reply is one guest agent answer.
type reply struct {
	Return json.RawMessage `json:"return"`
	Error  *struct {
		Class string `json:"class"`
		Desc  string `json:"desc"`
	} `json:"error"`
}

// Sync resets the channel and waits for the guest agent's answer to
// guest-sync-delimited with a random id, skipping anything stale.
func (c *Conn) Sync(ctx context.Context) error {
	id := rand.Int64N(1 << 52) // exact in a JSON number
	cmd := fmt.Sprintf(`{"execute":"guest-sync-delimited","arguments":{"id":%d}}`+"\n", id)
	if err := c.write(ctx, append([]byte{Delimiter}, cmd...)); err != nil {
		return err
	}
	for {
		if err := c.skipToDelimiter(ctx); err != nil {
			return err
		}
		r, err := c.read(ctx)
		if err != nil {
			return err
		}
		if r.Error != nil {
			return fmt.Errorf("guest-sync-delimited: %s: %s", r.Error.Class, r.Error.Desc)
		}
		var got int64
		if json.Unmarshal(r.Return, &got) == nil && got == id {
			return nil
		}
		// A stale reply to an earlier session's sync: keep looking.
	}
}

// Ping asks guest-ping and waits for its (empty) answer. Call Sync first.
func (c *Conn) Ping(ctx context.Context) error {
	if err := c.write(ctx, []byte(`{"execute":"guest-ping"}`+"\n")); err != nil {
		return err
	}
	r, err := c.read(ctx)
	if err != nil {
		return err
	}
	if r.Error != nil {
		return fmt.Errorf("guest-ping: %s: %s", r.Error.Class, r.Error.Desc)
	}
	return nil
}

// SyncPing dials path, synchronises and pings under ctx's deadline.
func SyncPing(ctx context.Context, path string) error {
	c, err := Dial(ctx, path)
	if err != nil {
		return err
	}
	defer c.Close()
	if err := c.Sync(ctx); err != nil {
		return err
	}
	return c.Ping(ctx)
}

// deadline applies ctx's deadline (or cancellation) to the connection.
func (c *Conn) deadline(ctx context.Context) func() {
	if d, ok := ctx.Deadline(); ok {
		_ = c.c.SetDeadline(d)
	}
	stop := context.AfterFunc(ctx, func() { _ = c.c.SetDeadline(time.Unix(1, 0)) })
	return func() { stop() }
}

func (c *Conn) write(ctx context.Context, b []byte) error {
	defer c.deadline(ctx)()
	if _, err := c.c.Write(b); err != nil {
		return c.wrap("write", err)
	}
	return nil
}

// skipToDelimiter discards bytes up to and including the next 0xFF.
func (c *Conn) skipToDelimiter(ctx context.Context) error {
	defer c.deadline(ctx)()
	for n := 0; ; n++ {
		b, err := c.br.ReadByte()
		if err != nil {
			return c.wrap("read", err)
		}
		if b == Delimiter {
			return nil
		}
		if n > maxReply {
			return fmt.Errorf("guest agent: no 0xFF delimiter in %d bytes", n)
		}
	}
}

// read decodes the next JSON reply, skipping whitespace and stray 0xFF.
func (c *Conn) read(ctx context.Context) (reply, error) {
	defer c.deadline(ctx)()
	for {
		b, err := c.br.Peek(1)
		if err != nil {
			return reply{}, c.wrap("read", err)
		}
		if b[0] != Delimiter && b[0] != ' ' && b[0] != '\n' && b[0] != '\r' && b[0] != '\t' {
			break
		}
		_, _ = c.br.ReadByte()
	}
	line, err := c.br.ReadSlice('\n')
	if err != nil && !errors.Is(err, bufio.ErrBufferFull) {
		return reply{}, c.wrap("read", err)
	}
	if errors.Is(err, bufio.ErrBufferFull) {
		return reply{}, fmt.Errorf("guest agent: reply longer than %d bytes", c.br.Size())
	}
	var r reply
	if err := json.Unmarshal(line, &r); err != nil {
		return reply{}, fmt.Errorf("guest agent: bad reply %q: %w", truncate(line), err)
	}
	if r.Return == nil && r.Error == nil {
		return reply{}, fmt.Errorf("guest agent: reply %q has neither return nor error", truncate(line))
	}
	return r, nil
}

// wrap marks timeouts and a closed channel as ErrNoReply.
func (c *Conn) wrap(op string, err error) error {
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() || errors.Is(err, io.EOF) || errors.Is(err, io.ErrClosedPipe) {
		return fmt.Errorf("guest agent %s: %w (%v)", op, ErrNoReply, err)
	}
	return fmt.Errorf("guest agent %s: %w", op, err)
}

func truncate(b []byte) string {
	if len(b) > 200 {
		return string(b[:200]) + "..."
	}
	return string(b)
}
