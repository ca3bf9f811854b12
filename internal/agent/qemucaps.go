package agent

import (
	"context"
	"path/filepath"
	"time"

	"google.golang.org/protobuf/proto"

	ferryv1 "github.com/ferryvm/ferry/gen/ferry/v1"
	"github.com/ferryvm/ferry/internal/qemucaps"
)

// qemuProbeTimeout bounds the capability probe at start.
const qemuProbeTimeout = 30 * time.Second

func (a *Agent) qemuCapsCache() string { return filepath.Join(a.cfg.DataDir, "qemu-caps.json") }

// probeQEMU finds out what the host's QEMU offers, once at start (cached by
// binary path, size and modification time in DATA_DIR/qemu-caps.json), for
// the host record. A failed probe is reported, not fatal: VMs may still run.
func (a *Agent) probeQEMU(ctx context.Context) {
	ctx, cancel := context.WithTimeout(ctx, qemuProbeTimeout)
	defer cancel()
	res, err := qemucaps.Probe(ctx, a.cfg.QEMUBinary, a.qemuCapsCache())
	var h *ferryv1.HostQEMU
	if err != nil {
		a.log.Warn("QEMU capability probe failed", "binary", a.cfg.QEMUBinary, "err", err)
		h = &ferryv1.HostQEMU{Binary: a.cfg.QEMUBinary, ProbeError: err.Error()}
	} else {
		a.log.Info("QEMU capabilities", "binary", res.Caps.Binary, "version", res.Caps.Version.String(), "cached", res.Cached, "took", res.Took,
			"machines", len(res.Caps.Machines), "cpu_models", len(res.Caps.CPUModels), "features", qemucaps.Supported(res.Caps))
		h = qemucaps.ToProto(res)
	}
	h.PostcopyUnavailable = a.postcopyProblem
	a.capsMu.Lock()
	a.qemuCaps = h
	a.capsMu.Unlock()
}

// hostQEMU returns a copy of the probed capabilities (nil before the probe).
func (a *Agent) hostQEMU() *ferryv1.HostQEMU {
	a.capsMu.Lock()
	defer a.capsMu.Unlock()
	if a.qemuCaps == nil {
		return nil
	}
	return proto.Clone(a.qemuCaps).(*ferryv1.HostQEMU)
}

// checkPostcopy finds out at start whether this host's QEMU user can open
// userfaultfd (post-copy's page faults on a destination): the answer goes
// into the host record and a post-copy arrival is refused without it.
func (a *Agent) checkPostcopy() {
	a.postcopyProblem = a.qemuUser.postcopyProblem(userfaultfdDev, unprivilegedUFFDSysctl)
	if a.postcopyProblem != "" {
		a.log.Warn("post-copy arrivals refused on this host", "reason", a.postcopyProblem)
	}
}
