package qmp

import (
	"bytes"
	"fmt"
	"io"
)

// MaxLineBytes bounds one message from QEMU. QMP sends one JSON document
// per line; the largest a healthy QEMU sends is the query-qmp-schema reply
// (a few hundred KiB), so 8 MiB leaves ample room while a hostile or
// broken QEMU cannot make the agent buffer without bound.
const MaxLineBytes = 8 << 20

// lineLimiter passes bytes through and fails once more than max bytes
// arrive without a newline.
type lineLimiter struct {
	r   io.Reader
	max int
	run int // bytes since the last newline
	err error
}

func (l *lineLimiter) Read(p []byte) (int, error) {
	if l.err != nil {
		return 0, l.err
	}
	n, err := l.r.Read(p)
	if i := bytes.LastIndexByte(p[:n], '\n'); i >= 0 {
		l.run = n - i - 1
	} else {
		l.run += n
	}
	if l.run > l.max {
		l.err = withCause(ErrProtocol, fmt.Errorf("a message from QEMU is longer than %d bytes", l.max))
		return 0, l.err
	}
	return n, err
}
