package agent

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"sync"
	"syscall"
	"time"

	"connectrpc.com/connect"
	agentv1 "github.com/ferryvm/ferry/gen/ferry/agent/v1"
	"github.com/ferryvm/ferry/internal/failpoint"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// Cold migration of local disks, source side: CopyDisks starts a copy job
// (keyed by migration id, in the agent's memory: a restarted agent starts
// it again) that streams each local image's data blocks to the
// destination's receiver and reports completed only once the destination
// verified every disk's content digest. The source's images are only
// read; they are removed by the engine's DeleteVM after the owner switched
// and the destination booted.

// CorruptDiskCopy is the failpoint that flips one byte of the first data
// block a disk copy sends (after its digest was taken): an e2e test arms
// it (error(...)*1) to see the destination's checksum refuse the copy.
const CorruptDiskCopy = "agent/disk-copy-corrupt"

// copyJob is one cold migration's copy of the VM's local disks.
type copyJob struct {
	id     string
	cancel context.CancelFunc
	// corrupt flips a byte of the first data block sent (CorruptDiskCopy).
	corrupt bool
	// tls is the stream's mutual TLS with the destination host's agent
	// (nil: plaintext, insecure_transport).
	tls *tls.Config

	mu        sync.Mutex
	status    string // copying, completed, failed
	err       string
	total     int64 // allocated bytes of the images
	sent      int64 // data bytes sent
	verified  int64 // data bytes the destination has read back for its digests
	disks     []*agentv1.DiskMirror
	changed   chan struct{} // closed when the status changes
	started   time.Time
	completed time.Time
}

// CopyDisks implements DiskAgentService: start or report the copy.
func (s *diskService) CopyDisks(ctx context.Context, req *connect.Request[agentv1.CopyDisksRequest]) (*connect.Response[agentv1.OutgoingStatusResponse], error) {
	m := req.Msg
	if m.GetMigrationId() == "" {
		return nil, invalid("migration_id", "required")
	}
	v, ok := s.a.find(m.GetName())
	if !ok {
		return nil, notFound("VM %s is not on host %s", m.GetName(), s.a.cfg.Name)
	}
	job, err := v.copyJobFor(m)
	if err != nil {
		return nil, err
	}
	job.mu.Lock()
	st, ch := job.status, job.changed
	job.mu.Unlock()
	if wait := time.Duration(m.GetWaitMs()) * time.Millisecond; wait > 0 && st == m.GetKnownStatus() {
		select {
		case <-ch:
		case <-time.After(min(wait, 5*time.Second)):
		case <-ctx.Done():
		}
	}
	return connect.NewResponse(&agentv1.OutgoingStatusResponse{Status: job.report()}), nil
}

// copyJobFor returns the VM's copy job of this migration, starting it.
func (v *vm) copyJobFor(m *agentv1.CopyDisksRequest) (*copyJob, error) {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.copy != nil && v.copy.id == m.GetMigrationId() {
		return v.copy, nil
	}
	if v.proc != nil && v.proc.Alive() {
		return nil, failedPrecondition("VM %s runs on host %s: its disks are copied only while it is stopped", v.name, v.a.cfg.Name)
	}
	imgs := localDiskImages(v.dir, v.spec)
	if len(imgs) == 0 {
		return nil, failedPrecondition("VM %s has no local disks on host %s", v.name, v.a.cfg.Name)
	}
	addr, token, ok := strings.Cut(m.GetAddress(), "/")
	if !ok || token == "" {
		return nil, invalid("address", "must be host:port/token as PrepareDiskCopy answered, got %q", m.GetAddress())
	}
	var tlsCfg *tls.Config
	if !m.GetInsecureTransport() {
		c, err := v.a.hostStreamTLS(m.GetDestHost(), "dest_host", false)
		if err != nil {
			return nil, err
		}
		tlsCfg = c
	}
	if v.copy != nil {
		v.copy.cancel()
	}
	ctx, cancel := context.WithCancel(context.Background())
	job := &copyJob{id: m.GetMigrationId(), cancel: cancel, status: "copying", changed: make(chan struct{}), started: time.Now(),
		corrupt: failpoint.Inject(CorruptDiskCopy) != nil, tls: tlsCfg}
	for _, img := range imgs {
		d := &agentv1.DiskMirror{Name: img.name, State: "copying", StartedAt: timestamppb.New(job.started)}
		if fi, err := os.Stat(img.path); err == nil {
			if st, ok := fi.Sys().(*syscall.Stat_t); ok {
				job.total += st.Blocks * 512
			}
		}
		job.disks = append(job.disks, d)
	}
	v.copy = job
	go job.run(ctx, v, imgs, addr, token, m.GetMaxBandwidthBytes())
	v.a.log.Info("copying local disks", "vm", v.name, "migration", job.id, "to", addr, "disks", len(imgs), "allocated", job.total, "transport", transport(tlsCfg == nil))
	return job, nil
}

