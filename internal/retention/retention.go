// Package retention decides which finished things to forget: migration
// records in the store and archived per-VM logs on agents are kept up to a
// count and an age, then removed. The decision (Select) is a pure function
// of the items and the clock; Sweep and SweepLogDirs are the thin parts that
// list and remove.
package retention

import (
	"cmp"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"time"
)

// Policy says how much history to keep. A zero field does not limit.
type Policy struct {
	// Count is how many finished items to keep at most (the newest).
	Count int
	// Age is how long a finished item is kept at most.
	Age time.Duration
}

// Validate names the bad field of p.
func (p Policy) Validate() error {
	if p.Count < 0 {
		return fmt.Errorf("retention count: must be >= 0 (0 keeps any number), got %d", p.Count)
	}
	if p.Age < 0 {
		return fmt.Errorf("retention age: must be >= 0 (0 keeps forever), got %s", p.Age)
	}
	return nil
}

// Item is one finished thing that may be forgotten.
type Item struct {
	ID       string
	Finished time.Time
}

// Select returns the IDs of items p no longer keeps at now: those older
// than p.Age and those beyond the newest p.Count. Ties in Finished are
// broken by ID so the choice does not depend on the input's order.
func Select(items []Item, p Policy, now time.Time) []string {
	sorted := slices.Clone(items)
	slices.SortFunc(sorted, func(a, b Item) int {
		if c := b.Finished.Compare(a.Finished); c != 0 {
			return c // newest first
		}
		return cmp.Compare(a.ID, b.ID)
	})
	var out []string
	for i, it := range sorted {
		if (p.Count > 0 && i >= p.Count) || (p.Age > 0 && now.Sub(it.Finished) > p.Age) {
			out = append(out, it.ID)
		}
	}
	return out
}

// SweepLogDirs applies p to the archived logs under root, laid out as
// root/<vm>/<archive>/ (the agent's DATA/logs): each VM keeps its own newest
// p.Count archives, none older than p.Age (by the archive directory's
// modification time). It returns the archives removed; an error on one
// does not stop the others, and all errors are returned joined.
func SweepLogDirs(root string, p Policy, now time.Time) ([]string, error) {
	vms, err := os.ReadDir(root)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("retention: list %s: %w", root, err)
	}
	var removed []string
	var errs []error
	for _, vm := range vms {
		if !vm.IsDir() {
			continue
		}
		dir := filepath.Join(root, vm.Name())
		archives, err := os.ReadDir(dir)
		if err != nil {
			errs = append(errs, fmt.Errorf("retention: list %s: %w", dir, err))
			continue
		}
		var items []Item
		for _, a := range archives {
			info, err := a.Info()
			if err != nil || !a.IsDir() {
				continue
			}
			items = append(items, Item{ID: a.Name(), Finished: info.ModTime()})
		}
		for _, id := range Select(items, p, now) {
			path := filepath.Join(dir, id)
			if err := os.RemoveAll(path); err != nil {
				errs = append(errs, fmt.Errorf("retention: remove %s: %w", path, err))
				continue
			}
			removed = append(removed, path)
		}
		if len(items) > 0 && len(items) == countRemoved(removed, dir) {
			_ = os.Remove(dir) // empty now; a concurrent archive keeps it (ENOTEMPTY)
		}
	}
	return removed, errors.Join(errs...)
}

func countRemoved(removed []string, dir string) int {
	n := 0
	for _, r := range removed {
		if filepath.Dir(r) == dir {
			n++
		}
	}
	return n
}
