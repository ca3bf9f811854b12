package bench

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"html"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/ferryvm/ferry/internal/devcluster"
)

// LibvirtMinVersion is the libvirt the benchmark compares with (Debian
// 13's; bookworm-backports on Debian 12, installed by `hack/deps.sh
// --libvirt`).
const LibvirtMinVersion = "11.3"

// TunedMigrateFlags are what a skilled operator adds to `virsh migrate`:
// auto-converge, post-copy switched on after the first pre-copy pass,
// parallel (multifd) connections; bandwidth stays libvirt's default,
// unlimited (recorded per run from `virsh migrate-getspeed`).
var TunedMigrateFlags = []string{"--auto-converge", "--postcopy", "--postcopy-after-precopy", "--parallel"}

// LibvirtSystem runs one private libvirtd per host namespace, each in its
// own mount namespace (scripts/libvirtd-ns.sh bind-mounts private
// /etc/libvirt, /run/libvirt, /var/lib/libvirt, /var/cache/libvirt and
// /var/log/libvirt), listening on TCP without auth on the host's address,
// and migrates with `virsh migrate --live --p2p` with libvirt's defaults.
type LibvirtSystem struct {
	*libvirtd
	// name is "libvirt" (defaults), "libvirt-tuned" (flags) or
	// "libvirt-plain" (no --p2p: virsh drives the migration).
	name  string
	flags []string
	// plain migrates with `virsh migrate --live [--copy-storage-all]`
	// as the virsh manual's first example does: no --p2p, no --persistent.
	plain bool
	// Note says why flags differ from TunedMigrateFlags, if they do.
	Note string
}

// libvirtd is the two daemons, shared by the default and tuned systems.
type libvirtd struct {
	env     *Env
	daemons []*proc
	roots   []string
}

// Tuned returns the system that migrates with TunedMigrateFlags through
// the same daemons.
func (s *LibvirtSystem) Tuned() *LibvirtSystem {
	return &LibvirtSystem{libvirtd: s.libvirtd, name: "libvirt-tuned", flags: TunedMigrateFlags}
}

// Plain returns the system that migrates through the same daemons with
// plain `virsh migrate --live --copy-storage-all` (the client, not the
// source daemon, drives it; the domain stays transient on the
// destination). The harness runs it only where a disk is copied.
func (s *LibvirtSystem) Plain() *LibvirtSystem {
	return &LibvirtSystem{libvirtd: s.libvirtd, name: "libvirt-plain", plain: true}
}

// Version is `virsh version` of the source daemon in one line: the
// library, the daemon and the QEMU it drives.
func (s *LibvirtSystem) Version(ctx context.Context) string {
	out, err := s.virsh(ctx, s.env.Src, "version")
	if err != nil {
		return "virsh version: " + err.Error()
	}
	var parts []string
	for _, l := range strings.Split(out, "\n") {
		if l = strings.TrimSpace(l); l != "" {
			parts = append(parts, l)
		}
	}
	return strings.Join(parts, "; ")
}

// libvirtdUUIDs are the host_uuid of the two daemons (they must differ,
// or libvirt refuses to migrate to "the same host").
var libvirtdUUIDs = []string{"5b1c0e6e-b3f1-4f6a-9d1c-000000000001", "5b1c0e6e-b3f1-4f6a-9d1c-000000000002"}

// StartLibvirt prepares the private directories and starts both daemons;
// script is bench/scripts/libvirtd-ns.sh.
func StartLibvirt(ctx context.Context, env *Env, script string) (_ *LibvirtSystem, err error) {
	s := &LibvirtSystem{libvirtd: &libvirtd{env: env}, name: "libvirt"}
	defer func() {
		if err != nil {
			_ = s.Close()
		}
	}()
	for i, h := range []devcluster.Host{env.Src, env.Dst} {
		root := filepath.Join(env.Dir, "libvirt-"+h.Name)
		s.roots = append(s.roots, root)
		if err := prepareLibvirtRoot(root, h.IP, libvirtdUUIDs[i]); err != nil {
			return nil, err
		}
		p, err := startProc(h.Netns, filepath.Join(root, "libvirtd.out"), script, root)
		if err != nil {
			return nil, fmt.Errorf("libvirt: start libvirtd on %s: %w", h.Name, err)
		}
		s.daemons = append(s.daemons, p)
	}
	for i, h := range []devcluster.Host{env.Src, env.Dst} {
		deadline := time.Now().Add(30 * time.Second)
		for {
			_, err := s.virsh(ctx, h, "version")
			if err == nil {
				break
			}
			if s.daemons[i].Exited() || time.Now().After(deadline) {
				return nil, fmt.Errorf("libvirt: libvirtd on %s not answering: %w; log: %s", h.Name, err, tail(s.daemons[i].log, 800))
			}
			time.Sleep(200 * time.Millisecond)
		}
	}
	return s, nil
}

