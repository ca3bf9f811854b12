package devcluster

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"slices"
	"strings"
	"syscall"

	"github.com/ferryvm/ferry/internal/netnsutil"
)

// Down tears down the cluster with cfg's prefix and state directory:
//
//  1. it stops the processes recorded in the state file whose PID still
//     has the recorded start time and command line (their process groups
//     too), SIGTERM first and SIGKILL after StopTimeout;
//  2. it stops every other process living in the cluster's namespaces
//     (such as QEMUs started by agents), found by namespace inode, except
//     the caller and its parent (a shell inside a namespace survives);
//  3. it deletes the namespaces, which removes their links, and then the
//     state file.
//
// The namespaces are those in the state file plus every namespace named
// PREFIX-seg, PREFIX-client or PREFIX-hN, so Down also cleans up after a
// crash or without a state file; an unreadable state file is moved aside
// to cluster.json.corrupt when cfg.Prefix is given. If cfg.Prefix is empty
// the state file's prefix is used (DefaultPrefix without one). Down of a cluster that is
// not up does nothing and returns nil. cfg.Hosts is ignored.
func Down(ctx context.Context, cfg Config) error {
	prefixGiven := cfg.Prefix != ""
	if cfg.Dir == "" {
		if !prefixGiven {
			cfg.Prefix = DefaultPrefix
		}
		cfg.Dir = DefaultDir(cfg.Prefix)
	}
	if err := checkPrerequisites(); err != nil {
		return err
	}

	var st *State
	corrupt := false
	if _, err := os.Stat(cfg.Dir); err == nil {
		unlock, err := lockDir(cfg.Dir)
		if err != nil {
			return err
		}
		defer unlock()
		st, err = readState(cfg.Dir)
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			if !prefixGiven {
				return fmt.Errorf("dev cluster down: %w (pass --prefix to clean up by name)", err)
			}
			// Unreadable state: clean up by prefix, and keep the file
			// aside for inspection.
			corrupt = true
		}
	}
	if st != nil {
		if !prefixGiven {
			cfg.Prefix = st.Prefix
		} else if st.Prefix != cfg.Prefix {
			return fmt.Errorf("dev cluster down: state %s belongs to prefix %q, not %q: pass the matching --prefix or --dir",
				statePath(cfg.Dir), st.Prefix, cfg.Prefix)
		}
	}
	if cfg.Prefix == "" {
		cfg.Prefix = DefaultPrefix
	}
	if !prefixRE.MatchString(cfg.Prefix) {
		return fmt.Errorf("dev cluster down: invalid prefix %q", cfg.Prefix)
	}

	namespaces, err := clusterNamespaces(cfg.Prefix, st)
	if err != nil {
		return fmt.Errorf("dev cluster down: %w", err)
	}

	var errs []error
	// 1. Recorded processes, verified before any signal.
	var recorded []int
	groups := map[int]bool{}
	if st != nil {
		for _, p := range st.Processes {
			if !isRecorded(p) {
				continue // gone, or the PID now belongs to someone else
			}
			recorded = append(recorded, p.PID)
			if info, err := readProc(p.PID); err == nil && info.pgrp == p.PID && p.PID != syscall.Getpgrp() {
				groups[p.PID] = true
			}
		}
	}
	if left := stopPIDs(ctx, recorded, groups); len(left) > 0 {
		errs = append(errs, fmt.Errorf("recorded processes %v survived SIGKILL", left))
	}

	// 2. Anything else still inside the namespaces.
	var inside []int
	for _, ns := range namespaces {
		id, err := netnsutil.Inode(ns)
		if err != nil {
			continue // not mounted (half-made): nothing can be inside by name
		}
		pids, err := netnsutil.PIDsIn(id)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		for _, pid := range pids {
			if pid != os.Getppid() && !slices.Contains(inside, pid) {
				inside = append(inside, pid)
			}
		}
	}
	if left := stopPIDs(ctx, inside, nil); len(left) > 0 {
		errs = append(errs, fmt.Errorf("processes %v in the cluster's namespaces survived SIGKILL", left))
	}

	// 3. Namespaces, in reverse creation order.
	for i := len(namespaces) - 1; i >= 0; i-- {
		if err := netnsutil.Delete(namespaces[i]); err != nil {
			errs = append(errs, err)
		}
	}
	if len(errs) == 0 {
		left, err := clusterNamespaces(cfg.Prefix, nil)
		if err != nil {
			errs = append(errs, err)
		} else if len(left) > 0 {
			errs = append(errs, fmt.Errorf("namespaces %s still exist", strings.Join(left, ", ")))
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("dev cluster %q down (state kept in %s, run down again after fixing): %w",
			cfg.Prefix, cfg.Dir, errors.Join(errs...))
	}
	if corrupt {
		aside := statePath(cfg.Dir) + ".corrupt"
		if err := os.Rename(statePath(cfg.Dir), aside); err != nil {
			return fmt.Errorf("dev cluster %q down: move unreadable state aside: %w", cfg.Prefix, err)
		}
	}
	if st != nil {
		if err := removeFerryState(cfg.Dir, st.Hosts); err != nil {
			return fmt.Errorf("dev cluster %q down: %w", cfg.Prefix, err)
		}
		if err := removeState(cfg.Dir); err != nil {
			return fmt.Errorf("dev cluster %q down: %w", cfg.Prefix, err)
		}
	}
	return nil
}

// clusterNamespaces returns the existing-or-recorded namespaces of the
// cluster: those st lists, then those in /run/netns whose names Up would
// give for prefix, in creation order (seg, hosts, client).
func clusterNamespaces(prefix string, st *State) ([]string, error) {
	own := ownNamespaceRE(prefix)
	var names []string
	if st != nil {
		for _, ns := range st.Namespaces {
			// Never touch a namespace the state names unless it is ours:
			// a corrupted or hand-edited file must not delete others'.
			if own.MatchString(ns) && !slices.Contains(names, ns) {
				names = append(names, ns)
			}
		}
	}
	existing, err := netnsutil.List()
	if err != nil {
		return nil, err
	}
	for _, ns := range existing {
		if own.MatchString(ns) && !slices.Contains(names, ns) {
			names = append(names, ns)
		}
	}
	rank := func(ns string) int {
		switch {
		case strings.HasSuffix(ns, "-seg"):
			return 0
		case strings.HasSuffix(ns, "-client"):
			return 2
		}
		return 1
	}
	slices.SortStableFunc(names, func(a, b string) int { return rank(a) - rank(b) })
	if st == nil {
		// Only report what exists.
		names = slices.DeleteFunc(names, func(ns string) bool { return !netnsutil.Exists(ns) })
	}
	return names, nil
}
