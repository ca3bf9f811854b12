package agent

import (
	"bufio"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"syscall"
)

// The cold disk copy's stream, source agent → destination agent over the
// host-to-host network (see docs/storage.md):
//
//	copyMagic
//	header    one JSON line: copyHeader
//	ack       one JSON line from the destination: copyAck
//	per disk, in the header's order:
//	  'D' offset(8) length(4) data   a block holding data
//	  'E' digest(32)                 the disk's content digest (contentDigest)
//	reply     JSON lines from the destination: copyReply (progress lines
//	          while it verifies, written as it goes, then the verdict)
//
// Only blocks of the image file that hold data are sent (SEEK_DATA /
// SEEK_HOLE, all-zero blocks skipped): a sparse raw image or a qcow2 image
// (whose file holds only its allocated clusters and metadata) costs its
// allocated bytes, not its virtual size.

// copyMagic opens the stream.
const copyMagic = "FERRY-DISKCOPY/1\n"

// copyBlockSize is the unit of the digest and the largest data frame.
const copyBlockSize = 64 << 10

// Frame kinds.
const (
	frameData byte = 'D'
	frameEnd  byte = 'E'
)

// copyHeader names the migration (with the destination's token) and the
// disks that follow.
type copyHeader struct {
	MigrationID string           `json:"migration_id"`
	Token       string           `json:"token"`
	Disks       []copyDiskHeader `json:"disks"`
}

// copyDiskHeader is one disk image file: its name and file size.
type copyDiskHeader struct {
	Name string `json:"name"`
	Size int64  `json:"size"`
}

// copyAck is the destination's answer to the header: verified when it
// already holds verified copies of this migration (a source that restarted
// after the destination verified them).
type copyAck struct {
	Error    string `json:"error,omitempty"`
	Verified bool   `json:"verified,omitempty"`
}

// copyReply is the destination's verdict after the last disk; before it,
// while the destination reads its copies back for their digests, progress
// lines (Progress set) say how much it has verified.
type copyReply struct {
	OK            bool     `json:"ok"`
	Error         string   `json:"error,omitempty"`
	Digests       []string `json:"digests,omitempty"`
	Progress      bool     `json:"progress,omitempty"`
	VerifiedBytes int64    `json:"verified_bytes,omitempty"`
}

// Linux lseek whence values for sparse files.
const (
	seekData = 3
	seekHole = 4
)

// nextData returns the offset of the first data at or after off (size
// when there is none). A file system without SEEK_DATA reads as all data.
func nextData(f *os.File, off, size int64) int64 {
	d, err := f.Seek(off, seekData)
	switch {
	case errors.Is(err, syscall.ENXIO):
		return size
	case err != nil:
		return off
	}
	return d
}

// nextHole returns the offset of the first hole at or after off (size at
// the end, or without SEEK_HOLE).
func nextHole(f *os.File, off, size int64) int64 {
	h, err := f.Seek(off, seekHole)
	if err != nil || h > size {
		return size
	}
	return h
}

// contentDigest walks the file's size bytes in copyBlockSize blocks and
// returns its content digest: SHA-256 over the SHA-256 of every block,
// holes and all-zero blocks hashing as the zeros they read as. So a copy
// that writes only the data blocks into a sparse file of the same size
// has the same digest. fn, when set, gets each block that holds data that
// is not all zeros (offset, content; b is reused after fn returns).
func contentDigest(f *os.File, size int64, fn func(off int64, b []byte) error) ([32]byte, error) {
	outer := sha256.New()
	buf := make([]byte, copyBlockSize)
	zeros := map[int64][32]byte{}
	zeroSum := func(n int64) []byte {
		z, ok := zeros[n]
		if !ok {
			z = sha256.Sum256(make([]byte, n))
			zeros[n] = z
		}
		return z[:]
	}
	for off := int64(0); off < size; {
		data := nextData(f, off, size)
		first := data / copyBlockSize * copyBlockSize
		for ; off < first; off += copyBlockSize {
			outer.Write(zeroSum(min(copyBlockSize, size-off)))
		}
		if off >= size {
			break
		}
		// The blocks up to the end of this data extent (the hole after
		// data, which is past it, rounded up to a block).
		end := (nextHole(f, max(data, off), size) + copyBlockSize - 1) / copyBlockSize * copyBlockSize
		end = max(end, off+copyBlockSize)
		for ; off < end && off < size; off += copyBlockSize {
			b := buf[:min(copyBlockSize, size-off)]
			if _, err := f.ReadAt(b, off); err != nil && !errors.Is(err, io.EOF) {
				return [32]byte{}, fmt.Errorf("read %s at %d: %w", f.Name(), off, err)
			}
			if allZero(b) {
				outer.Write(zeroSum(int64(len(b))))
				continue
			}
			h := sha256.Sum256(b)
			outer.Write(h[:])
			if fn != nil {
				if err := fn(off, b); err != nil {
					return [32]byte{}, err
				}
			}
		}
	}
	var out [32]byte
	copy(out[:], outer.Sum(nil))
	return out, nil
}

func allZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

func hexDigest(d [32]byte) string { return hex.EncodeToString(d[:]) }

// writeDataFrame sends one data block.
func writeDataFrame(w io.Writer, off int64, b []byte) error {
	var hdr [13]byte
	hdr[0] = frameData
	binary.BigEndian.PutUint64(hdr[1:9], uint64(off))
	binary.BigEndian.PutUint32(hdr[9:13], uint32(len(b)))
	if _, err := w.Write(hdr[:]); err != nil {
		return err
	}
	_, err := w.Write(b)
	return err
}

// writeEndFrame ends one disk with its digest.
func writeEndFrame(w io.Writer, d [32]byte) error {
	if _, err := w.Write([]byte{frameEnd}); err != nil {
		return err
	}
	_, err := w.Write(d[:])
	return err
}

// readFrame reads the next frame of a disk of size bytes: a data block
// (into buf) or the end with its digest.
func readFrame(r *bufio.Reader, size int64, buf []byte) (kind byte, off int64, data []byte, digest [32]byte, err error) {
	kind, err = r.ReadByte()
	if err != nil {
		return 0, 0, nil, digest, err
	}
	switch kind {
	case frameData:
		var hdr [12]byte
		if _, err = io.ReadFull(r, hdr[:]); err != nil {
			return 0, 0, nil, digest, err
		}
		off = int64(binary.BigEndian.Uint64(hdr[:8]))
		n := int64(binary.BigEndian.Uint32(hdr[8:]))
		if n <= 0 || n > int64(len(buf)) || off < 0 || off > size-n {
			return 0, 0, nil, digest, fmt.Errorf("data frame of %d bytes at %d outside the disk's %d bytes", n, off, size)
		}
		data = buf[:n]
		_, err = io.ReadFull(r, data)
		return kind, off, data, digest, err
	case frameEnd:
		_, err = io.ReadFull(r, digest[:])
		return kind, 0, nil, digest, err
	}
	return 0, 0, nil, digest, fmt.Errorf("unknown frame kind %q", kind)
}

// writeLine sends v as one JSON line.
func writeLine(w io.Writer, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	_, err = w.Write(append(b, '\n'))
	return err
}

// readLine reads one JSON line (at most 1 MiB) into v.
func readLine(r *bufio.Reader, v any) error {
	var line []byte
	for {
		chunk, more, err := r.ReadLine()
		if err != nil {
			return err
		}
		line = append(line, chunk...)
		if len(line) > 1<<20 {
			return errors.New("line longer than 1 MiB")
		}
		if !more {
			break
		}
	}
	return json.Unmarshal(line, v)
}
