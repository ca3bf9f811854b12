package agent

import (
	"context"
	"errors"
	"fmt"
	"net"
	"slices"
	"strings"
	"sync"
	"time"

	"connectrpc.com/connect"
	agentv1 "github.com/ferryvm/ferry/gen/ferry/agent/v1"
	"github.com/ferryvm/ferry/internal/qemutls"
	"github.com/ferryvm/ferry/internal/qmp"
)

// Storage migration, source side: each local disk is mirrored
// (blockdev-mirror, sync=full, write-blocking) to the destination's NBD
// export while the guest runs; the RAM transfer starts when every mirror is
// ready; at pre-switchover (guest paused) the mirrors complete
// (block-job-cancel of a ready mirror: the target holds every write, the
// source keeps its disk) before the source reports pre-switchover. See
// docs/storage.md.

// Mirror states (agentv1.DiskMirror.state).
const (
	mirrorRunning   = "mirroring"
	mirrorReady     = "ready"
	mirrorCompleted = "completed"
	mirrorFailed    = "failed"
	mirrorCancelled = "cancelled"
)

// Bounds of the mirror steps.
const (
	// mirrorPoll paces query-block-jobs while mirrors run.
	mirrorPoll = 100 * time.Millisecond
	// mirrorReadyWait bounds the wait for every mirror to be ready (the
	// engine's stall timeout and deadline usually end it first).
	mirrorReadyWait = 30 * time.Minute
	// mirrorCompleteWait bounds the completion at pre-switchover.
	mirrorCompleteWait = 60 * time.Second
)

// diskMirror is one local disk's mirror job.
type diskMirror struct {
	name      string // the disk (its format node and NBD export name)
	job       string // block job id
	target    string // the NBD client node on the source
	state     string
	jobLen    int64
	jobOffset int64
	allocated int64 // the image's guest data at the start (qemu-img map)
	wrStart   int64 // the guest's written bytes on this disk at the start
	written   int64 // the guest's written bytes since the start
	started   time.Time
	ready     time.Time
	completed time.Time
	err       string
}

// mirrorSet is the mirrors of one outgoing migration.
type mirrorSet struct {
	nbd   string // host:port of the destination's NBD server
	speed int64  // the bulk copy's cap in bytes/s (the migration's bandwidth cap; 0: none)
	// tls is the source's credentials toward the destination (nil:
	// plaintext, the migration's insecure_transport).
	tls *qemutls.Creds

	mu          sync.Mutex
	disks       []*diskMirror
	migrateSent bool // every mirror was ready and migrate was sent
	completing  bool // block-job-cancel sent at pre-switchover
	completed   bool // every mirror completed: the destination's copies are whole
	err         string
	stop        chan struct{} // closed by cancel
	stopped     bool
	pending     []*diskMirror // built by mirrorSet, started by startMirrors
}

// monitor is the VM's QMP monitor (nil when its QEMU is gone).
func (v *vm) monitor() *qmp.Monitor {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.mon
}

// mirrorSet prepares the mirrors a StartOutgoing asks for: each named
// disk must be a local disk of the VM (its image in the VM's directory).
func (v *vm) mirrorSet(ctx context.Context, req *agentv1.StartOutgoingRequest) (*mirrorSet, error) {
	if _, _, err := splitHostPort(req.NbdAddress); err != nil {
		return nil, connect.NewError(connect.CodeInvalidArgument, fmt.Errorf("nbd_address: %w", err))
	}
	v.mu.Lock()
	sp := v.spec
	v.mu.Unlock()
	local := map[string]string{}
	for _, d := range localDiskImages(v.dir, sp) {
		local[d.name] = d.path
	}
	set := &mirrorSet{nbd: req.NbdAddress, stop: make(chan struct{})}
	if req.MaxBandwidthBytes > 0 && req.MaxBandwidthBytes < 1<<40 {
		// The migration's cap covers the disks too: the mirrors copy
		// before the RAM transfer, each phase within the cap.
		set.speed = req.MaxBandwidthBytes / int64(max(1, len(req.MirrorDisks)))
	}
	for i, name := range req.MirrorDisks {
		path, ok := local[name]
		if !ok {
			return nil, connect.NewError(connect.CodeInvalidArgument, fmt.Errorf("mirror_disks[%d]: VM %s has no local disk %q (shared disks and disks given by path are not mirrored)", i, v.name, name))
		}
		data, err := imageDataBytes(ctx, path, true)
		if err != nil {
			return nil, err
		}
		set.pending = append(set.pending, &diskMirror{name: name, job: blockJobID(name), target: nbdNode(name), allocated: data})
	}
	return set, nil
}

