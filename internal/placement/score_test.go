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

// TestCheckDiskFree: a host whose agent reports its data directory's free
// space takes a VM only if its local disks and the margin fit; a host
// that reports nothing, or a VM without local disks, is not checked.
func TestCheckDiskFree(t *testing.T) {
	h := Host{Name: "h", Ready: true, CPUs: 4, MemoryMiB: 8192, DiskFreeBytes: 2 << 30}
	req := Request{VCPUs: 1, MemoryMiB: 512, DiskBytes: 1 << 30}
	if r := Check(h, req); r != nil {
		t.Fatalf("1 GiB into 2 GiB free: %+v, want fit", r)
	}
	req.DiskBytes = 1900 << 20 // + 190 MiB... the 256 MiB floor: 2156 MiB > 2048
	r := Check(h, req)
	if r == nil || r.Kind != RejectDisk || r.Detail != "2048 MiB free in its data directory, need 1900 MiB for the local disks + 256 MiB margin" {
		t.Fatalf("1900 MiB into 2 GiB free: %+v, want a disk refusal with the figures", r)
	}
	h.Place(Request{DiskBytes: 1 << 30})
	if r := Check(h, Request{VCPUs: 1, MemoryMiB: 512, DiskBytes: 900 << 20}); r == nil || r.Kind != RejectDisk {
		t.Fatalf("after placing 1 GiB there: %+v, want the placed disk counted", r)
	}
	if r := Check(Host{Name: "h", Ready: true, CPUs: 4, MemoryMiB: 8192}, req); r != nil {
		t.Errorf("a host without a report: %+v, want no disk check", r)
	}
	if r := Check(Host{Name: "h", Ready: true, CPUs: 4, MemoryMiB: 8192, DiskFreeBytes: 1}, Request{VCPUs: 1, MemoryMiB: 512}); r != nil {
		t.Errorf("a VM without local disks: %+v, want no disk check", r)
	}
	if got := DiskMargin(10 << 30); got != 1<<30 {
		t.Errorf("DiskMargin(10 GiB) = %d, want 10%%", got)
	}
}
