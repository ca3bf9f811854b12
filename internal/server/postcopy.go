package server

import (
	"context"
	"fmt"
	agentv1 "github.com/ferryvm/ferry/gen/ferry/agent/v1"
	"time"

	"connectrpc.com/connect"
)

// finishPostcopy waits while the destination runs and pulls the rest of
// RAM. A link that breaks pauses the guest on the destination
// (postcopy-paused) instead of killing it; Ferry then keeps trying to
// recover (migrate-recover on the destination, migrate resume on the
// source) until the link is back or the recovery window ends. There is no
// rollback in post-copy: the destination holds the newest state.
func (d *driver) finishPostcopy(ctx context.Context) error {
	opt := d.r.snapshot(false).Options
	window := time.Duration(opt.RecoveryWindowMs) * time.Millisecond
	stall := time.Duration(opt.StallTimeoutMs) * time.Millisecond
	var pausedSince time.Time
	var lastTransferred int64 = -1
	lastProgress := time.Now()
	nextRecovery := time.Time{}
	for {
		resp, err := d.pollSource(ctx, 200*time.Millisecond)
		now := time.Now()
		if err != nil {
			time.Sleep(200 * time.Millisecond)
			continue
		}
		out := resp.Msg.Status
		d.record(out)
		switch out.Status {
		case "completed":
			d.endPause(pausedSince, now)
			return nil
		case "failed":
			return fmt.Errorf("post-copy failed on the source: %s; the guest ran on the destination with pages still on the source", orUnknown(out.Error))
		case "postcopy-paused", "postcopy-recover":
			if pausedSince.IsZero() {
				pausedSince = now
				d.note("post-copy paused: the link broke; the guest waits on the destination for the missing pages")
			}
			if now.Sub(pausedSince) > window {
				return fmt.Errorf("post-copy stayed paused for %s (recovery window): the link did not come back; the guest is paused on the destination, its missing pages on the source — restore the link and resume", window)
			}
			// One recovery at a time, and only over a link that answers:
			// QEMU 7.2 crashes when recover/resume are repeated while an
			// earlier attempt is still connecting.
			if out.Status == "postcopy-paused" && now.After(nextRecovery) {
				nextRecovery = now.Add(2 * time.Second)
				if err := d.linkUp(ctx); err != nil {
					d.s.log.Info("post-copy recovery: link still down", "id", d.id(), "err", err)
				} else if err := d.recoverPostcopy(ctx); err != nil {
					d.s.log.Info("post-copy recovery attempt failed; retrying", "id", d.id(), "err", err)
					nextRecovery = now.Add(5 * time.Second)
				} else {
					nextRecovery = now.Add(10 * time.Second)
				}
			}
		case "postcopy-active":
			if !pausedSince.IsZero() {
				d.endPause(pausedSince, now)
				pausedSince = time.Time{}
				d.recoverURI = ""
				d.note("post-copy recovered: the link is back")
			}
			if out.TransferredBytes > lastTransferred {
				lastTransferred, lastProgress = out.TransferredBytes, now
			} else if now.Sub(lastProgress) > stall {
				// A dead link does not error for minutes (TCP keeps
				// retrying): pause both sides so they can recover.
				d.note(fmt.Sprintf("post-copy made no progress for %s: pausing it to recover", stall))
				d.pauseBothSides(ctx)
				lastProgress = now
			}
		}
		if now.Sub(d.r.lastSave) > time.Second {
			d.save(false)
		}
	}
}

// endPause adds a finished pause to the report.
func (d *driver) endPause(since, now time.Time) {
	if since.IsZero() {
		return
	}
	d.r.mu.Lock()
	d.r.m.PostcopyPausedMs += now.Sub(since).Milliseconds()
	d.r.mu.Unlock()
}

// pauseBothSides runs migrate-pause on both QEMUs (errors are expected on
// a side that already noticed the broken link).
func (d *driver) pauseBothSides(ctx context.Context) {
	for _, c := range []*agentClients{d.src, d.dst} {
		pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		_, err := c.mig.PauseMigration(pctx, d.stepReq())
		cancel()
		if err != nil {
			d.s.log.Info("migrate-pause", "id", d.id(), "err", err)
		}
	}
}

// linkUp checks the hosts can reach each other again with a short TCP probe
// between the agents (source → destination migration address).
func (d *driver) linkUp(ctx context.Context) error {
	pctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	lis, err := d.dst.mig.ProbeListen(pctx, connect.NewRequest(&agentv1.ProbeListenRequest{}))
	if err != nil {
		return err
	}
	_, err = d.src.mig.ProbeSend(pctx, connect.NewRequest(&agentv1.ProbeSendRequest{Address: lis.Msg.Address, DurationMs: 50}))
	return err
}

// recoverPostcopy makes the destination listen again (once per pause) and
// the source reconnect to it.
func (d *driver) recoverPostcopy(ctx context.Context) error {
	rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if d.recoverURI == "" { // else the destination still listens from the last attempt
		rec, err := d.dst.mig.RecoverIncoming(rctx, d.stepReq())
		if err != nil {
			return fmt.Errorf("destination migrate-recover: %w", err)
		}
		d.recoverURI = rec.Msg.Uri
	}
	if _, err := d.src.mig.ResumeOutgoing(rctx, connect.NewRequest(&agentv1.ResumeOutgoingRequest{
		Name: d.name(), MigrationId: d.id(), Uri: d.recoverURI,
	})); err != nil {
		return fmt.Errorf("source resume to %s: %w", d.recoverURI, err)
	}
	return nil
}
