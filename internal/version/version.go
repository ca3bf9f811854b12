// Package version is Ferry's own version: read from the build's VCS
// information, overridable at link time for packages, and the rule of which
// agent versions a server accepts.
package version

import (
	"errors"
	"fmt"
	"runtime/debug"
	"strconv"
	"strings"
)

// override is set by packages at link time:
// go build -ldflags "-X github.com/ferryvm/ferry/internal/version.override=1.4.0".
var override string

// revision is set at link time when the build's VCS stamp is missing
// (-buildvcs=false, or a git worktree the go command does not stamp):
// -X github.com/ferryvm/ferry/internal/version.revision=$(git rev-parse HEAD).
var revision string

// ErrIncompatible is returned by Compatible when two versions are more than
// one minor version apart (or of different major versions).
var ErrIncompatible = errors.New("incompatible ferry versions")

// Info is what `ferry version` prints.
type Info struct {
	// Version is the release (link-time override), the module version
	// stamped by `go build`, or "devel".
	Version string `json:"version"`
	// Revision is the VCS commit the binary was built from, if known.
	Revision string `json:"revision,omitempty"`
	// Time is the commit time, if known.
	Time string `json:"time,omitempty"`
	// Modified says the work tree had uncommitted changes.
	Modified bool `json:"modified,omitempty"`
	// Go is the Go toolchain version.
	Go string `json:"go"`
}

// Get returns the version of this binary.
func Get() Info {
	info := Info{Version: "devel"}
	bi, ok := debug.ReadBuildInfo()
	if ok {
		info.Go = bi.GoVersion
		if v := bi.Main.Version; v != "" && v != "(devel)" {
			info.Version = v
		}
		for _, s := range bi.Settings {
			switch s.Key {
			case "vcs.revision":
				info.Revision = s.Value
			case "vcs.time":
				info.Time = s.Value
			case "vcs.modified":
				info.Modified = s.Value == "true"
			}
		}
	}
	if override != "" {
		info.Version = override
	}
	if info.Revision == "" {
		info.Revision = revision
	}
	return info
}

// String returns the version string reported in heartbeats.
func String() string { return Get().Version }

// Parse reads the major and minor numbers of a version such as 1.4.0,
// v1.4.0, v0.0.0-20261201-abcdef or 1.4.0~rc1; ok is false for anything
// else (e.g. "devel").
func Parse(v string) (major, minor int, ok bool) {
	v = strings.TrimPrefix(v, "v")
	parts := strings.SplitN(v, ".", 3)
	if len(parts) < 2 {
		return 0, 0, false
	}
	maj, err1 := strconv.Atoi(parts[0])
	mnr := parts[1]
	if i := strings.IndexAny(mnr, "-+~"); i >= 0 {
		mnr = mnr[:i]
	}
	mi, err2 := strconv.Atoi(mnr)
	if err1 != nil || err2 != nil || maj < 0 || mi < 0 {
		return 0, 0, false
	}
	return maj, mi, true
}

// Compatible reports whether a server of version server accepts an agent of
// version agent: same major version and at most one minor version apart.
// A version that does not parse (a development build, or an agent too old
// to report one) is accepted: only two known releases can be refused.
func Compatible(server, agent string) error {
	smaj, smin, ok1 := Parse(server)
	amaj, amin, ok2 := Parse(agent)
	if !ok1 || !ok2 {
		return nil
	}
	d := smin - amin
	if d < 0 {
		d = -d
	}
	if smaj != amaj || d > 1 {
		return fmt.Errorf("%w: server %s, agent %s: an agent may be at most one minor version older or newer than the server; upgrade the older of the two", ErrIncompatible, server, agent)
	}
	return nil
}
