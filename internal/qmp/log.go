package qmp

import (
	"bytes"
	"encoding/json"
	"io"
	"sync"
	"time"
)

// Log directions.
const (
	dirSend  = "->"
	dirRecv  = "<-"
	dirEvent = "event"
	dirNote  = "--"
)

// wireLog writes one line per QMP message. A nil *wireLog discards
// everything. Write errors are ignored: logging must never break the
// session.
type wireLog struct {
	mu   sync.Mutex
	w    io.Writer
	name string
	buf  bytes.Buffer
	now  func() time.Time
}

func newWireLog(w io.Writer, name string) *wireLog {
	if w == nil {
		return nil
	}
	return &wireLog{w: w, name: name, now: time.Now}
}

// message logs one raw JSON message (compacted onto a single line).
func (l *wireLog) message(dir string, raw []byte) {
	if l == nil {
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	l.header(dir)
	if err := json.Compact(&l.buf, raw); err != nil {
		// Not valid JSON: log it quoted so the line stays parseable.
		q, _ := json.Marshal(string(raw))
		l.buf.Write(q)
	}
	l.flush()
}

// note logs a local life-cycle note as a small JSON object.
func (l *wireLog) note(fields map[string]string) {
	if l == nil {
		return
	}
	b, _ := json.Marshal(fields)
	l.mu.Lock()
	defer l.mu.Unlock()
	l.header(dirNote)
	l.buf.Write(b)
	l.flush()
}

func (l *wireLog) header(dir string) {
	l.buf.Reset()
	l.buf.WriteString(l.now().UTC().Format("2006-01-02T15:04:05.000000Z07:00"))
	l.buf.WriteByte(' ')
	if l.name != "" {
		l.buf.WriteByte('[')
		l.buf.WriteString(l.name)
		l.buf.WriteString("] ")
	}
	l.buf.WriteString(dir)
	l.buf.WriteByte(' ')
}

func (l *wireLog) flush() {
	l.buf.WriteByte('\n')
	_, _ = l.w.Write(l.buf.Bytes())
}
