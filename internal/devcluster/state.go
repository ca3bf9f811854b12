package devcluster

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"golang.org/x/sys/unix"
)

const (
	stateFile = "cluster.json"
	lockFile  = "cluster.lock"
	// stateVersion is the format version written to the state file.
	stateVersion = 1
)

// State is the content of DIR/cluster.json.
type State struct {
	Version    int       `json:"version"`
	Prefix     string    `json:"prefix"`
	Hosts      int       `json:"hosts"`
	Namespaces []string  `json:"namespaces"`
	Processes  []Process `json:"processes"`
	CreatedAt  time.Time `json:"created_at"`
}

// Process is a daemon started with StartProcess.
type Process struct {
	PID int `json:"pid"`
	// StartTime is field 22 of /proc/PID/stat (clock ticks after boot):
	// with the PID it identifies the process even if the PID is reused.
	StartTime uint64    `json:"start_time"`
	Netns     string    `json:"netns"`
	Argv      []string  `json:"argv"`
	Log       string    `json:"log"`
	StartedAt time.Time `json:"started_at"`
}

func statePath(dir string) string { return filepath.Join(dir, stateFile) }

// readState loads DIR/cluster.json. A missing file yields an error
// wrapping fs.ErrNotExist.
func readState(dir string) (*State, error) {
	b, err := os.ReadFile(statePath(dir))
	if err != nil {
		return nil, fmt.Errorf("read dev cluster state: %w", err)
	}
	var st State
	if err := json.Unmarshal(b, &st); err != nil {
		return nil, fmt.Errorf("parse dev cluster state %s: %w (fix or delete the file; Down with the prefix still works)", statePath(dir), err)
	}
	if st.Version != stateVersion {
		return nil, fmt.Errorf("dev cluster state %s has version %d, want %d", statePath(dir), st.Version, stateVersion)
	}
	return &st, nil
}

// writeState replaces DIR/cluster.json atomically.
func writeState(dir string, st *State) error {
	b, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return fmt.Errorf("encode dev cluster state: %w", err)
	}
	tmp, err := os.CreateTemp(dir, stateFile+".tmp*")
	if err != nil {
		return fmt.Errorf("write dev cluster state in %s: %w", dir, err)
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(append(b, '\n')); err != nil {
		tmp.Close()
		return fmt.Errorf("write dev cluster state %s: %w", tmp.Name(), err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return fmt.Errorf("sync dev cluster state %s: %w", tmp.Name(), err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("close dev cluster state %s: %w", tmp.Name(), err)
	}
	if err := os.Rename(tmp.Name(), statePath(dir)); err != nil {
		return fmt.Errorf("replace dev cluster state %s: %w", statePath(dir), err)
	}
	return nil
}

func removeState(dir string) error {
	if err := os.Remove(statePath(dir)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("remove dev cluster state: %w", err)
	}
	return nil
}

// lockDir takes an exclusive flock on DIR/cluster.lock, serialising Up,
// Down and StartProcess across processes. It returns the unlock function.
func lockDir(dir string) (func(), error) {
	f, err := os.OpenFile(filepath.Join(dir, lockFile), os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, fmt.Errorf("open dev cluster lock: %w", err)
	}
	for {
		err = unix.Flock(int(f.Fd()), unix.LOCK_EX)
		if !errors.Is(err, unix.EINTR) {
			break
		}
	}
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("lock %s: %w", f.Name(), err)
	}
	return func() { f.Close() }, nil
}
