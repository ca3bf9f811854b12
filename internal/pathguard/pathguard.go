// Package pathguard confines the host files a VM spec may name (kernel,
// initrd, disk images) to a set of allowed directories: the agent's data
// directory and the directories its operator allows. A path is checked
// after resolving every symlink, so a link inside an allowed directory
// cannot point outside it, and only regular files pass (no device nodes,
// FIFOs, sockets or directories).
package pathguard

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
)

// Sentinel errors; Check wraps one of them, so callers can branch with
// errors.Is.
var (
	// ErrRelative: the path is not absolute.
	ErrRelative = errors.New("not an absolute path")
	// ErrDotDot: the path has a ".." element.
	ErrDotDot = errors.New(`has a ".." element`)
	// ErrOutside: the path (after resolving symlinks) is in no allowed directory.
	ErrOutside = errors.New("outside the allowed directories")
	// ErrNotRegular: the path is a device node, directory, FIFO or socket.
	ErrNotRegular = errors.New("not a regular file")
	// ErrMissing: nothing exists at the path.
	ErrMissing = errors.New("not found")
)

// Guard holds the allowed directories, each resolved through its symlinks.
type Guard struct {
	roots []string
}

// New returns a Guard allowing the given directories (and everything below
// them). Each must be absolute; a directory that does not exist yet is kept
// as written (clean) so it works once created.
func New(dirs ...string) (*Guard, error) {
	g := &Guard{}
	for _, d := range dirs {
		if d == "" {
			continue
		}
		if !filepath.IsAbs(d) {
			return nil, fmt.Errorf("allowed directory %q: %w", d, ErrRelative)
		}
		r, err := filepath.EvalSymlinks(d)
		if err != nil {
			r = filepath.Clean(d)
		}
		if !slices.Contains(g.roots, r) {
			g.roots = append(g.roots, r)
		}
	}
	return g, nil
}

// Roots lists the allowed directories (resolved).
func (g *Guard) Roots() []string { return slices.Clone(g.roots) }

// Check verifies that p names an existing regular file inside an allowed
// directory, after resolving symlinks, and returns the resolved path.
func (g *Guard) Check(p string) (string, error) {
	if err := Syntax(p); err != nil {
		return "", err
	}
	r, err := filepath.EvalSymlinks(p)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			if !g.Contains(filepath.Clean(p)) {
				return "", fmt.Errorf("%s: %w (%s)", p, ErrOutside, strings.Join(g.roots, ", "))
			}
			return "", fmt.Errorf("%s: %w", p, ErrMissing)
		}
		return "", fmt.Errorf("resolve %s: %w", p, err)
	}
	if !g.Contains(r) {
		how := ""
		if r != filepath.Clean(p) {
			how = " (it resolves to " + r + ")"
		}
		return "", fmt.Errorf("%s%s: %w (%s)", p, how, ErrOutside, strings.Join(g.roots, ", "))
	}
	fi, err := os.Stat(r)
	if err != nil {
		return "", fmt.Errorf("stat %s: %w", r, err)
	}
	if !fi.Mode().IsRegular() {
		return "", fmt.Errorf("%s (%s): %w", p, fi.Mode().Type(), ErrNotRegular)
	}
	return r, nil
}

// Contains reports whether the resolved path r is an allowed directory or
// below one.
func (g *Guard) Contains(r string) bool {
	for _, root := range g.roots {
		if Within(root, r) {
			return true
		}
	}
	return false
}

// Within reports whether p is dir or below it (both clean and absolute).
func Within(dir, p string) bool {
	if dir == "/" {
		return true
	}
	return p == dir || strings.HasPrefix(p, dir+string(filepath.Separator))
}

// Syntax checks what can be checked without the file system: p is
// absolute and has no ".." element.
func Syntax(p string) error {
	if !filepath.IsAbs(p) {
		return fmt.Errorf("%q: %w", p, ErrRelative)
	}
	for _, e := range strings.Split(p, "/") {
		if e == ".." {
			return fmt.Errorf("%q: %w", p, ErrDotDot)
		}
	}
	return nil
}
