package placement

import "testing"

func TestCheck(t *testing.T) {
	base := Host{Name: "h", Ready: true, CPUs: 4, MemoryMiB: 8192, DiskGiB: 100, AllocatedDiskGiB: 90, Groups: map[string]int{"db": 1}}
	tests := []struct {
		name string
		req  Request
		want RejectKind // "" = fits
	}{
		{"fits", Request{VCPUs: 1, MemoryMiB: 1024, DiskGiB: 10}, ""},
		{"disk", Request{VCPUs: 1, MemoryMiB: 1024, DiskGiB: 11}, RejectDisk},
		{"anti-affinity", Request{VCPUs: 1, MemoryMiB: 1024, AntiAffinity: []string{"web", "db"}}, RejectAntiAffinity},
		{"memory", Request{VCPUs: 1, MemoryMiB: 8000}, RejectMemory},
		{"vcpus", Request{VCPUs: 17, MemoryMiB: 64}, RejectVCPUs},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := Check(base, tc.req)
			switch {
			case tc.want == "" && r != nil:
				t.Fatalf("Check = %+v, want fit", r)
			case tc.want != "" && (r == nil || r.Kind != tc.want):
				t.Fatalf("Check = %+v, want %s", r, tc.want)
			}
		})
	}
}

func TestScorePrefersScarcestResourceFree(t *testing.T) {
	req := Request{VCPUs: 2, MemoryMiB: 1024}
	memFull := Host{Name: "a", Ready: true, CPUs: 16, MemoryMiB: 16640, AllocatedMemoryMiB: 14000}
	cpuFull := Host{Name: "b", Ready: true, CPUs: 4, MemoryMiB: 16640, AllocatedVCPUs: 12}
	roomy := Host{Name: "c", Ready: true, CPUs: 16, MemoryMiB: 16640, AllocatedMemoryMiB: 4096, AllocatedVCPUs: 8}
	sa, sb, sc := Score(memFull, req), Score(cpuFull, req), Score(roomy, req)
	if sc <= sa || sc <= sb {
		t.Fatalf("scores a=%.3f b=%.3f c=%.3f: want c highest", sa, sb, sc)
	}
}

func TestPlaceRemove(t *testing.T) {
	h := Host{Name: "h", Ready: true, CPUs: 4, MemoryMiB: 8192}
	req := Request{VCPUs: 2, MemoryMiB: 1024, DiskGiB: 5, AntiAffinity: []string{"g"}}
	orig := h
	h.Place(req)
	if Check(h, req) == nil || Check(h, req).Kind != RejectAntiAffinity {
		t.Fatalf("after Place, the group must block a second VM: %+v", Check(h, req))
	}
	if orig.Groups != nil {
		t.Fatal("Place changed the original's groups")
	}
	h.Remove(req)
	if h.AllocatedVCPUs != 0 || h.AllocatedMemoryMiB != 0 || h.AllocatedDiskGiB != 0 || len(h.Groups) != 0 {
		t.Fatalf("Remove left %+v", h)
	}
}
