// Package planner predicts how each live-migration strategy would behave for
// one VM on one link, chooses the strategy to use, steers a running
// migration, and learns link bandwidths from past migrations.
//
// It is pure: no I/O, no goroutines, no clock. Every function takes numbers
// and returns numbers, so its answers are deterministic and testable.
//
// # The model
//
// Symbols: M is the non-zero guest RAM (Inputs.NonZeroBytes; zero pages cost
// a flag each and are ignored), B the link bandwidth, R the guest's dirty
// rate (distinct pages per second), W its writable working set (distinct
// pages dirtied within one second), S the device state, p the vCPU throttle
// (0..1).
//
// Pages dirtied during a round that lasts t seconds:
//
//	dirtied(t) = min(MemoryBytes, (1−p) · max(R·t, W·min(t, 1 s)))
//
// R·t is the measured rate; the W term says the whole working set is
// rewritten within a second, so a sub-second round re-dirties the fraction
// t/1 s of it (that is the "remaining per round is bounded below by
// min(WSS, R·t)" rule). With W unknown it defaults to min(MemoryBytes, R·1 s)
// and adds nothing; a measured W above R·1 s makes short rounds dirty pages
// at W per second.
//
// Pre-copy: round 1 sends D₁ = M in t₁ = M/B; round i+1 sends
// D_{i+1} = dirtied(D_i/B) — the geometric series D_i ≈ M·ρ^(i−1) with
// ρ = R/B. QEMU switches over before a round once the dirty set is at most
// B·L, where L is the downtime-limit the planner gives QEMU: MaxDowntime
// minus the device state's transfer S/B and the switchover overhead, in whole
// milliseconds (at least 1 ms), because QEMU's own estimate leaves those out.
// After 30 rounds, or once the dirty set stops shrinking, pre-copy is said not
// to converge. Then
//
//	downtime = D_final/B + S/B + SwitchoverSeconds
//	total    = SetupSeconds + Σ D_i/B + downtime
//
// Converge is pre-copy with QEMU's auto-converge, simulated as QEMU 7.2 does
// it: at each dirty-bitmap sync (a round's end) at least one second after the
// previous check, if the bytes dirtied since are more than 50% of the bytes
// sent, a counter rises; every second time the throttle steps up (20%, then
// +10% per step, up to Policy.MaxThrottle), so each step takes about two
// seconds, longer while rounds last more than a second. A throttle p scales
// the dirty rate (and the working set's rewriting) by 1−p.
//
// Post-copy switches at tₛ = M/(B+R), where round 1's remainder M − B·tₛ
// equals what the guest dirtied meanwhile (Tune's postcopy-start; after
// round 1 when R is 0): downtime = S/B + SwitchoverSeconds, and
// total = SetupSeconds + (M + dirtied(tₛ) + S)/B + SwitchoverSeconds, the
// rest arriving afterwards by remote page faults and the background copy.
// Hybrid is pre-copy when that converges within MaxDowntime, otherwise
// post-copy after round 1 (the controller's fallback). Cold stops the guest for
// SetupSeconds + M/B + ColdBootSeconds.
//
// # Choosing
//
// Choose keeps the strategies the policy allows whose prediction converges,
// whose downtime is at most MaxDowntime and whose total is at most
// Policy.MaxTotal. Among the live ones it finds the fastest (smallest total,
// then smallest downtime) and takes the first, in the order precopy,
// converge, hybrid, postcopy, whose total is within 10% of it: the earlier
// ones disturb the guest less. A hybrid that already predicts post-copy ranks
// after postcopy (it would do the same thing under a vaguer name). A
// pre-copy whose guest dirties more than half the rate it would be sent at
// is set aside when converge, hybrid or postcopy qualifies: Ferry's
// pre-copy has no way out (no throttle, and with multifd no post-copy) if
// the estimate it was planned on is wrong. Cold,
// which reboots the guest, is chosen only when no live strategy qualifies
// and cold itself meets both limits. When nothing qualifies Choose returns a
// *NoPlanError naming, per strategy, why it fails and what would help.
package planner