// prepareLibvirtRoot copies /etc/libvirt into root/etc and appends the
// settings that make two daemons coexist on one machine without systemd.
func prepareLibvirtRoot(root, ip, uuid string) error {
	if err := os.RemoveAll(root); err != nil {
		return fmt.Errorf("libvirt: clean %s: %w", root, err)
	}
	for _, d := range []string{"etc", "run", "lib", "cache", "log"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			return fmt.Errorf("libvirt: %w", err)
		}
	}
	if _, err := run(context.Background(), "", "cp", "-a", "/etc/libvirt/.", filepath.Join(root, "etc")); err != nil {
		return fmt.Errorf("libvirt: copy /etc/libvirt (is libvirt-daemon-system installed?): %w", err)
	}
	// No autostarted "default" network (it would want dnsmasq and a bridge).
	autostart := filepath.Join(root, "etc", "qemu", "networks", "autostart")
	if err := os.RemoveAll(autostart); err != nil {
		return fmt.Errorf("libvirt: %w", err)
	}
	appendTo := func(name, text string) error {
		f, err := os.OpenFile(filepath.Join(root, "etc", name), os.O_APPEND|os.O_WRONLY, 0)
		if err != nil {
			return fmt.Errorf("libvirt: %w", err)
		}
		defer f.Close()
		if _, err := f.WriteString("\n# ferry-bench\n" + text); err != nil {
			return fmt.Errorf("libvirt: write %s: %w", name, err)
		}
		return nil
	}
	if err := appendTo("libvirtd.conf", fmt.Sprintf(
		"listen_tls = 0\nlisten_tcp = 1\nlisten_addr = %q\nauth_tcp = \"none\"\nhost_uuid = %q\n", ip, uuid)); err != nil {
		return err
	}
	return appendTo("qemu.conf", "security_driver = \"none\"\nnamespaces = [ ]\ncgroup_controllers = [ ]\n"+
		"stdio_handler = \"file\"\nuser = \"root\"\ngroup = \"root\"\nremember_owner = 0\n")
}

// uri is the libvirt connection URI of host h.
func uri(h devcluster.Host) string { return "qemu+tcp://" + h.IP + "/system" }

// virsh runs virsh against host h's daemon, from inside h's namespace.
func (s *libvirtd) virsh(ctx context.Context, h devcluster.Host, args ...string) (string, error) {
	return run(ctx, h.Netns, "virsh", append([]string{"-c", uri(h)}, args...)...)
}

// Name implements System.
func (s *LibvirtSystem) Name() string { return s.name }

// domainXML is the guest as a libvirt domain: type qemu (TCG), the same
// kernel, initrd, command line, memory, vCPU, CPU model and machine type
// as Ferry's argv, a virtio NIC on the host bridge with the same MAC, the
// serial console to a file, and no balloon or USB.
func domainXML(g Guest, serial string) string {
	e := html.EscapeString
	return fmt.Sprintf(`<domain type='qemu'>
  <name>%s</name>
  <memory unit='MiB'>%d</memory>
  <vcpu>%d</vcpu>
  <os>
    <type arch='x86_64' machine='pc-q35-7.2'>hvm</type>
    <kernel>%s</kernel>
    <initrd>%s</initrd>
    <cmdline>%s</cmdline>
  </os>
  <features><acpi/></features>
  <cpu mode='custom' match='exact' check='none'><model fallback='forbid'>qemu64</model></cpu>
  <clock offset='utc'/>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>restart</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <controller type='usb' model='none'/>
    <interface type='bridge'>
      <source bridge='br0'/>
      <mac address='%s'/>
      <model type='virtio'/>
    </interface>
    <serial type='file'><source path='%s'/><target port='0'/></serial>
    <memballoon model='none'/>%s
  </devices>
</domain>
`, e(g.Name), g.MemoryMiB, g.Vcpus, e(g.Kernel), e(g.Initrd), e(g.Cmdline), e(g.MAC), e(serial), diskXML(g))
}

