package guestapi

import (
	"errors"
	"strings"
	"testing"
)

func TestRecordRoundTrip(t *testing.T) {
	buf := make([]byte, RecordSize)
	in := Record{Seq: 42, BootID: [16]byte{1, 2, 3, 15: 0xff}, WallNs: 1700000000123456789, UptimeNs: 987654321}
	EncodeRecord(buf, in)
	if string(buf[:8]) != "FERRYREC" {
		t.Fatalf("magic %q", buf[:8])
	}
	out, err := DecodeRecord(buf)
	if err != nil {
		t.Fatal(err)
	}
	if out != in {
		t.Fatalf("got %+v want %+v", out, in)
	}
	if out.BootIDHex() != "010203000000000000000000000000ff" {
		t.Fatalf("hex %q", out.BootIDHex())
	}
	buf[4000] ^= 1
	if _, err := DecodeRecord(buf); err == nil || !strings.Contains(err.Error(), "crc") {
		t.Fatalf("corruption not detected: %v", err)
	}
	if _, err := DecodeRecord(make([]byte, RecordSize)); !errors.Is(err, ErrNoRecord) {
		t.Fatalf("zero block: %v", err)
	}
	if _, err := DecodeRecord(buf[:100]); err == nil {
		t.Fatal("short buffer accepted")
	}
}

func TestRecordOffset(t *testing.T) {
	for _, tc := range []struct {
		seq, n uint64
		want   int64
	}{{1, 10, 0}, {2, 10, 4096}, {10, 10, 9 * 4096}, {11, 10, 0}, {25, 10, 4 * 4096}} {
		if got := RecordOffset(tc.seq, tc.n); got != tc.want {
			t.Errorf("RecordOffset(%d,%d) = %d want %d", tc.seq, tc.n, got, tc.want)
		}
	}
}

func TestReadyRe(t *testing.T) {
	m := ReadyRe.FindStringSubmatch("junk\r\nFERRY-GUEST READY boot_id=0123456789abcdef0123456789abcdef\r\n")
	if m == nil || m[1] != "0123456789abcdef0123456789abcdef" {
		t.Fatalf("match %q", m)
	}
	if ReadyRe.MatchString(ReadyPrefix + "xyz") {
		t.Fatal("matched bad id")
	}
}
