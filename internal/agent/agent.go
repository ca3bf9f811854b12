// Package agent is `ferry agent`: it runs the VMs of one host as QEMU
// processes, owns their taps, disks and QMP sockets, reports the host to the
// control plane, and survives its own restart without touching running VMs
// (it reattaches through each VM's pidfile and QMP socket).
package agent

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"github.com/ferryvm/ferry/gen/ferry/agent/v1/agentv1connect"
	"github.com/ferryvm/ferry/internal/version"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"connectrpc.com/connect"
	ferryv1 "github.com/ferryvm/ferry/gen/ferry/v1"
	"github.com/ferryvm/ferry/gen/ferry/v1/ferryv1connect"
	"github.com/ferryvm/ferry/internal/failover"
	"github.com/ferryvm/ferry/internal/health"
	"github.com/ferryvm/ferry/internal/pathguard"
	"github.com/ferryvm/ferry/internal/pki"
	"github.com/ferryvm/ferry/internal/qemu"
	"github.com/ferryvm/ferry/internal/retention"
	"github.com/ferryvm/ferry/internal/rpcaddr"
	"github.com/ferryvm/ferry/internal/telemetry"
)

// Config configures an Agent.
type Config struct {
	// QEMUScope is qemu.ScopeAuto, ScopeSystemd, ScopeCgroup or ScopeNone:
	// whether each QEMU runs in its own systemd scope or cgroup, outside
	// the agent's cgroup.
	QEMUScope string
	// QEMUCgroup is the cgroup v2 directory under which ScopeCgroup makes
	// one cgroup per QEMU (default qemu.DefaultCgroupParent()).
	QEMUCgroup string
	// Version is the ferry version this agent reports in heartbeats
	// (default version.String()); tests inject one.
	Version string
	// Name is the host's name in the cluster.
	Name string
	// Listen is the agent API address (host:port or unix:///path).
	Listen string
	// Advertise is the address the server dials; defaults to the bound Listen URL.
	Advertise string
	// JoinToken is a one-time agent token (or "@FILE" holding one) used
	// when the agent has no certificate yet in DATA/pki.
	JoinToken string
	// Server is the control plane's addresses, comma-separated: heartbeats
	// go to the one that answered last and fail over in order.
	Server string
	// DataDir holds one directory per VM and the accel probe cache.
	DataDir string
	// AllowPaths are directories, besides DataDir, whose regular files a
	// VM spec may name as kernel, initrd or disk image (--allow-path).
	AllowPaths []string
	// Bridge is the default bridge for VM NICs that name none.
	Bridge string
	// Accel is auto (honour each VM's spec), kvm or tcg (force for every VM).
	Accel string
	// MigrationIP is the address other hosts use for migration traffic;
	// defaults to the first IPv4 address of Bridge.
	MigrationIP string
	// StreamRelay carries an encrypted migration's RAM channels on the
	// agents' own TLS, QEMU sending in plaintext to a local relay
	// (streamrelay.go), instead of QEMU's TLS.
	StreamRelay bool
	// RelayCommand runs a relay process (the ferry binary and its hidden
	// stream-relay command): each relay then lives in a process of its
	// own, in its QEMU's cgroup, and an agent restart leaves its channels
	// running (the restarted agent adopts it). Empty: the relays run
	// inside the agent (unit tests), and a restart ends their channels.
	RelayCommand []string
	// ImageDirs are the directories a spec's disks[].source may name an
	// image in (the agent copies it into the VM's directory); none allows
	// no source.
	ImageDirs []string
	// QEMUBinary is the QEMU system emulator to run.
	QEMUBinary string
	// QEMUUser is the unprivileged user every QEMU runs as (-run-with
	// user=, with -sandbox on); "" or QEMURoot keeps the agent's user,
	// warned. The CLI's default is DefaultQEMUUser. See qemuuser.go.
	QEMUUser string
	// HeartbeatInterval is how often the agent reports to the server.
	HeartbeatInterval time.Duration
	// Telemetry is the background sampler's schedule per running VM
	// (dirty rate, non-zero RAM); zero fields take the defaults of
	// internal/telemetry, negative ones switch that sampling off.
	Telemetry telemetry.Schedule
	// LogRetention bounds the archived per-VM logs (DATA/logs/<vm>/...);
	// zero fields keep everything.
	LogRetention retention.Policy
	// OrphanGrace is how long a QEMU this agent started may run while no
	// record of the control plane names it before the agent stops and
	// removes it (see reaper.go); 0 means DefaultOrphanGrace.
	OrphanGrace time.Duration
	// HealthChecks are the host's health checks (internal/health); their
	// verdict goes into every heartbeat. None: always healthy.
	HealthChecks []health.Check
	// QEMU starts and reattaches QEMU processes; nil means real QEMU.
	// Unit tests pass a fake.
	QEMU QEMURuntime
	Log  *slog.Logger
}