// libvirtImage is where a libvirt guest's local disk lives: under
// /var/lib/libvirt, which each daemon's mount namespace maps to its own
// directory (the two hosts do not share it).
func libvirtImage(g Guest) string { return "/var/lib/libvirt/images/" + g.Name + ".qcow2" }

// diskXML is the guest's local disk as a domain device ("" without one).
func diskXML(g Guest) string {
	if g.DiskSource == "" {
		return ""
	}
	return fmt.Sprintf(`
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2' cache='none'/>
      <source file='%s'/>
      <target dev='vda' bus='virtio'/>
    </disk>`, html.EscapeString(libvirtImage(g)))
}

// hostImage is libvirtImage of g as this process sees it on host i (its
// daemon's private lib directory).
func (s *libvirtd) hostImage(i int, g Guest) string {
	return filepath.Join(s.roots[i], "lib", "images", g.Name+".qcow2")
}

// prepareDisks gives g its disk on the source (a sparse copy of the
// scenario's image, as Ferry's agent makes it) and an empty image of the
// same size on the destination, which --copy-storage-all needs there.
func (s *libvirtd) prepareDisks(ctx context.Context, g Guest) error {
	if g.DiskSource == "" {
		return nil
	}
	for i := range s.roots {
		if err := os.MkdirAll(filepath.Dir(s.hostImage(i, g)), 0o755); err != nil {
			return fmt.Errorf("libvirt: %w", err)
		}
	}
	if _, err := run(ctx, "", "qemu-img", "convert", "-q", "-S", "4k", "-O", "qcow2", g.DiskSource, s.hostImage(0, g)); err != nil {
		return fmt.Errorf("libvirt: copy the disk image: %w", err)
	}
	if _, err := run(ctx, "", "qemu-img", "create", "-q", "-f", "qcow2", s.hostImage(1, g), fmt.Sprintf("%dM", g.DiskMiB)); err != nil {
		return fmt.Errorf("libvirt: create the destination's disk image: %w", err)
	}
	return nil
}

// Boot implements System.
func (s *LibvirtSystem) Boot(ctx context.Context, g Guest) (int, error) {
	if err := s.prepareDisks(ctx, g); err != nil {
		return 0, err
	}
	xmlPath := filepath.Join(s.env.Dir, g.Name+".xml")
	if err := os.WriteFile(xmlPath, []byte(domainXML(g, "/var/log/libvirt/"+g.Name+"-serial.log")), 0o644); err != nil {
		return 0, fmt.Errorf("libvirt: write domain XML: %w", err)
	}
	if _, err := s.virsh(ctx, s.env.Src, "create", xmlPath); err != nil {
		return 0, fmt.Errorf("libvirt: create domain: %w", err)
	}
	// The pid file lives in the daemon's private /run/libvirt.
	b, err := os.ReadFile(filepath.Join(s.roots[0], "run", "qemu", g.Name+".pid"))
	if err != nil {
		return 0, fmt.Errorf("libvirt: read QEMU pid: %w", err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		return 0, fmt.Errorf("libvirt: parse QEMU pid %q: %w", b, err)
	}
	return pid, nil
}

// jobStats parses `virsh domjobinfo --rawstats` ("key: value" lines).
func jobStats(out string) map[string]string {
	m := map[string]string{}
	sc := bufio.NewScanner(strings.NewReader(out))
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if ok {
			m[strings.TrimSpace(k)] = strings.TrimSpace(v)
		}
	}
	return m
}

func statInt(m map[string]string, key string) int64 {
	n, _ := strconv.ParseInt(m[key], 10, 64)
	return n
}

// multifdPostcopyRefusal is how QEMU 10.0 refuses post-copy together
// with multifd (libvirt's --parallel).
const multifdPostcopyRefusal = "not yet compatible with multifd"

// Migrate implements System. When QEMU refuses the tuned combination of
// post-copy and --parallel (QEMU 10.0 cannot do post-copy over multifd),
// the system drops --parallel, as an operator would, says so in Note and
// the run's raw report, and migrates again; the guest is still on the
// source (the refusal comes before anything is sent).
func (s *LibvirtSystem) Migrate(ctx context.Context, g Guest, limit time.Duration) (Report, error) {
	rep, err := s.migrate(ctx, g, limit)
	if err != nil || rep.Status != "failed" || !strings.Contains(rep.Error, multifdPostcopyRefusal) || !slices.Contains(s.flags, "--parallel") {
		return rep, err
	}
	s.Note = fmt.Sprintf("QEMU refused %s (%q): --parallel dropped, the tuned runs use %s",
		strings.Join(s.flags, " "), firstLineOf(rep.Error), strings.Join(slices.DeleteFunc(slices.Clone(s.flags), func(f string) bool { return f == "--parallel" }), " "))
	s.flags = slices.DeleteFunc(slices.Clone(s.flags), func(f string) bool { return f == "--parallel" })
	retry, err := s.migrate(ctx, g, limit)
	retry.Decisions = append(retry.Decisions, fmt.Sprintf("first attempt failed after %d ms: %s", rep.WallMs, s.Note))
	return retry, err
}