// stopCopy ends a copy job still running (the VM starts again: its disks
// change from now on, the copy cannot be used). v.mu held.
func (v *vm) stopCopy() {
	if v.copy != nil {
		v.copy.cancel()
	}
}

// report is the job as an OutgoingStatus (status, disk figures).
func (j *copyJob) report() *agentv1.OutgoingStatus {
	j.mu.Lock()
	defer j.mu.Unlock()
	// TransferredBytes is the engine's progress (its stall timer): the
	// data sent, then what the destination verified of it.
	st := &agentv1.OutgoingStatus{Status: j.status, Error: j.err, TransferredBytes: j.sent + j.verified, DiskBytesTotal: j.total, DiskBytesTransferred: j.sent}
	for _, d := range j.disks {
		st.Disks = append(st.Disks, cloneMirror(d))
	}
	if !j.completed.IsZero() {
		st.CompletedAt = timestamppb.New(j.completed)
	}
	return st
}

func cloneMirror(d *agentv1.DiskMirror) *agentv1.DiskMirror {
	return &agentv1.DiskMirror{Name: d.Name, State: d.State, DataBytes: d.DataBytes, StartedAt: d.StartedAt, CompletedAt: d.CompletedAt, Error: d.Error}
}

// finish sets the job's final status.
func (j *copyJob) finish(v *vm, err error) {
	j.mu.Lock()
	defer j.mu.Unlock()
	now := time.Now()
	if err == nil {
		j.status, j.completed = "completed", now
		for _, d := range j.disks {
			d.State, d.CompletedAt = "completed", timestamppb.New(now)
		}
		v.a.log.Info("local disks copied and verified by the destination", "vm", v.name, "migration", j.id, "sent", j.sent, "allocated", j.total, "took", now.Sub(j.started).Round(time.Millisecond))
	} else {
		j.status, j.err = "failed", err.Error()
		for _, d := range j.disks {
			if d.State != "completed" {
				d.State, d.Error = "failed", err.Error()
			}
		}
		v.a.log.Warn("local disk copy failed", "vm", v.name, "migration", j.id, "err", err)
	}
	close(j.changed)
	j.changed = make(chan struct{})
}

// run streams the images to addr and waits for the destination's verdict.
func (j *copyJob) run(ctx context.Context, v *vm, imgs []localImage, addr, token string, rate int64) {
	j.finish(v, j.copy(ctx, imgs, addr, token, rate))
}

