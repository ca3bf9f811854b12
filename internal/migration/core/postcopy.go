package core

import (
	"fmt"
	"time"
)

// planRecovering is postcopy-recovering: ResumeOutgoing once, then wait for
// the source to report postcopy-active (sourceStatus). QEMU accepts the
// resume at once and reconnects on its own, so a link still down leaves
// it reconnecting: after StallTimeout without the post-copy running again
// the engine goes back to postcopy-paused and recovers anew (RecoverIncoming
// once the source reports postcopy-paused; if its reconnect succeeds in
// the meantime, its postcopy-active status ends the pause).
func (r *Record) planRecovering(p *planner) {
	if !r.vol.resumeSent {
		p.want(Action{Kind: ActResumeOutgoing, Side: Src, URI: r.RecoverURI})
		return
	}
	bound := r.entered(PostcopyRecovering).Add(r.Options.StallTimeout)
	if p.now.Before(bound) {
		p.wakeAt(bound.Add(time.Millisecond))
		return
	}
	r.RecoverURI = ""
	r.vol.notBefore[ActRecoverIncoming][Dst] = p.now.Add(RecoverEvery)
	r.LastProgressAt = p.now
	r.enter(p.now, PostcopyPaused, fmt.Sprintf("the resumed post-copy did not run again within %s: the link is still down", r.Options.StallTimeout))
	r.vol.resumeSent = false
}

// planRepause handles a source still reconnecting (postcopy-recover) after
// the engine gave up on its resume and went back to postcopy-paused: its
// connection may never fail by itself (a relay's local socket that
// accepted at once, a handshake lost with the link), and RecoverIncoming
// waits for a source in postcopy-paused. StallTimeout after the pause the
// engine pauses the source again, at most every RecoverEvery.
func (r *Record) planRepause(p *planner) {
	due := r.entered(PostcopyPaused).Add(r.Options.StallTimeout)
	if p.now.Before(due) {
		p.wakeAt(due.Add(time.Millisecond))
		return
	}
	n := len(p.acts)
	p.want(Action{Kind: ActPauseMigration, Side: Src})
	if len(p.acts) > n {
		r.vol.notBefore[ActPauseMigration][Src] = p.now.Add(RecoverEvery)
	}
}