// splitHostPort checks a host:port address.
func splitHostPort(addr string) (string, string, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil || host == "" || port == "" || port == "0" {
		return "", "", fmt.Errorf("must be host:port, got %q", addr)
	}
	return host, port, nil
}

func blockJobID(disk string) string { return disk + "-mirror" }
func nbdNode(disk string) string    { return disk + "-nbd" }

// blockJobInfo is one query-block-jobs entry (the fields used).
type blockJobInfo struct {
	Device string `json:"device"`
	Len    int64  `json:"len"`
	Offset int64  `json:"offset"`
	Ready  bool   `json:"ready"`
	Status string `json:"status"`
	Error  string `json:"error"`
}

func queryBlockJobs(ctx context.Context, mon *qmp.Monitor) (map[string]blockJobInfo, error) {
	var jobs []blockJobInfo
	if err := mon.Run(ctx, "query-block-jobs", nil, &jobs); err != nil {
		return nil, fmt.Errorf("query-block-jobs: %w", err)
	}
	out := make(map[string]blockJobInfo, len(jobs))
	for _, j := range jobs {
		out[j.Device] = j
	}
	return out, nil
}

// blockStats returns the guest's written bytes per disk from
// query-blockstats (the devices' backends), keyed by the disk's name.
func blockStats(ctx context.Context, mon *qmp.Monitor) (map[string]int64, error) {
	var st []struct {
		Qdev     string `json:"qdev"`
		NodeName string `json:"node-name"`
		Stats    struct {
			WrBytes int64 `json:"wr_bytes"`
		} `json:"stats"`
	}
	if err := mon.Run(ctx, "query-blockstats", nil, &st); err != nil {
		return nil, fmt.Errorf("query-blockstats: %w", err)
	}
	out := map[string]int64{}
	for _, s := range st {
		if name := diskOfStats(s.Qdev, s.NodeName); name != "" {
			out[name] = s.Stats.WrBytes
		}
	}
	return out, nil
}

// diskOfStats names the disk of a query-blockstats entry: its root node
// is the disk's format node, or its qdev (an id "<disk>-dev", or a QOM path
// such as /machine/peripheral/<disk>-dev/virtio-backend) names the device.
func diskOfStats(qdev, node string) string {
	if node != "" {
		return node
	}
	for _, part := range strings.Split(qdev, "/") {
		if name, ok := strings.CutSuffix(part, "-dev"); ok && name != "" {
			return name
		}
	}
	return ""
}

// qdevWritten is the written bytes of disk in a blockStats answer.
func qdevWritten(stats map[string]int64, disk string) int64 { return stats[disk] }

// startMirrors connects to the destination's NBD export of each disk and
// starts its mirror. A mirror already running (a retried step) is kept.
// On error the mirrors started so far are cancelled again.
func startMirrors(ctx context.Context, mon *qmp.Monitor, set *mirrorSet, disks []*diskMirror) error {
	host, port, err := splitHostPort(set.nbd)
	if err != nil {
		return err
	}
	jobs, err := queryBlockJobs(ctx, mon)
	if err != nil {
		return err
	}
	stats, err := blockStats(ctx, mon)
	if err != nil {
		return err
	}
	for _, d := range disks {
		d.state, d.started = mirrorRunning, time.Now()
		d.wrStart = qdevWritten(stats, d.name)
		set.mu.Lock()
		set.disks = append(set.disks, d)
		set.mu.Unlock()
		if _, ok := jobs[d.job]; ok {
			continue
		}
		add := map[string]any{
			"driver": "nbd", "node-name": d.target, "export": d.name, "discard": "unmap",
			"server": map[string]any{"type": "inet", "host": host, "port": port},
		}
		if set.tls != nil {
			// The NBD client verifies the destination host's certificate.
			add["tls-creds"], add["tls-hostname"] = set.tls.ID, set.tls.Peer
		}
		if err := mon.Run(ctx, "blockdev-add", add, nil); err != nil && !isDuplicateNode(err) {
			err = fmt.Errorf("disk %s: connect to the destination's NBD export %s: %w", d.name, set.nbd, err)
			return withUndo(err, cancelMirrors(context.WithoutCancel(ctx), mon, set))
		}
		mirror := map[string]any{
			"job-id": d.job, "device": d.name, "target": d.target, "sync": "full",
			// Guest writes go to both sides once the mirror is ready: the
			// copy converges whatever the guest's write rate.
			"copy-mode": "write-blocking", "auto-dismiss": false,
		}
		if set.speed > 0 {
			mirror["speed"] = set.speed
		}
		if err := mon.Run(ctx, "blockdev-mirror", mirror, nil); err != nil {
			err = fmt.Errorf("disk %s: blockdev-mirror to %s: %w", d.name, set.nbd, err)
			return withUndo(err, cancelMirrors(context.WithoutCancel(ctx), mon, set))
		}
	}
	return nil
}

