package pathguard

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
)

func TestCheck(t *testing.T) {
	data := t.TempDir()
	allowed := t.TempDir()
	outside := t.TempDir()
	write := func(p string) string {
		if err := os.WriteFile(p, []byte("x"), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	inData := write(filepath.Join(data, "vmlinuz"))
	inAllowed := write(filepath.Join(allowed, "disk.qcow2"))
	secret := write(filepath.Join(outside, "shadow"))
	escape := filepath.Join(data, "escape")
	if err := os.Symlink(secret, escape); err != nil {
		t.Fatal(err)
	}
	inner := filepath.Join(data, "inner")
	if err := os.Symlink(inData, inner); err != nil {
		t.Fatal(err)
	}
	sub := filepath.Join(data, "sub")
	if err := os.Mkdir(sub, 0o755); err != nil {
		t.Fatal(err)
	}
	g, err := New(data, allowed)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		path string
		want error
	}{
		{inData, nil},
		{inAllowed, nil},
		{inner, nil},
		{"/etc/shadow", ErrOutside},
		{"/dev/sda", ErrOutside},
		{"/dev/null", ErrOutside},
		{"../../x", ErrRelative},
		{"x", ErrRelative},
		{data + "/../" + filepath.Base(outside) + "/shadow", ErrDotDot},
		{secret, ErrOutside},
		{escape, ErrOutside},
		{sub, ErrNotRegular},
		{filepath.Join(data, "nope"), ErrMissing},
	} {
		_, err := g.Check(tc.path)
		if tc.want == nil && err != nil {
			t.Errorf("Check(%q) = %v, want nil", tc.path, err)
		}
		if tc.want != nil && !errors.Is(err, tc.want) {
			t.Errorf("Check(%q) = %v, want %v", tc.path, err, tc.want)
		}
	}
}

func TestDeviceNodeInAllowedDir(t *testing.T) {
	// /dev is allowed here on purpose: a device node is refused even inside
	// an allowed directory.
	g, err := New("/dev")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := g.Check("/dev/null"); !errors.Is(err, ErrNotRegular) {
		t.Fatalf("Check(/dev/null) = %v, want ErrNotRegular", err)
	}
}

func TestNewRefusesRelative(t *testing.T) {
	if _, err := New("relative/dir"); !errors.Is(err, ErrRelative) {
		t.Fatalf("New(relative) = %v, want ErrRelative", err)
	}
}

func TestWithin(t *testing.T) {
	for _, tc := range []struct {
		dir, p string
		want   bool
	}{
		{"/a", "/a", true}, {"/a", "/a/b", true}, {"/a", "/ab", false}, {"/", "/x", true}, {"/a/b", "/a", false},
	} {
		if got := Within(tc.dir, tc.p); got != tc.want {
			t.Errorf("Within(%q, %q) = %v, want %v", tc.dir, tc.p, got, tc.want)
		}
	}
}