// Agent runs and reports the VMs of one host.
type Agent struct {
	cfg Config
	log *slog.Logger

	qemu  QEMURuntime
	paths *pathguard.Guard         // where a spec's kernel, initrd and disks may be
	ident atomic.Pointer[identity] // the agent's certificate (nil: --insecure or not joined yet)
	ended endedArrivals            // incoming migrations that ended here (aborted, failed)
	// arrivals are the cold migrations' disk copies arriving here (diskcopy_recv.go).
	arrivals diskArrivals
	// qemuUser is the resolved Config.QEMUUser (nil: none).
	qemuUser *qemuUser
	reaper   reaper
	// direct is whether local disks open with O_DIRECT (diskdirect.go).
	direct directIOProbe

	mu  sync.Mutex
	vms map[string]*vm

	teleOnce sync.Once
	tele     *telemetryHub // background telemetry of the running VMs (see telemetry())

	// postcopyProblem is why QEMU's user cannot use userfaultfd ("" = it
	// can), found at start (checkPostcopy).
	postcopyProblem string

	accelMu   sync.Mutex
	autoAccel string // what auto resolves to on this host, once known

	capsMu   sync.Mutex
	qemuCaps *ferryv1.HostQEMU // probed at start (qemucaps.go)

	health *health.Tracker // the host's health checks (nil: none)
}