// Flags is the tuned system's flags in use and what changed them.
func (s *LibvirtSystem) Flags() string {
	f := strings.Join(s.flags, " ")
	if f == "" {
		f = "(defaults)"
	}
	if s.Note != "" {
		f += "; " + s.Note
	}
	return f
}

func (s *LibvirtSystem) migrate(ctx context.Context, g Guest, limit time.Duration) (Report, error) {
	var rep Report
	src, dst := s.env.Src, s.env.Dst
	logPath := filepath.Join(s.env.Dir, g.Name+"-migrate.log")
	_ = os.Remove(logPath)
	speed, _ := s.virsh(ctx, src, "migrate-getspeed", g.Name)
	args := append([]string{"-c", uri(src), "migrate", "--live", "--p2p"}, s.flags...)
	if g.DiskSource != "" {
		args = append(args, "--copy-storage-all", "--persistent")
	}
	if s.plain {
		args = []string{"-c", uri(src), "migrate", "--live"}
		if g.DiskSource != "" {
			args = append(args, "--copy-storage-all")
		}
	}
	args = append(args, g.Name, uri(dst), "--migrateuri", "tcp://"+dst.IP)
	t0 := time.Now()
	mig, err := startProc(src.Netns, logPath, "virsh", args...)
	if err != nil {
		return rep, fmt.Errorf("libvirt: start virsh migrate: %w", err)
	}
	defer mig.Stop(5 * time.Second)
	aborted := false
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	// The source's last running job statistics: after a post-copy
	// migration the destination keeps no completed statistics.
	var lastSrc map[string]string
	var lastSrcMs int64
	var diskMax int64 // the largest disk_processed the source reported while it ran
	for !mig.Exited() {
		select {
		case <-ctx.Done():
			_, _ = s.virsh(context.Background(), src, "domjobabort", g.Name)
			return rep, ctx.Err()
		case <-mig.done:
			continue
		case <-tick.C:
		}
		if !aborted && time.Since(t0) > limit {
			aborted = true
			if _, err := s.virsh(ctx, src, "domjobabort", g.Name); err != nil && !mig.Exited() {
				return rep, fmt.Errorf("libvirt: domjobabort at the %s cap: %w", limit, err)
			}
		}
		out, err := s.virsh(ctx, src, "domjobinfo", g.Name, "--rawstats")
		if err != nil {
			continue // the domain may just have left the source
		}
		st := jobStats(out)
		diskMax = max(diskMax, statInt(st, "disk_processed")) // (the storage copy runs before the first RAM round)
		if statInt(st, "data_total") == 0 {
			continue // the job has not started its first round yet
		}
		lastSrc, lastSrcMs = st, time.Since(t0).Milliseconds()
		rep.Samples = append(rep.Samples, Sample{TMs: lastSrcMs,
			RemainingBytes: statInt(st, "data_remaining"), TransferredBytes: statInt(st, "data_processed")})
	}
	rep.WallMs = time.Since(t0).Milliseconds()
	migErr := mig.err
	// Completed statistics: on the destination after success, on the
	// source after a failure or abort.
	statsHost := dst
	if migErr != nil {
		statsHost = src
	}
	out, err := s.virsh(ctx, statsHost, "domjobinfo", g.Name, "--completed", "--keep-completed", "--rawstats")
	st := jobStats(out)
	switch {
	case migErr == nil:
		rep.Status = "completed"
	case aborted:
		rep.Status = "aborted"
	default:
		rep.Status = "failed"
	}
	if migErr != nil {
		rep.Error = strings.TrimSpace(tail(logPath, 600))
	}
	if err == nil && statInt(st, "time_elapsed") == 0 && lastSrc != nil {
		// No completed statistics (post-copy): the source's last ones,
		// the elapsed time carried forward to virsh's exit. The downtime
		// is unknown unless the source reported one.
		lastSrc["bench_stats_from"] = fmt.Sprintf("source's last running statistics at %d ms (the destination kept no completed ones)", lastSrcMs)
		lastSrc["time_elapsed"] = strconv.FormatInt(statInt(lastSrc, "time_elapsed")+rep.WallMs-lastSrcMs, 10)
		if _, ok := lastSrc["downtime"]; !ok && migErr == nil {
			rep.DowntimeUnknown = true
		}
		st = lastSrc
	}
	if err == nil {
		rep.TotalMs = statInt(st, "time_elapsed")
		rep.DowntimeMs = statInt(st, "downtime")
		rep.TransferredBytes = statInt(st, "data_processed")
		// The destination's completed statistics carry no disk figures:
		// the source's running ones do.
		rep.DiskBytes = max(statInt(st, "disk_processed"), diskMax)
		rep.Rounds = statInt(st, "memory_iteration")
		rep.BandwidthMiBps = float64(statInt(st, "memory_bps")) / (1 << 20)
		st["bench_migrate_getspeed_MiBps"] = strings.TrimSpace(speed)
		st["bench_virsh_migrate"] = strings.Join(args, " ")
		rep.Raw, _ = json.Marshal(st)
	} else if migErr == nil {
		return rep, fmt.Errorf("libvirt: completed job statistics: %w", err)
	}
	if !rep.Completed() {
		rep.DowntimeMs = 0 // the guest never switched over
	}
	return rep, nil
}