func (j *copyJob) copy(ctx context.Context, imgs []localImage, addr, token string, rate int64) error {
	d := net.Dialer{Timeout: 10 * time.Second}
	var c net.Conn
	var err error
	if j.tls != nil {
		c, err = (&tls.Dialer{NetDialer: &d, Config: j.tls}).DialContext(ctx, "tcp", addr)
	} else {
		c, err = d.DialContext(ctx, "tcp", addr)
	}
	if err != nil {
		return fmt.Errorf("connect to the destination's receiver %s: %w", addr, err)
	}
	defer c.Close()
	stop := context.AfterFunc(ctx, func() { c.Close() })
	defer stop()
	h := copyHeader{MigrationID: j.id, Token: token}
	var files []*os.File
	defer func() {
		for _, f := range files {
			f.Close()
		}
	}()
	for _, img := range imgs {
		f, err := os.Open(img.path)
		if err != nil {
			return fmt.Errorf("disk %s: %w", img.name, err)
		}
		files = append(files, f)
		fi, err := f.Stat()
		if err != nil {
			return fmt.Errorf("disk %s: %w", img.name, err)
		}
		h.Disks = append(h.Disks, copyDiskHeader{Name: img.name, Size: fi.Size()})
	}
	w := bufio.NewWriterSize(c, 256<<10)
	r := bufio.NewReader(c)
	_ = c.SetDeadline(time.Now().Add(copyIdle))
	if _, err := w.WriteString(copyMagic); err != nil {
		return err
	}
	if err := writeLine(w, h); err != nil {
		return err
	}
	if err := w.Flush(); err != nil {
		return fmt.Errorf("send the copy header: %w", err)
	}
	var ack copyAck
	if err := readLine(r, &ack); err != nil {
		return fmt.Errorf("the destination's answer to the header: %w", err)
	}
	switch {
	case ack.Error != "":
		return fmt.Errorf("the destination refused the copy: %s", ack.Error)
	case ack.Verified:
		return nil // verified before this agent restarted
	}
	// The destination's progress lines and verdict, read as they come
	// (it verifies each disk while the next one is still on its way).
	verdict := make(chan copyReply, 1)
	go func() {
		for {
			var rep copyReply
			if err := readLine(r, &rep); err != nil {
				verdict <- copyReply{Error: fmt.Sprintf("the destination's verdict: %v", err)}
				return
			}
			if !rep.Progress {
				verdict <- rep
				return
			}
			j.mu.Lock()
			j.verified = rep.VerifiedBytes
			j.mu.Unlock()
		}
	}()
	_ = c.SetReadDeadline(time.Time{})
	start := time.Now()
	corrupt := j.corrupt
	for i, f := range files {
		var diskSent int64
		dig, err := contentDigest(f, h.Disks[i].Size, func(off int64, b []byte) error {
			if corrupt {
				b[0] ^= 0xff // after the digest took the block: the destination's differs
				corrupt = false
			}
			_ = c.SetWriteDeadline(time.Now().Add(copyIdle))
			n, err := writeDataRuns(w, off, b)
			if err != nil {
				return err
			}
			diskSent += n
			j.mu.Lock()
			j.sent += n
			j.disks[i].DataBytes = diskSent
			sent := j.sent
			j.mu.Unlock()
			if rate > 0 {
				if ahead := time.Duration(float64(sent)/float64(rate)*float64(time.Second)) - time.Since(start); ahead > 0 {
					if err := w.Flush(); err != nil {
						return err
					}
					select {
					case <-time.After(ahead):
					case <-ctx.Done():
						return ctx.Err()
					}
				}
			}
			return ctx.Err()
		})
		if err != nil {
			return fmt.Errorf("disk %s: %w", imgs[i].name, errors.Join(err, ctx.Err()))
		}
		if err := writeEndFrame(w, dig); err != nil {
			return fmt.Errorf("disk %s: %w", imgs[i].name, err)
		}
	}
	if err := w.Flush(); err != nil {
		return fmt.Errorf("send the disks: %w", err)
	}
	// The destination reads its copies back for their digests: it reports
	// progress at least every copyIdle while it does.
	for seen := int64(-1); ; {
		j.mu.Lock()
		v := j.verified
		j.mu.Unlock()
		if v == seen {
			return fmt.Errorf("the destination verified nothing for %s", copyIdle)
		}
		seen = v
		select {
		case rep := <-verdict:
			if !rep.OK {
				return fmt.Errorf("the destination refused the copy: %s", rep.Error)
			}
			return nil
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(copyIdle):
		}
	}
}

// copyPage is the granularity at which a block's zero pages are left out.
const copyPage = 4 << 10

// writeDataRuns sends the runs of non-zero pages of block b (at off) as
// data frames; it returns the bytes sent.
func writeDataRuns(w *bufio.Writer, off int64, b []byte) (int64, error) {
	var sent int64
	for i := 0; i < len(b); {
		if allZero(b[i:min(i+copyPage, len(b))]) {
			i += copyPage
			continue
		}
		j := i
		for j < len(b) && !allZero(b[j:min(j+copyPage, len(b))]) {
			j += copyPage
		}
		j = min(j, len(b))
		if err := writeDataFrame(w, off+int64(i), b[i:j]); err != nil {
			return sent, err
		}
		sent += int64(j - i)
		i = j
	}
	return sent, nil
}