// New validates cfg and returns an Agent; Run starts it.
func New(cfg Config) (*Agent, error) {
	var errs []error
	if cfg.Version == "" {
		cfg.Version = version.String()
	}
	switch cfg.QEMUScope {
	case "", qemu.ScopeAuto, qemu.ScopeSystemd, qemu.ScopeNone:
	case qemu.ScopeCgroup:
		if cfg.QEMUCgroup == "" {
			parent, err := qemu.DefaultCgroupParent()
			if err != nil {
				errs = append(errs, fmt.Errorf("--qemu-scope cgroup: %w; set --qemu-cgroup to a cgroup v2 directory, or use --qemu-scope none", err))
			}
			cfg.QEMUCgroup = parent
		}
	default:
		errs = append(errs, fmt.Errorf("--qemu-scope: auto, systemd, cgroup or none, got %q", cfg.QEMUScope))
	}
	if cfg.Name == "" {
		errs = append(errs, errors.New("--name: required (the host's name in the cluster)"))
	}
	if cfg.Listen == "" {
		errs = append(errs, errors.New("--listen: required (e.g. 127.0.0.1:7101 or unix:///run/ferry/agent.sock)"))
	}
	if len(failover.Split(cfg.Server)) == 0 {
		errs = append(errs, errors.New("--server: required (the control plane's address)"))
	}
	if err := cfg.LogRetention.Validate(); err != nil {
		errs = append(errs, fmt.Errorf("--keep-logs/--keep-logs-for: %w", err))
	}
	if cfg.DataDir == "" {
		errs = append(errs, errors.New("--data-dir: required"))
	}
	switch cfg.Accel {
	case "":
		cfg.Accel = "auto"
	case "auto", "kvm", "tcg":
	default:
		errs = append(errs, fmt.Errorf("--accel: must be auto, kvm or tcg, got %q", cfg.Accel))
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	if cfg.QEMUBinary == "" {
		cfg.QEMUBinary = "qemu-system-x86_64"
	}
	if cfg.HeartbeatInterval == 0 {
		cfg.HeartbeatInterval = 2 * time.Second
	}
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	if cfg.OrphanGrace == 0 {
		cfg.OrphanGrace = DefaultOrphanGrace
	}
	if cfg.OrphanGrace < 0 {
		return nil, fmt.Errorf("--orphan-grace: must be positive, got %s", cfg.OrphanGrace)
	}
	if cfg.QEMU == nil {
		cfg.QEMU = realQEMU{}
	}
	abs, err := filepath.Abs(cfg.DataDir)
	if err != nil {
		return nil, fmt.Errorf("--data-dir: %w", err)
	}
	cfg.DataDir = abs
	if cfg.MigrationIP == "" && cfg.Bridge != "" {
		cfg.MigrationIP = firstIPv4(cfg.Bridge)
	}
	allow := []string{cfg.DataDir}
	for _, d := range cfg.AllowPaths {
		abs, err := filepath.Abs(d)
		if err != nil {
			return nil, fmt.Errorf("--allow-path %q: %w", d, err)
		}
		allow = append(allow, abs)
	}
	guard, err := pathguard.New(allow...)
	if err != nil {
		return nil, fmt.Errorf("--allow-path: %w", err)
	}
	log := cfg.Log.With("host", cfg.Name)
	qu, err := lookupQEMUUser(cfg.QEMUUser, log)
	if err != nil {
		return nil, err
	}
	return &Agent{cfg: cfg, log: log, vms: map[string]*vm{}, qemu: cfg.QEMU, paths: guard, qemuUser: qu}, nil
}

func firstIPv4(ifname string) string {
	ifc, err := net.InterfaceByName(ifname)
	if err != nil {
		return ""
	}
	addrs, err := ifc.Addrs()
	if err != nil {
		return ""
	}
	for _, a := range addrs {
		if ipn, ok := a.(*net.IPNet); ok && ipn.IP.To4() != nil {
			return ipn.IP.String()
		}
	}
	return ""
}

func (a *Agent) vmsDir() string { return filepath.Join(a.cfg.DataDir, "vms") }

// Run reattaches to the host's VMs, serves the agent API and heartbeats to
// the server until ctx ends. Running VMs are left running when it returns.
func (a *Agent) Run(ctx context.Context) error {
	if err := os.MkdirAll(a.vmsDir(), 0o755); err != nil {
		return fmt.Errorf("create data dir: %w", err)
	}
	if err := a.qemuUser.checkDataDir(a.cfg.DataDir); err != nil {
		return err
	}
	a.checkPostcopy()
	a.loadArrivals()
	if err := a.reattachAll(ctx); err != nil {
		return err
	}
	id, err := a.loadIdentity(ctx)
	if err != nil {
		return err
	}
	pool := x509.NewCertPool()
	pool.AddCert(id.ca)
	rpcaddr.SetCredentials(&rpcaddr.Credentials{TLS: pki.ClientTLS(pool, id.kp, pki.KindServer)})
	tlsCfg := pki.AgentTLS(pool, id.kp)
	a.ident.Store(id)
	go a.renewLoop(ctx, id)
	l, err := rpcaddr.ListenTLS(a.cfg.Listen, tlsCfg)
	if err != nil {
		return err
	}
	advertise := a.cfg.Advertise
	if advertise == "" {
		advertise = rpcaddr.URLTLS(a.cfg.Listen, l, true)
	}
	mux := http.NewServeMux()
	limit := connect.WithReadMaxBytes(rpcaddr.MaxRequestBytes)
	mux.Handle(agentv1connect.NewAgentServiceHandler(&service{a}, limit))
	mux.Handle(agentv1connect.NewMigrationAgentServiceHandler(&migrationService{a}, limit))
	mux.Handle(agentv1connect.NewDiskAgentServiceHandler(&diskService{a}, limit))
	mux.Handle(agentv1connect.NewLivenessAgentServiceHandler(&livenessService{a}, limit))
	hs := rpcaddr.NewHTTPServer(mux)
	errc := make(chan error, 1)
	go func() { errc <- hs.Serve(l) }()
	a.log.Info("agent listening", "url", advertise, "data_dir", a.cfg.DataDir, "accel", a.cfg.Accel, "migration_ip", a.cfg.MigrationIP)

	if a.cfg.Accel == "auto" {
		go a.probeAccel(ctx)
	}
	a.probeQEMU(ctx)
	if len(a.cfg.HealthChecks) > 0 {
		a.health = health.NewTracker(a.cfg.HealthChecks)
		go a.health.Run(ctx)
	}
	go a.heartbeatLoop(ctx, advertise)
	go a.sweepLogsLoop(ctx)
	go a.telemetry().run(ctx)

	select {
	case <-ctx.Done():
	case err := <-errc:
		return fmt.Errorf("agent API: %w", err)
	}
	sctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	_ = hs.Shutdown(sctx)
	a.mu.Lock()
	for _, v := range a.vms {
		v.detach()
	}
	a.mu.Unlock()
	return nil
}

// probeAccel resolves what auto means on this host once at start, so the
// first VM does not wait for the probe and the host report shows it.
func (a *Agent) probeAccel(ctx context.Context) {
	if _, err := a.resolveAccel(ctx, "auto", ""); err != nil {
		a.log.Warn("accel probe", "err", err)
	}
}

// resolveAccel applies the host's --accel policy to a VM's requested accel.
func (a *Agent) resolveAccel(ctx context.Context, requested, kernel string) (string, error) {
	if a.cfg.Accel != "auto" {
		if requested != "auto" && requested != "" && requested != a.cfg.Accel {
			return "", fmt.Errorf("spec.accel: %s requested but host %s runs every VM with --accel %s: use accel: auto or %s", requested, a.cfg.Name, a.cfg.Accel, a.cfg.Accel)
		}
		return a.cfg.Accel, nil
	}
	if requested == "tcg" || requested == "kvm" {
		res, err := qemu.ResolveAccel(ctx, qemu.ResolveRequest{Requested: requested, Binary: a.cfg.QEMUBinary, Kernel: kernel, CacheFile: a.probeCache(), Log: a.log})
		if err != nil {
			return "", err
		}
		return res.Accel, nil
	}
	a.accelMu.Lock()
	defer a.accelMu.Unlock()
	if a.autoAccel != "" {
		return a.autoAccel, nil
	}
	if kernel == "" {
		kernel = hostKernel()
	}
	res, err := qemu.ResolveAccel(ctx, qemu.ResolveRequest{Requested: "auto", Binary: a.cfg.QEMUBinary, Kernel: kernel, CacheFile: a.probeCache(), Log: a.log})
	if err != nil {
		return "", err
	}
	a.autoAccel = res.Accel
	return res.Accel, nil
}

func (a *Agent) probeCache() string { return filepath.Join(a.cfg.DataDir, "accel-probe.json") }

// hostKernel finds a kernel to probe KVM with when no VM names one.
func hostKernel() string {
	m, _ := filepath.Glob("/boot/vmlinuz-*")
	sort.Strings(m)
	if len(m) > 0 {
		return m[len(m)-1]
	}
	return ""
}

func (a *Agent) heartbeatLoop(ctx context.Context, advertise string) {
	hc, base := failover.Client(a.cfg.Server)
	client := ferryv1connect.NewHostServiceClient(hc, base)
	t := time.NewTicker(a.cfg.HeartbeatInterval)
	defer t.Stop()
	failing := false
	for {
		hctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		resp, err := client.Heartbeat(hctx, connect.NewRequest(&ferryv1.HeartbeatRequest{Host: a.report(advertise)}))
		cancel()
		if err == nil && a.reaper.busy.CompareAndSwap(false, true) {
			go func() { // never delays the next heartbeat
				defer a.reaper.busy.Store(false)
				a.reapOrphans(ctx, resp.Msg)
			}()
		}
		switch {
		case err != nil && !failing && connect.CodeOf(err) == connect.CodeFailedPrecondition:
			a.log.Error("server refuses this agent (upgrade the server or the agent); retrying", "agent_version", a.cfg.Version, "server", a.cfg.Server, "err", err)
			failing = true
		case err != nil && !failing && ctx.Err() == nil:
			a.log.Warn("heartbeat failed; retrying", "server", a.cfg.Server, "err", err)
			failing = true
		case err == nil && failing:
			a.log.Info("heartbeat ok again", "server", a.cfg.Server)
			failing = false
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// report describes the host and its VMs for a heartbeat.
func (a *Agent) report(advertise string) *ferryv1.Host {
	a.mu.Lock()
	vms := make([]*vm, 0, len(a.vms))
	for _, v := range a.vms {
		vms = append(vms, v)
	}
	a.mu.Unlock()
	h := &ferryv1.Host{Name: a.cfg.Name, Address: advertise, MigrationIp: a.cfg.MigrationIP, Capacity: hostCapacity(), Qemu: a.hostQEMU(), FerryVersion: a.cfg.Version}
	h.Capacity.DiskFreeBytes = diskFree(a.cfg.DataDir)
	a.accelMu.Lock()
	h.Accel = a.autoAccel
	a.accelMu.Unlock()
	if a.cfg.Accel != "auto" {
		h.Accel = a.cfg.Accel
	}
	// Every stream on TLS unless insecureTransport; QEMU on stream
	// certificates, never the agent's own.
	h.AgentFeatures = []string{pki.FeatureTLSStreams, pki.FeatureQEMUStreamCert}
	h.Health = health.Healthy
	if a.health != nil {
		h.Health, h.HealthDetail = a.health.Verdict()
	}
	for _, v := range vms {
		st := v.status()
		h.Vms = append(h.Vms, st)
		h.Capacity.Vms++
		h.Capacity.AllocatedVcpus += st.Vcpus
		h.Capacity.AllocatedMemoryMib += st.MemoryMib
	}
	sort.Slice(h.Vms, func(i, j int) bool { return h.Vms[i].Name < h.Vms[j].Name })
	return h
}

// find returns the VM called name, if this host has one.
func (a *Agent) find(name string) (*vm, bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	v, ok := a.vms[name]
	return v, ok
}

func (a *Agent) lookup(name string) (*vm, error) {
	v, ok := a.find(name)
	if !ok {
		return nil, connect.NewError(connect.CodeNotFound, fmt.Errorf("VM %q is not on host %s", name, a.cfg.Name))
	}
	return v, nil
}