// Destroy implements System.
func (s *LibvirtSystem) Destroy(ctx context.Context, g Guest) error {
	var errs []error
	for _, h := range []devcluster.Host{s.env.Src, s.env.Dst} {
		if _, err := s.virsh(ctx, h, "domstate", g.Name); err != nil {
			continue // not on this host
		}
		if _, err := s.virsh(ctx, h, "destroy", g.Name); err != nil {
			errs = append(errs, fmt.Errorf("libvirt: destroy %s on %s: %w", g.Name, h.Name, err))
		}
		_, _ = s.virsh(ctx, h, "undefine", g.Name) // --persistent defined it on the destination
	}
	if g.DiskSource != "" {
		for i := range s.roots {
			if err := os.Remove(s.hostImage(i, g)); err != nil && !os.IsNotExist(err) {
				errs = append(errs, fmt.Errorf("libvirt: remove disk image: %w", err))
			}
		}
	}
	return errors.Join(errs...)
}

// Close stops both daemons (their mount namespaces, and with them the bind
// mounts, go away with them) and removes the private directories. The
// default and tuned systems share them: the first Close stops them.
func (s *libvirtd) Close() error {
	for _, p := range s.daemons {
		p.Stop(10 * time.Second)
	}
	var errs []error
	for _, r := range s.roots {
		if err := os.RemoveAll(r); err != nil {
			errs = append(errs, fmt.Errorf("libvirt: remove %s: %w", r, err))
		}
	}
	s.daemons, s.roots = nil, nil
	return errors.Join(errs...)
}

// ensureLibvirt installs libvirt LibvirtMinVersion through `hack/deps.sh
// --libvirt` unless libvirtd and virsh of at least that version are there.
func ensureLibvirt(ctx context.Context, o Options) error {
	if v, err := run(ctx, "", "libvirtd", "--version"); err == nil {
		f := strings.Fields(v)
		if _, err := exec.LookPath("virsh"); err == nil && len(f) > 0 && versionAtLeast(f[len(f)-1], LibvirtMinVersion) {
			return nil
		}
	}
	fmt.Fprintf(o.Out, "==> installing libvirt %s (hack/deps.sh --libvirt)\n", LibvirtMinVersion)
	if _, err := run(ctx, "", "bash", filepath.Join(o.Repo, "hack", "deps.sh"), "--libvirt"); err != nil {
		return fmt.Errorf("install libvirt %s: %w", LibvirtMinVersion, err)
	}
	return nil
}

// versionAtLeast compares dotted version numbers ("11.3.0" >= "11.3").
func versionAtLeast(have, want string) bool {
	h, w := strings.Split(have, "."), strings.Split(want, ".")
	for i := range w {
		var hi, wi int
		if i < len(h) {
			hi, _ = strconv.Atoi(h[i])
		}
		wi, _ = strconv.Atoi(w[i])
		if hi != wi {
			return hi > wi
		}
	}
	return true
}
