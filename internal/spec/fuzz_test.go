package spec

import (
	"errors"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// FuzzParseValidate feeds arbitrary YAML/JSON to Parse, Default and
// Validate: none may panic, Parse's error is a *ValidationError or names
// the document, and a spec Validate accepts keeps its promises (a DNS
// label name, absolute host paths without "..", bounded counts and sizes).
// Seeds: testdata/fuzz/FuzzParseValidate.
func FuzzParseValidate(f *testing.F) {
	f.Add([]byte("name: web\nvcpus: 1\nmemoryMiB: 256\nboot:\n  kernel: /k\n  initrd: i\n"))
	f.Add([]byte(`{"name":"a","vcpus":1,"memoryMiB":"128","boot":{"disk":"disk0"},"disks":[{"size":"1G"}]}`))
	f.Add([]byte("name: x\nvcpus: 2\nmemoryMiB: 64\nboot: {kernel: ../../x}\ndisks: [{path: /dev/sda}, {size: 99999999999TiB}]\nnics: [{mac: '52:54:00:00:00:01'}, null]\n"))
	f.Add([]byte("[1, 2]"))
	f.Add([]byte("name: &a x\nvcpus: *a\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		s, err := Parse(data, "/base")
		if err != nil {
			if !strings.HasPrefix(err.Error(), "spec") && !strings.HasPrefix(err.Error(), "invalid VM spec") {
				t.Fatalf("Parse error does not name the spec: %v", err)
			}
			return
		}
		before := Validate(s)
		Default(s)
		err = Validate(s)
		if (before == nil) != (err == nil) {
			t.Fatalf("Validate before Default = %v, after = %v", before, err)
		}
		if err != nil {
			var ve *ValidationError
			if !errors.As(err, &ve) || len(ve.Violations) == 0 {
				t.Fatalf("Validate = %v, want a *ValidationError with violations", err)
			}
			return
		}
		if !dnsLabelRE.MatchString(s.Name) {
			t.Fatalf("accepted name %q", s.Name)
		}
		if len(s.Disks) > MaxDisks || len(s.Nics) > MaxNICs || s.Vcpus > MaxVcpus || s.MemoryMib > MaxMemoryMiB {
			t.Fatalf("accepted counts: %d disks, %d nics, %d vcpus, %d MiB", len(s.Disks), len(s.Nics), s.Vcpus, s.MemoryMib)
		}
		paths := []string{s.GetBoot().GetKernel(), s.GetBoot().GetInitrd()}
		for _, d := range s.Disks {
			paths = append(paths, d.Path)
			if d.Size != "" {
				if n, err := ParseSize(d.Size); err != nil || n <= 0 || n > MaxDiskBytes {
					t.Fatalf("accepted disk size %q (%d, %v)", d.Size, n, err)
				}
			}
		}
		for _, p := range paths {
			if p != "" && (!filepath.IsAbs(p) || slices.Contains(strings.Split(p, "/"), "..")) {
				t.Fatalf("accepted host path %q", p)
			}
		}
	})
}