// withUndo adds what the undo of a failed step could not do to its error.
func withUndo(err, undo error) error {
	if undo == nil {
		return err
	}
	return errors.Join(err, fmt.Errorf("undo: %w", undo))
}

func isDuplicateNode(err error) bool {
	var ce *qmp.CommandError
	return errors.As(err, &ce) && strings.Contains(ce.Error(), "Duplicate node name")
}

// refresh reads the jobs' progress into the set; it reports whether every
// mirror is ready, and the first failure.
func (set *mirrorSet) refresh(ctx context.Context, mon *qmp.Monitor) (allReady bool, err error) {
	jobs, err := queryBlockJobs(ctx, mon)
	if err != nil {
		return false, err
	}
	stats, _ := blockStats(ctx, mon) // (a failed query keeps the last figure)
	set.mu.Lock()
	defer set.mu.Unlock()
	allReady = true
	for _, d := range set.disks {
		j, ok := jobs[d.job]
		if stats != nil {
			d.written = max(d.written, qdevWritten(stats, d.name)-d.wrStart)
		}
		switch {
		case !ok:
			if d.state == mirrorRunning || d.state == mirrorReady {
				d.state, d.err = mirrorFailed, "the mirror job is gone"
			}
		case j.Error != "":
			d.state, d.err = mirrorFailed, j.Error
		case j.Status == "concluded" || j.Status == "null":
			if d.state != mirrorCompleted {
				d.state, d.completed = mirrorCompleted, time.Now()
			}
		case j.Ready:
			if d.state == mirrorRunning {
				d.state, d.ready = mirrorReady, time.Now()
			}
		}
		if ok {
			// A job's offset only grows; its length is 0 until QEMU has
			// scanned the image, then grows with the guest's writes.
			d.jobLen, d.jobOffset = max(d.jobLen, j.Len), max(d.jobOffset, j.Offset)
		}
		if d.state == mirrorFailed && set.err == "" {
			set.err = fmt.Sprintf("mirror of disk %s to %s failed: %s", d.name, set.nbd, d.err)
		}
		if d.state != mirrorReady && d.state != mirrorCompleted {
			allReady = false
		}
	}
	if set.err != "" {
		return false, errors.New(set.err)
	}
	return allReady, nil
}

// runMirrors waits until every mirror is ready, then starts the RAM
// transfer (migrate to uri). It ends early when the set is cancelled or
// a mirror fails (the set's error; QueryOutgoing reports it as failed).
func (v *vm) runMirrors(out *outgoing, mon *qmp.Monitor, set *mirrorSet) {
	deadline := time.Now().Add(mirrorReadyWait)
	t := time.NewTicker(mirrorPoll)
	defer t.Stop()
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		ready, err := set.refresh(ctx, mon)
		cancel()
		if err == nil && !ready && time.Now().After(deadline) {
			err = fmt.Errorf("the disk mirrors were not ready within %s", mirrorReadyWait)
		}
		if err != nil {
			set.fail(err)
			out.wake()
			v.a.log.Warn("disk mirror failed; the source keeps its disks", "vm", v.name, "migration", out.id, "err", err)
			return
		}
		if ready {
			break
		}
		select {
		case <-set.stop:
			return
		case <-t.C:
		}
	}
	set.mu.Lock()
	stopped := set.stopped
	set.mu.Unlock()
	if stopped {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := mon.Migrate(ctx, out.qemuURI, qmp.MigrateOptions{}); err != nil && !migrationRuns(mon) {
		set.fail(fmt.Errorf("every disk mirror is ready, but migrate to %s failed: %w", out.uri, err))
		out.wake()
		return
	}
	set.mu.Lock()
	set.migrateSent = true
	set.mu.Unlock()
	out.wake()
	v.a.log.Info("disk mirrors ready; RAM transfer started", "vm", v.name, "migration", out.id, "disks", len(set.disks))
}

