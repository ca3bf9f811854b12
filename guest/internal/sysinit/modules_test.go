//go:build linux

package sysinit

import (
	"reflect"
	"strings"
	"testing"
)

func TestParseModuleList(t *testing.T) {
	in := `# generated
kernel/drivers/virtio/virtio_ring.ko

builtin virtio_blk
missing frob
  kernel/drivers/net/virtio_net.ko  
`
	got, err := ParseModuleList(strings.NewReader(in))
	if err != nil {
		t.Fatal(err)
	}
	want := []ModuleEntry{
		{Name: "virtio_ring", Path: "kernel/drivers/virtio/virtio_ring.ko", Status: "load"},
		{Name: "virtio_blk", Status: "builtin"},
		{Name: "frob", Status: "missing"},
		{Name: "virtio_net", Path: "kernel/drivers/net/virtio_net.ko", Status: "load"},
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("got %+v\nwant %+v", got, want)
	}
	for _, bad := range []string{"builtin", "virtio_ring", "a b c", "kernel/x.ko extra"} {
		if _, err := ParseModuleList(strings.NewReader(bad)); err == nil {
			t.Errorf("accepted %q", bad)
		}
	}
}
