package core

// postcopyDue reports whether a post-copy migration reached the planner's
// switch point (Options.PostcopyAfterBytes) before the end of round 1:
// pages the guest dirties during round 1 are sent twice, so switching
// earlier sends less (the planner's reason is in the report's tuning).
func (r *Record) postcopyDue(out *Outgoing) bool {
	return r.Options.PostcopyAfterBytes > 0 && out.Transferred >= r.Options.PostcopyAfterBytes
}
