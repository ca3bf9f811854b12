package core

// postcopyDue reports whether a post-copy migration reached the planner's
// switch point (Options.PostcopyAtFraction) in round 1: QEMU has gone
// through that fraction of the guest's RAM (1 − remaining/total). Pages the
// guest dirties during round 1 are sent twice, so switching earlier sends
// less (the planner's reason is in the report's tuning). The fraction, not
// a byte count, keeps the point right when the planner's non-zero figure
// is stale.
//
// A switch point in bytes (Options.PostcopyAtBytes) takes precedence: QEMU
// scans zero pages without sending them, so where the guest's data sits
// low in its RAM the scanned fraction reaches the point only when nearly
// all the data went — the bench's half scenario switched at round 1's end.
func (r *Record) postcopyDue(out *Outgoing) bool {
	if out.Rounds > 1 {
		return false
	}
	if b := r.Options.PostcopyAtBytes; b > 0 {
		return out.Rounds >= 1 && out.RAMTransferred >= b
	}
	f := r.Options.PostcopyAtFraction
	if f <= 0 || out.Total <= 0 {
		return false
	}
	return 1-float64(out.Remaining)/float64(out.Total) >= f
}
