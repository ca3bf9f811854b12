package configfile

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spf13/pflag"
)

type testFlags struct {
	listen []string
	ttl    time.Duration
	keep   int
	name   string
	on     bool
}

func newFlags(t *testing.T, args ...string) (*pflag.FlagSet, *testFlags) {
	t.Helper()
	var v testFlags
	fs := pflag.NewFlagSet("test", pflag.ContinueOnError)
	fs.StringSliceVar(&v.listen, "listen", []string{"127.0.0.1:1"}, "")
	fs.DurationVar(&v.ttl, "leader-ttl", 4*time.Second, "")
	fs.IntVar(&v.keep, "keep", 10, "")
	fs.StringVar(&v.name, "name", "", "")
	fs.BoolVar(&v.on, "enabled", false, "")
	if err := fs.Parse(args); err != nil {
		t.Fatal(err)
	}
	return fs, &v
}

func writeFile(t *testing.T, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "c.yaml")
	if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestFileSetsUnsetFlagsAndFlagsWin(t *testing.T) {
	p := writeFile(t, "listen: [a:1, b:2]\nleader-ttl: 7s\nkeep: 1000000\nname: file\nenabled: true\n")
	fs, v := newFlags(t, "--name", "flag")
	m, err := Load(p, false)
	if err != nil {
		t.Fatal(err)
	}
	if err := Apply(fs, m, p); err != nil {
		t.Fatal(err)
	}
	if strings.Join(v.listen, ",") != "a:1,b:2" || v.ttl != 7*time.Second || v.keep != 1000000 || !v.on {
		t.Fatalf("values from the file: %+v", *v)
	}
	if v.name != "flag" {
		t.Fatalf("name = %q: the command line's --name flag must override the file", v.name)
	}
}

func TestUnknownKeyAndBadValueNameTheKey(t *testing.T) {
	p := writeFile(t, "lisen: a:1\nkeep: many\n")
	fs, _ := newFlags(t)
	m, err := Load(p, false)
	if err != nil {
		t.Fatal(err)
	}
	err = Apply(fs, m, p)
	if !errors.Is(err, ErrUnknownKey) || !strings.Contains(err.Error(), `"lisen"`) || !strings.Contains(err.Error(), "key keep") {
		t.Fatalf("Apply: %v; want ErrUnknownKey naming lisen and an error naming keep", err)
	}
}

func TestMissingFile(t *testing.T) {
	p := filepath.Join(t.TempDir(), "absent.yaml")
	if m, err := Load(p, true); err != nil || m != nil {
		t.Fatalf("optional missing file: %v %v, want nothing", m, err)
	}
	if _, err := Load(p, false); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("explicit missing file: %v, want ErrNotExist", err)
	}
}

func TestEffectiveRoundTrips(t *testing.T) {
	fs, _ := newFlags(t, "--listen", "x:1,y:2", "--leader-ttl", "9s", "--keep", "3", "--enabled")
	b, err := Effective(fs)
	if err != nil {
		t.Fatal(err)
	}
	want := "enabled: true\nkeep: 3\nleader-ttl: 9s\nlisten:\n- x:1\n- y:2\nname: \"\"\n"
	if string(b) != want {
		t.Fatalf("Effective:\n%s\nwant:\n%s", b, want)
	}
	fs2, v2 := newFlags(t)
	m, err := Load(writeFile(t, string(b)), false)
	if err != nil {
		t.Fatal(err)
	}
	if err := Apply(fs2, m, "printed"); err != nil {
		t.Fatal(err)
	}
	if strings.Join(v2.listen, ",") != "x:1,y:2" || v2.ttl != 9*time.Second || v2.keep != 3 || !v2.on {
		t.Fatalf("printed config read back: %+v", *v2)
	}
}
