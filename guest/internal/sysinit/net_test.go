//go:build linux

package sysinit

import (
	"testing"
)

func TestNlAttrPadding(t *testing.T) {
	b := nlAttr(nil, 7, []byte{1, 2, 3, 4, 5})
	if len(b) != 12 {
		t.Fatalf("len %d, want 12 (4 hdr + 5 data + 3 pad)", len(b))
	}
	if ne.Uint16(b[0:2]) != 9 || ne.Uint16(b[2:4]) != 7 {
		t.Fatalf("header %v", b[:4])
	}
}
