package agent

import (
	"context"
	"fmt"
	"time"

	"github.com/ferryvm/ferry/internal/qmp"
)

// postcopyWarmup runs the plan's post-copy warm-up on the source, from
// the moment QEMU reports postcopy-active: for PostcopyWarmupMs the
// background stream keeps PostcopyWarmupShare of its max-postcopy-
// bandwidth, then gets it back. Right after the switch the guest faults
// on its kernel's and programs' freshly dirtied pages one at a time, its
// vCPU stalled on each; with the background stream at full share each of
// those pages waits in the link's queue behind background data (see
// planner.PostcopyWarmupShare for the figures). A failure to lower is
// logged and the migration goes on as planned; the restore is persisted
// so a restarted agent does it (reattach.go).
func (v *vm) postcopyWarmup(out *outgoing) {
	out.mu.Lock()
	t, pc := out.warmup, out.postcopyBandwidth
	out.mu.Unlock()
	share, d := t.GetPostcopyWarmupShare(), time.Duration(t.GetPostcopyWarmupMs())*time.Millisecond
	if d <= 0 || share <= 0 || share >= 1 || pc <= 0 {
		return
	}
	low := max(int64(float64(pc)*share), 1<<20)
	out.mu.Lock()
	out.warmupRestore = pc
	out.mu.Unlock()
	if err := v.saveOutgoing(out); err != nil {
		v.a.log.Warn("post-copy warm-up not started: record not written", "vm", v.name, "migration", out.id, "err", err)
		out.mu.Lock()
		out.warmupRestore = 0
		out.mu.Unlock()
		return
	}
	if err := v.setPostcopyBandwidth(out, low, false); err != nil {
		v.a.log.Warn("post-copy warm-up not started", "vm", v.name, "migration", out.id, "err", err)
	} else {
		v.a.log.Info("post-copy warm-up: background stream lowered", "vm", v.name, "migration", out.id,
			"max_postcopy_bandwidth", low, "for", d, "then", pc)
		time.Sleep(d)
	}
	v.endWarmup(out)
}

// endWarmup gives the background stream its max-postcopy-bandwidth back
// (out.warmupRestore) and forgets the warm-up.
func (v *vm) endWarmup(out *outgoing) {
	out.mu.Lock()
	pc := out.warmupRestore
	if mb := out.maxBandwidth; mb > 0 && mb < pc {
		pc = mb // the leader lowered this migration's share meanwhile
	}
	out.mu.Unlock()
	if pc <= 0 {
		return
	}
	if err := v.setPostcopyBandwidth(out, pc, true); err != nil {
		v.a.log.Warn("post-copy warm-up: background stream not restored", "vm", v.name, "migration", out.id, "err", err)
		// Left on: the migration ends slower, never wrong. The record
		// keeps the restore for a restarted agent.
		return
	}
	out.mu.Lock()
	out.warmupRestore = 0
	out.mu.Unlock()
	v.saveAfterEvent(v.saveOutgoing(out))
	v.a.log.Info("post-copy warm-up ended: background stream restored", "vm", v.name, "migration", out.id, "max_postcopy_bandwidth", pc)
}

// setPostcopyBandwidth sets max-postcopy-bandwidth (QEMU applies it to
// the running stream). The warm-up lowers it only while the post-copy runs
// (restore false); the restore also reaches a post-copy paused by a broken
// link, so it resumes at full share. A migration that has ended is left
// alone.
func (v *vm) setPostcopyBandwidth(out *outgoing, b int64, restore bool) error {
	out.mu.Lock()
	status := qmp.MigrationStatus(out.status)
	out.mu.Unlock()
	switch {
	case status == qmp.MigrationStatusPostcopyActive:
	case restore && postcopyStarted(status):
	default:
		return nil
	}
	mon := v.monitor()
	if mon == nil {
		return fmt.Errorf("no QMP monitor")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := mon.MigrateSetParameters(ctx, qmp.MigrationParameters{MaxPostcopyBandwidth: qmp.Ptr(b)}); err != nil {
		return fmt.Errorf("set max-postcopy-bandwidth %d B/s: %w", b, err)
	}
	return nil
}
