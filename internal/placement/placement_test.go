package placement

import (
	"errors"
	"strings"
	"testing"
)

func TestChoose(t *testing.T) {
	h := func(name string, ready bool, mem, alloc int64) Host {
		return Host{Name: name, Ready: ready, CPUs: 2, MemoryMiB: mem, AllocatedMemoryMiB: alloc}
	}
	tests := []struct {
		name    string
		hosts   []Host
		req     Request
		want    string
		wantErr string
	}{
		{"most free memory wins", []Host{h("h1", true, 4096, 2048), h("h2", true, 4096, 512)}, Request{VCPUs: 1, MemoryMiB: 512}, "h2", ""},
		{"tie broken by name", []Host{h("h2", true, 4096, 0), h("h1", true, 4096, 0)}, Request{VCPUs: 1, MemoryMiB: 512}, "h1", ""},
		{"unreachable skipped", []Host{h("h1", false, 8192, 0), h("h2", true, 2048, 0)}, Request{VCPUs: 1, MemoryMiB: 512}, "h2", ""},
		{"excluded skipped", []Host{h("h1", true, 8192, 0), h("h2", true, 2048, 0)}, Request{VCPUs: 1, MemoryMiB: 512, Exclude: []string{"h1"}}, "h2", ""},
		{"reserve respected", []Host{h("h1", true, 1024, 0)}, Request{VCPUs: 1, MemoryMiB: 1024}, "", "h1: 768 MiB free, need 1024"},
		{"vcpu overcommit limit", []Host{{Name: "h1", Ready: true, CPUs: 1, MemoryMiB: 8192, AllocatedVCPUs: 4}}, Request{VCPUs: 1, MemoryMiB: 64}, "", "limit 4x"},
		{"scarcest resource decides", []Host{{Name: "h1", Ready: true, CPUs: 1, MemoryMiB: 16384, AllocatedVCPUs: 3}, {Name: "h2", Ready: true, CPUs: 2, MemoryMiB: 8192, AllocatedMemoryMiB: 2048}}, Request{VCPUs: 1, MemoryMiB: 512}, "h2", ""},
		{"no hosts", nil, Request{VCPUs: 1, MemoryMiB: 64}, "", "no hosts registered"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := Choose(tc.hosts, tc.req)
			if tc.wantErr != "" {
				if !errors.Is(err, ErrNoCapacity) || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want ErrNoCapacity containing %q", err, tc.wantErr)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("Choose = %q, %v; want %q", got, err, tc.want)
			}
		})
	}
}
