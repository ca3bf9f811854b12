package netnsutil

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"sort"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// RunDir is where named network namespaces are bind-mounted.
const RunDir = "/run/netns"

// Path returns the bind-mount path of the named namespace.
func Path(name string) string { return RunDir + "/" + name }

func validName(name string) error {
	if name == "" || name == "." || name == ".." || strings.ContainsAny(name, "/\x00") || len(name) > 200 {
		return fmt.Errorf("invalid network namespace name %q: use letters, digits and '-'", name)
	}
	return nil
}

// ipCmd runs iproute2's ip with args and returns its combined output.
func ipCmd(args ...string) error {
	cmd := exec.Command("ip", args...)
	var out bytes.Buffer
	cmd.Stdout = &out
	cmd.Stderr = &out
	if err := cmd.Run(); err != nil {
		if errors.Is(err, exec.ErrNotFound) {
			return fmt.Errorf("run ip %s: %w (install iproute2)", strings.Join(args, " "), err)
		}
		return fmt.Errorf("ip %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(out.String()))
	}
	return nil
}

// Add creates the named network namespace with `ip netns add`. It fails
// with an error wrapping fs.ErrExist if the namespace already exists.
func Add(name string) error {
	if err := validName(name); err != nil {
		return err
	}
	if Exists(name) {
		return fmt.Errorf("create network namespace %q: %w (remove it with `ip netns del %s`)", name, fs.ErrExist, name)
	}
	if err := ipCmd("netns", "add", name); err != nil {
		if Exists(name) {
			return fmt.Errorf("create network namespace %q: %w (created concurrently by someone else)", name, fs.ErrExist)
		}
		return fmt.Errorf("create network namespace %q: %w (needs root)", name, err)
	}
	return nil
}

// Delete removes the named namespace with `ip netns del`. A namespace that
// does not exist is not an error. The kernel frees the namespace, and the
// links inside it, once no process or open handle refers to it any more.
func Delete(name string) error {
	if err := validName(name); err != nil {
		return err
	}
	if !Exists(name) {
		return nil
	}
	if err := ipCmd("netns", "del", name); err != nil {
		if !Exists(name) {
			return nil // removed concurrently
		}
		return fmt.Errorf("delete network namespace %q: %w", name, err)
	}
	if Exists(name) {
		return fmt.Errorf("delete network namespace %q: %s still exists after `ip netns del` (unmount it by hand)", name, Path(name))
	}
	return nil
}

// Exists reports whether /run/netns/NAME exists.
func Exists(name string) bool {
	if validName(name) != nil {
		return false
	}
	_, err := os.Lstat(Path(name))
	return err == nil
}

// List returns the names of all named namespaces, sorted.
func List() ([]string, error) {
	entries, err := os.ReadDir(RunDir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("list network namespaces in %s: %w", RunDir, err)
	}
	names := make([]string, 0, len(entries))
	for _, e := range entries {
		names = append(names, e.Name())
	}
	sort.Strings(names)
	return names, nil
}

// ID identifies a namespace by the device and inode of its nsfs file.
type ID struct {
	Dev uint64
	Ino uint64
}

func statID(path string) (ID, error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return ID{}, err
	}
	return ID{Dev: st.Dev, Ino: st.Ino}, nil
}

// Inode returns the identity of the named namespace. It fails if
// /run/netns/NAME is not a mounted namespace (for example the empty file
// left by an interrupted `ip netns add`).
func Inode(name string) (ID, error) {
	if err := validName(name); err != nil {
		return ID{}, err
	}
	var sfs unix.Statfs_t
	if err := unix.Statfs(Path(name), &sfs); err != nil {
		return ID{}, fmt.Errorf("stat network namespace %q: %w", name, err)
	}
	if sfs.Type != unix.NSFS_MAGIC {
		return ID{}, fmt.Errorf("stat network namespace %q: %s is not a mounted namespace (remove it with `ip netns del %s`)", name, Path(name), name)
	}
	id, err := statID(Path(name))
	if err != nil {
		return ID{}, fmt.Errorf("stat network namespace %q: %w", name, err)
	}
	return id, nil
}

// PIDs returns the processes whose network namespace (that of their main
// thread, /proc/PID/ns/net) is the named one, excluding the caller. Zombies
// are left out: they hold no namespace.
func PIDs(name string) ([]int, error) {
	id, err := Inode(name)
	if err != nil {
		return nil, err
	}
	return PIDsIn(id)
}

// PIDsIn is PIDs for a namespace identity from Inode.
func PIDsIn(id ID) ([]int, error) {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil, fmt.Errorf("scan /proc for processes: %w", err)
	}
	self := os.Getpid()
	var pids []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == self {
			continue
		}
		got, err := statID("/proc/" + e.Name() + "/ns/net")
		if err != nil {
			continue // exited, or a zombie (ENOENT), or a kernel thread
		}
		if got == id {
			pids = append(pids, pid)
		}
	}
	return pids, nil
}