func (set *mirrorSet) fail(err error) {
	set.mu.Lock()
	if set.err == "" {
		set.err = err.Error()
	}
	set.mu.Unlock()
}

// complete finishes every mirror with the guest paused at pre-switchover:
// block-job-cancel of a ready mirror copies what is left and ends the job
// without switching the source to the target. Then the NBD connections
// are closed. Idempotent; concurrent callers wait for the first.
func (v *vm) completeMirrors(out *outgoing, mon *qmp.Monitor, set *mirrorSet) {
	set.mu.Lock()
	if set.completing || set.err != "" {
		set.mu.Unlock()
		return
	}
	set.completing = true
	disks := append([]*diskMirror(nil), set.disks...)
	set.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), mirrorCompleteWait)
	defer cancel()
	err := func() error {
		for _, d := range disks {
			if err := mon.Run(ctx, "block-job-cancel", map[string]any{"device": d.job}, nil); err != nil {
				return fmt.Errorf("complete the mirror of disk %s: block-job-cancel: %w", d.name, err)
			}
		}
		for {
			if _, err := set.refresh(ctx, mon); err != nil {
				return err
			}
			done := true
			set.mu.Lock()
			for _, d := range set.disks {
				done = done && d.state == mirrorCompleted
			}
			set.mu.Unlock()
			if done {
				return nil
			}
			select {
			case <-ctx.Done():
				return fmt.Errorf("the disk mirrors did not complete within %s of the pause", mirrorCompleteWait)
			case <-time.After(20 * time.Millisecond):
			}
		}
	}()
	if err != nil {
		set.fail(err)
		out.wake()
		v.a.log.Error("disk mirrors did not complete at the switchover; the migration fails, the source keeps its disks", "vm", v.name, "migration", out.id, "err", err)
		return
	}
	for _, d := range disks {
		_ = mon.Run(ctx, "job-dismiss", map[string]any{"id": d.job}, nil)
		if err := mon.Run(ctx, "blockdev-del", map[string]any{"node-name": d.target}, nil); err != nil {
			v.a.log.Warn("close the NBD connection of a completed mirror", "vm", v.name, "disk", d.name, "err", err)
		}
	}
	set.mu.Lock()
	set.completed = true
	set.mu.Unlock()
	out.mu.Lock()
	out.disksMirrored = true
	out.mu.Unlock()
	if err := v.saveOutgoing(out); err != nil {
		v.a.log.Warn("persist that the disks were mirrored", "vm", v.name, "err", err)
	}
	out.wake()
	v.a.log.Info("disk mirrors completed with the guest paused: the destination's copies are whole", "vm", v.name, "migration", out.id)
}

