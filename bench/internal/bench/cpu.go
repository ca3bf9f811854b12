package bench

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/ferryvm/ferry/bench/internal/report"
)

// clockTicks is USER_HZ, the unit of utime and stime in /proc/PID/stat
// (100 on every Linux architecture Ferry runs on).
const clockTicks = 100

// cpuPollInterval is how often the sampler reads /proc: a process that
// exits between two polls loses at most this much of its CPU time.
const cpuPollInterval = 200 * time.Millisecond

// procKey identifies a process across PID reuse.
type procKey struct {
	pid   int
	start uint64
}

// procCPU is one process as the sampler saw it.
type procCPU struct {
	comm        string
	host        string // "h1", "h2" or "" (root namespace, control plane)
	first, last uint64 // utime+stime in ticks
	new         bool   // started after the sampler did
}

// cpuSampler sums the CPU time of the QEMU processes and the system's
// daemons in the two host namespaces (and extra root-namespace PIDs, the
// control plane) while a migration runs, by polling /proc/PID/stat.
type cpuSampler struct {
	netns   map[uint64]string // network namespace inode -> host name
	daemons []string          // comm names counted as migration daemons
	extra   map[int]bool      // root-namespace PIDs counted as control plane
	mu      sync.Mutex
	procs   map[procKey]*procCPU
	stop    chan struct{}
	done    chan struct{}
}

// startCPUSampler starts sampling; hosts maps a network namespace name
// to its host name.
func startCPUSampler(hosts map[string]string, daemons []string, controlPlane []int) (*cpuSampler, error) {
	s := &cpuSampler{netns: map[uint64]string{}, daemons: daemons, extra: map[int]bool{},
		procs: map[procKey]*procCPU{}, stop: make(chan struct{}), done: make(chan struct{})}
	for ns, host := range hosts {
		ino, err := inode(filepath.Join("/run/netns", ns))
		if err != nil {
			return nil, fmt.Errorf("cpu sampler: namespace %s: %w", ns, err)
		}
		s.netns[ino] = host
	}
	for _, pid := range controlPlane {
		s.extra[pid] = true
	}
	s.poll(true)
	go func() {
		defer close(s.done)
		t := time.NewTicker(cpuPollInterval)
		defer t.Stop()
		for {
			select {
			case <-s.stop:
				return
			case <-t.C:
				s.poll(false)
			}
		}
	}()
	return s, nil
}

func inode(path string) (uint64, error) {
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		return 0, fmt.Errorf("stat %s: %w", path, err)
	}
	return st.Ino, nil
}

// poll reads every process once.
func (s *cpuSampler) poll(initial bool) {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		host, ok := "", s.extra[pid]
		if !ok {
			link, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/net", pid))
			if err != nil {
				continue
			}
			ino, err := strconv.ParseUint(strings.TrimSuffix(strings.TrimPrefix(link, "net:["), "]"), 10, 64)
			if err != nil {
				continue
			}
			if host, ok = s.netns[ino]; !ok {
				continue
			}
		}
		comm, ticks, start, err := readStat(pid)
		if err != nil {
			continue
		}
		if host != "" && !strings.HasPrefix(comm, "qemu-system") && !slices.Contains(s.daemons, comm) {
			continue
		}
		k := procKey{pid, start}
		p, seen := s.procs[k]
		if !seen {
			p = &procCPU{comm: comm, host: host, first: ticks, new: !initial}
			if !initial {
				p.first = 0 // started during the migration: all of its time counts
			}
			s.procs[k] = p
		}
		p.last = ticks
	}
}

// readStat returns comm, utime+stime and the start time of pid.
func readStat(pid int) (string, uint64, uint64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return "", 0, 0, err
	}
	s := string(b)
	open, close := strings.IndexByte(s, '('), strings.LastIndexByte(s, ')')
	if open < 0 || close < open {
		return "", 0, 0, fmt.Errorf("/proc/%d/stat: malformed", pid)
	}
	f := strings.Fields(s[close+1:])
	// f[0] is field 3 (state): utime is field 14, stime 15, starttime 22.
	if len(f) < 20 {
		return "", 0, 0, fmt.Errorf("/proc/%d/stat: %d fields", pid, len(f))
	}
	ut, err1 := strconv.ParseUint(f[11], 10, 64)
	st, err2 := strconv.ParseUint(f[12], 10, 64)
	start, err3 := strconv.ParseUint(f[19], 10, 64)
	if err1 != nil || err2 != nil || err3 != nil {
		return "", 0, 0, fmt.Errorf("/proc/%d/stat: bad numbers", pid)
	}
	return s[open+1 : close], ut + st, start, nil
}

// Stop takes a last sample and returns the CPU time used since the start.
func (s *cpuSampler) Stop(src, dst string) *report.CPU {
	close(s.stop)
	<-s.done
	s.poll(false)
	s.mu.Lock()
	defer s.mu.Unlock()
	c := &report.CPU{}
	keys := make([]procKey, 0, len(s.procs))
	for k := range s.procs {
		keys = append(keys, k)
	}
	slices.SortFunc(keys, func(a, b procKey) int { return a.pid - b.pid })
	for _, k := range keys {
		p := s.procs[k]
		sec := float64(p.last-p.first) / clockTicks
		qemu := strings.HasPrefix(p.comm, "qemu-system")
		switch {
		case p.host == "":
			c.ControlPlaneS += sec
		case p.host == src && qemu:
			c.SrcQEMUS += sec
		case p.host == dst && qemu:
			c.DstQEMUS += sec
		case p.host == src:
			c.SrcDaemonS += sec
		case p.host == dst:
			c.DstDaemonS += sec
		}
		where := p.host
		if where == "" {
			where = "root"
		}
		c.Processes = append(c.Processes, fmt.Sprintf("%s %s %d: %.2f s", where, p.comm, k.pid, sec))
	}
	return c
}

// startCPU starts a sampler for system sys on env's hosts.
func startCPU(env *Env, sys System) (*cpuSampler, error) {
	var daemons []string
	var ctl []int
	switch sys.Name() {
	case "ferry":
		daemons = []string{"ferry"}
		if procs, err := env.Cluster.Processes(); err == nil {
			for _, p := range procs {
				if p.Netns == "" && slices.Contains(p.Argv, "server") {
					ctl = append(ctl, p.PID)
				}
			}
		}
	case "libvirt", "libvirt-tuned", "libvirt-plain":
		daemons = []string{"libvirtd"}
	}
	return startCPUSampler(map[string]string{env.Src.Netns: env.Src.Name, env.Dst.Netns: env.Dst.Name}, daemons, ctl)
}