// cancelMirrors stops every mirror of the set (the destination's copies
// are left incomplete: the destination is removed) and closes the NBD
// connections; the source's disks are untouched. Bounded: a job still
// running after mirrorYankAfter has a request stuck on a target that does
// not answer (a cut link; in write-blocking mode the guest's writes wait
// on it too), so its NBD connection is yanked. What could not be done is
// returned; the caller logs it (the destination's copy goes with the
// destination in every case).
func cancelMirrors(ctx context.Context, mon *qmp.Monitor, set *mirrorSet) error {
	set.mu.Lock()
	if !set.stopped {
		set.stopped = true
		close(set.stop)
	}
	disks := append([]*diskMirror(nil), set.disks...)
	completed := set.completed
	set.mu.Unlock()
	if completed {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	var errs []error
	gone := func(err error) bool { // nothing left to stop or remove
		if err == nil || errors.Is(err, qmp.ErrDeviceNotActive) || errors.Is(err, qmp.ErrDeviceNotFound) {
			return true
		}
		msg := strings.ToLower(err.Error())
		return strings.Contains(msg, "not found") || strings.Contains(msg, "failed to find") || strings.Contains(msg, "cannot find")
	}
	for _, d := range disks {
		if err := mon.Run(ctx, "block-job-cancel", map[string]any{"device": d.job, "force": true}, nil); !gone(err) {
			errs = append(errs, fmt.Errorf("disk %s: block-job-cancel: %w", d.name, err))
		}
	}
	start := time.Now()
	yanked := false
	var busy []*diskMirror
	for {
		jobs, err := queryBlockJobs(ctx, mon)
		if err != nil {
			errs = append(errs, err)
			break
		}
		busy = busy[:0]
		for _, d := range disks {
			if j, ok := jobs[d.job]; ok && j.Status != "concluded" && j.Status != "null" {
				busy = append(busy, d)
			}
		}
		if len(busy) == 0 {
			break
		}
		if !yanked && time.Since(start) >= mirrorYankAfter {
			yanked = true
			for _, d := range busy {
				if err := mon.YankBlockNode(ctx, d.target); !gone(err) {
					errs = append(errs, fmt.Errorf("disk %s: yank NBD node %s: %w", d.name, d.target, err))
				}
			}
		}
		if time.Since(start) >= mirrorCancelWait {
			for _, d := range busy {
				errs = append(errs, fmt.Errorf("disk %s: mirror job %s still running %s after block-job-cancel (NBD yanked: %v)", d.name, d.job, mirrorCancelWait, yanked))
			}
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	set.mu.Lock()
	for _, d := range disks {
		if err := mon.Run(ctx, "job-dismiss", map[string]any{"id": d.job}, nil); !gone(err) && !slices.Contains(busy, d) {
			errs = append(errs, fmt.Errorf("disk %s: job-dismiss: %w", d.name, err))
		}
		if err := mon.Run(ctx, "blockdev-del", map[string]any{"node-name": d.target}, nil); !gone(err) && !slices.Contains(busy, d) {
			errs = append(errs, fmt.Errorf("disk %s: close the NBD node %s: %w", d.name, d.target, err))
		}
		if d.state != mirrorFailed {
			d.state = mirrorCancelled
		}
	}
	set.mu.Unlock()
	return errors.Join(errs...)
}

// mirrorYankAfter is how long a cancelled mirror job may keep running
// before its NBD connection is yanked; mirrorCancelWait bounds the whole
// wait.
const (
	mirrorYankAfter  = 2 * time.Second
	mirrorCancelWait = 5 * time.Second
)

// fill adds the mirrors to a QueryOutgoing answer, and says what the
// source's status is while they decide it: mirroring until the RAM
// transfer starts, mirroring again at pre-switchover until the mirrors
// completed, failed when one failed.
func (set *mirrorSet) fill(st *agentv1.OutgoingStatus) {
	set.mu.Lock()
	defer set.mu.Unlock()
	for _, d := range set.disks {
		sent, total := d.progress()
		st.Disks = append(st.Disks, &agentv1.DiskMirror{
			Name: d.name, State: d.state, JobLen: d.jobLen, JobOffset: d.jobOffset, DataBytes: sent,
			StartedAt: ts(d.started), ReadyAt: ts(d.ready), CompletedAt: ts(d.completed), Error: d.err,
		})
		st.DiskBytesTotal += total
		st.DiskBytesTransferred += sent
	}
	switch {
	case set.err != "":
		st.Status, st.Error = "failed", set.err
	case !set.migrateSent:
		st.Status = mirrorRunning
	case st.Status == "pre-switchover" && !set.completed:
		st.Status = mirrorRunning
	}
}

// progress is the disk's data sent and to send. The data to send is the
// image's data at the start plus what the guest wrote since (every write
// is mirrored). QEMU's job offset is what the job processed: the data it
// copied, but also every zero cluster of the source (an image that arrived
// by a mirror has the whole disk in zero clusters, which the mirror's
// write-zeroes requests cross with no payload; its len counts them too).
// So sent is the offset, at most the data: 0 until QEMU scanned the image
// (its job reads 0 of 0 then), never the whole disk.
func (d *diskMirror) progress() (sent, total int64) {
	total = d.allocated + d.written
	return min(d.jobOffset, total), total
}

// wake wakes QueryOutgoing long polls: the reported status moved.
func (out *outgoing) wake() {
	out.mu.Lock()
	close(out.changed)
	out.changed = make(chan struct{})
	out.mu.Unlock()
}
