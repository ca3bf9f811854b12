package cli

import (
	"fmt"
	"slices"
	"strings"
	"text/tabwriter"
	"time"
	"unicode/utf8"

	ferryv1 "github.com/ferryvm/ferry/gen/ferry/v1"
)

// This file renders migrations for people: the live progress line of
// `ferry migrate --wait`, the report block and the details of
// `ferry migration get`. Everything here is pure (no I/O, no clock) so it
// can be tested with exact strings.

const (
	mib = 1 << 20
	// maxBar is the widest progress bar drawn, whatever the terminal width.
	maxBar = 30
	// minBar is the narrowest bar drawn.
	minBar = 10
	// typicalTail is the width of a typical line's numbers, which the bar
	// leaves room for: "120.0/512.0 MiB  360.0 MiB left  80.0 MiB/s  dirty
	// 16.0 MiB/s  round 2  3.10 s".
	typicalTail = 78
	// maxSampleRows bounds the samples table of `ferry migration get`.
	maxSampleRows = 30
)

// fmtMiB renders a byte count in MiB with one decimal ("301.2").
func fmtMiB(b int64) string {
	return fmt.Sprintf("%.1f", float64(b)/mib)
}

// fmtMs renders milliseconds for people: "38 ms", "2.41 s", "12.3 s",
// "2m05s", "1h02m03s".
func fmtMs(ms int64) string {
	if ms < 0 {
		ms = 0
	}
	switch {
	case ms < 1000:
		return fmt.Sprintf("%d ms", ms)
	case ms < 10_000:
		return fmt.Sprintf("%.2f s", float64(ms)/1000)
	case ms < 60_000:
		return fmt.Sprintf("%.1f s", float64(ms)/1000)
	case ms < 3_600_000:
		s := ms / 1000
		return fmt.Sprintf("%dm%02ds", s/60, s%60)
	}
	s := ms / 1000
	return fmt.Sprintf("%dh%02dm%02ds", s/3600, s/60%60, s%60)
}

// fmtRate renders a rate in MiB/s with one decimal.
func fmtRate(r float64) string {
	return fmt.Sprintf("%.1f MiB/s", r)
}

// plural renders "1 round" / "5 rounds".
func plural(n int64, word string) string {
	if n == 1 {
		return fmt.Sprintf("%d %s", n, word)
	}
	return fmt.Sprintf("%d %ss", n, word)
}

// migrationElapsed is how long a migration took (total_ms), or has been
// running as of its last update, from the server's clock only.
func migrationElapsed(m *ferryv1.Migration) time.Duration {
	if ms := m.GetTotalMs(); ms > 0 {
		return time.Duration(ms) * time.Millisecond
	}
	start := m.GetStartedAt()
	if start == nil || !start.IsValid() || start.AsTime().IsZero() {
		return 0
	}
	end := m.GetFinishedAt()
	if end == nil || !end.IsValid() || end.AsTime().IsZero() {
		end = m.GetUpdatedAt()
	}
	if end == nil || !end.IsValid() || end.AsTime().Before(start.AsTime()) {
		return 0
	}
	return end.AsTime().Sub(start.AsTime())
}

// progressRate is the current transfer rate in MiB/s: from the last two
// samples when they show progress, else the migration's bandwidth_mibps.
func progressRate(m *ferryv1.Migration) float64 {
	s := m.GetSamples()
	if n := len(s); n >= 2 {
		a, b := s[n-2], s[n-1]
		dt := b.GetTMs() - a.GetTMs()
		db := b.GetTransferredBytes() - a.GetTransferredBytes()
		if dt > 0 && db > 0 {
			return float64(db) / mib / (float64(dt) / 1000)
		}
	}
	return m.GetBandwidthMibps()
}

// renderProgress renders the one-line progress of a running migration,
// at most width-1 characters wide (so a terminal never wraps it), with the
// elapsed time from the migration itself.
func renderProgress(m *ferryv1.Migration, width int) string {
	return progressLine(m, width, migrationElapsed(m))
}

// progressLine is renderProgress with the elapsed time given (the live view
// advances it between polls). Example (110 columns):
//
//	transferring  [###..........]  120.0/512.0 MiB  360.0 MiB left  80.0 MiB/s  dirty 16.0 MiB/s  round 2  3.10 s
//
// The bar's width depends only on the terminal's width, so it does not
// jitter as the numbers change; when the line does not fit, the least
// useful fields go first (dirty rate, round, remaining, rate), then the bar,
// then the line is cut.
func progressLine(m *ferryv1.Migration, width int, elapsed time.Duration) string {
	if width <= 0 {
		width = 80
	}
	state := m.GetState()
	if state == "" {
		state = orDash(m.GetStatus())
	}
	head := fmt.Sprintf("%-12s", state)
	tr, rem, tot := m.GetTransferredBytes(), m.GetRemainingBytes(), m.GetTotalBytes()
	hasBytes := tr > 0 || rem > 0 || tot > 0

	// drop ranks which fields go first when the line is too wide (0: never).
	type field struct {
		text string
		drop int
	}
	var fields []field
	if hasBytes {
		fields = append(fields, field{fmtMiB(tr) + "/" + fmtMiB(tot) + " MiB", 0}, field{fmtMiB(rem) + " MiB left", 3})
		if r := progressRate(m); r > 0 {
			fields = append(fields, field{fmtRate(r), 4})
		}
		if d := m.GetDirtyRateMibps(); d > 0 {
			fields = append(fields, field{"dirty " + fmtRate(d), 1})
		}
		if n := m.GetRounds(); n > 0 {
			fields = append(fields, field{fmt.Sprintf("round %d", n), 2})
		}
	}
	if m.GetCancelRequested() {
		fields = append(fields, field{"cancelling", 0})
	}
	fields = append(fields, field{fmtMs(elapsed.Milliseconds()), 0})

	barW := 0
	if hasBytes {
		barW = max(minBar, min(maxBar, width-1-utf8.RuneCountInString(head)-6-typicalTail))
	}
	render := func() string {
		parts := make([]string, 0, len(fields))
		for _, f := range fields {
			parts = append(parts, f.text)
		}
		tail := strings.Join(parts, "  ")
		if barW > 0 {
			return head + "  [" + bar(tr, tr+rem, barW) + "]  " + tail
		}
		return head + "  " + tail
	}
	line := render()
	for rank := 1; rank <= 4 && utf8.RuneCountInString(line) > width-1; rank++ {
		fields = slices.DeleteFunc(fields, func(f field) bool { return f.drop == rank })
		line = render()
	}
	if utf8.RuneCountInString(line) > width-1 {
		barW = 0
		line = render()
	}
	return strings.TrimRight(truncate(line, width-1), " ")
}

// bar draws done/all as width characters of '#' and '.'.
func bar(done, all int64, width int) string {
	filled := 0
	if all > 0 && done > 0 {
		filled = int(float64(width) * float64(done) / float64(all))
	}
	filled = max(0, min(filled, width))
	return strings.Repeat("#", filled) + strings.Repeat(".", width-filled)
}

// truncate cuts s to at most n runes.
func truncate(s string, n int) string {
	if n < 0 {
		n = 0
	}
	if utf8.RuneCountInString(s) <= n {
		return s
	}
	r := []rune(s)
	return string(r[:n])
}

// statusText is the status with the state when they differ:
// "completed", "running (transferring)".
func statusText(m *ferryv1.Migration) string {
	s := orDash(m.GetStatus())
	if st := m.GetState(); st != "" && st != m.GetStatus() {
		s += " (" + st + ")"
	}
	if m.GetCancelRequested() && m.GetStatus() == "running" {
		s += ", cancel requested"
	}
	if n := len(m.GetWarnings()); n > 0 {
		s += fmt.Sprintf(", %d warning(s)", n)
	}
	return s
}

// renderReport renders a migration's summary block:
//
//	migration mig-1a2b3c4d: web  h1 → h2  precopy  completed
//	  total        2.41 s   (setup 12 ms)
//	  downtime     38 ms    (QEMU 31 ms; final round 20 ms, switchover 9 ms, device state 6 ms, resume 3 ms)
//	  transferred  301.2 MiB in 5 rounds at 189.4 MiB/s, dirty rate 16.0 MiB/s
//	  error        ...
//
// Lines without data (a cold migration transfers no RAM) are left out.
func renderReport(m *ferryv1.Migration) string {
	var b strings.Builder
	fmt.Fprintf(&b, "migration %s: %s  %s → %s  %s  %s\n", orDash(m.GetId()), orDash(m.GetVm()),
		orDash(m.GetFrom()), orDash(m.GetTo()), orDash(m.GetStrategy()), statusText(m))
	line := func(label, value string) {
		fmt.Fprintf(&b, "  %-12s %s\n", label, value)
	}
	running := m.GetStatus() == "running"

	label := "total"
	if running {
		label = "elapsed"
	}
	total := "-"
	if d := migrationElapsed(m); d > 0 {
		total = fmtMs(d.Milliseconds())
	}
	if s := m.GetSetupMs(); s > 0 {
		total = fmt.Sprintf("%-8s (setup %s)", total, fmtMs(s))
	}
	line(label, total)
	if t := m.GetTransport(); t != "" {
		v := "TLS (each host verified)"
		if t != "tls" {
			v = "plaintext (insecureTransport)"
		}
		line("transport", v)
	}

	if dt := downtimeText(m); dt != "" {
		line("downtime", dt)
	} else if e := m.GetExpectedDowntimeMs(); running && e > 0 {
		line("downtime", fmt.Sprintf("~%s expected (QEMU estimate)", fmtMs(e)))
	}
	for _, r := range m.GetRetries() {
		next := "next"
		if st := r.GetStrategy(); st != "" {
			next += " as " + st // re-planned: a pre-copy auto chose that could not converge
		}
		line("retried", fmt.Sprintf("attempt %d: %s (%s after %s)", r.GetAttempt(), r.GetReason(), next, fmtMs(r.GetBackoffMs())))
	}
	if a := m.GetAttempt(); a > 1 {
		line("attempts", fmt.Sprintf("%d of %d", a, max(m.GetOptions().GetMaxAttempts(), a)))
	}
	if tt := transferText(m); tt != "" {
		line("transferred", tt)
	}
	for _, d := range m.GetDisks() {
		v := fmt.Sprintf("%s (%s, %s MiB virtual, %s MiB allocated): %s, %s MiB copied", d.GetName(), d.GetFormat(),
			fmtMiB(d.GetVirtualSizeBytes()), fmtMiB(d.GetAllocatedBytes()), orDash(d.GetState()), fmtMiB(d.GetBytesTransferred()))
		if d.GetMirrorMs() > 0 {
			v += ", in sync after " + fmtMs(d.GetMirrorMs())
		}
		if d.GetCompleteMs() > 0 {
			v += ", completed after " + fmtMs(d.GetCompleteMs())
		}
		line("disk", v)
	}
	if pr := m.GetPredicted(); pr != nil {
		if pr.GetConverges() || pr.GetStrategy() == "cold" {
			line("predicted", fmt.Sprintf("total %s, downtime %s (planning %s)", fmtMs(pr.GetTotalMs()), fmtMs(pr.GetDowntimeMs()), fmtMs(m.GetPlanningMs())))
		} else {
			line("predicted", fmt.Sprintf("does not converge: %s (planning %s)", pr.GetReason(), fmtMs(m.GetPlanningMs())))
		}
	}
	if t := m.GetThrottlePercent(); t > 0 {
		line("throttle", fmt.Sprintf("up to %d%% of the guest's CPU", t))
	}
	for _, l := range tuningLines(m.GetPlan().GetTuning()) {
		line("tuning", l)
	}
	if pc := m.GetPostcopyMs(); pc > 0 {
		v := fmt.Sprintf("%s, %d pages faulted in", fmtMs(pc), m.GetPostcopyRequests())
		if p := m.GetPostcopyPausedMs(); p > 0 {
			v += fmt.Sprintf(", paused %s by a broken link", fmtMs(p))
		}
		line("post-copy", v)
	}
	switch a := m.GetGuestAliveAfterMs(); {
	case a > 0:
		line("guest alive", fmt.Sprintf("%s after the resume (%s)", fmtMs(a), m.GetGuestAliveMethod()))
	case a < 0:
		line("guest alive", "no sign of life ("+m.GetGuestAliveMethod()+")")
	}
	for _, w := range m.GetWarnings() {
		line("warning", w)
	}
	for _, dcs := range m.GetDecisions() {
		line("decision", fmt.Sprintf("+%s %s: %s", fmtMs(dcs.GetTMs()), dcs.GetAction(), dcs.GetReason()))
	}
	if e := m.GetError(); e != "" {
		line("error", e)
	}
	return b.String()
}

// downtimeText is the downtime value of the report, or "" when none was
// measured. The headline is the measured pause (source stop → destination
// running); QEMU's own figure and the phases follow in parentheses.
func downtimeText(m *ferryv1.Migration) string {
	ph := m.GetDowntimePhases()
	phases := []struct {
		name string
		ms   int64
	}{
		{"stop", ph.GetStopMs()},
		{"final round", ph.GetFinalRoundMs()},
		{"switchover", ph.GetSwitchoverMs()},
		{"device state", ph.GetDeviceStateMs()},
		{"resume", ph.GetResumeMs()},
	}
	var sum int64
	for _, p := range phases {
		sum += p.ms
	}
	measured := ph.GetTotalMs()
	if measured == 0 {
		measured = sum
	}
	qemu := m.GetDowntimeMs()
	if measured == 0 && qemu == 0 {
		return ""
	}
	if measured == 0 {
		return fmtMs(qemu)
	}
	var parts []string
	if qemu > 0 {
		parts = append(parts, "QEMU "+fmtMs(qemu))
	}
	if sum > 0 {
		var ps []string
		for i, p := range phases {
			if i == 0 && p.ms == 0 {
				continue // stop_ms: left out when not measured
			}
			ps = append(ps, p.name+" "+fmtMs(p.ms))
		}
		parts = append(parts, strings.Join(ps, ", "))
	}
	if len(parts) == 0 {
		return fmtMs(measured)
	}
	return fmt.Sprintf("%-8s (%s)", fmtMs(measured), strings.Join(parts, "; "))
}

// transferText is the RAM transfer summary, or "" for a migration that
// moved no RAM (cold, or failed before the transfer).
func transferText(m *ferryv1.Migration) string {
	tr, rounds, bw := m.GetTransferredBytes(), m.GetRounds(), m.GetBandwidthMibps()
	if tr == 0 && rounds == 0 && bw == 0 {
		return ""
	}
	s := fmtMiB(tr) + " MiB"
	if rounds > 0 {
		s += " in " + plural(rounds, "round")
	}
	if bw > 0 {
		s += " at " + fmtRate(bw)
	}
	if d := m.GetDirtyRateMibps(); d > 0 {
		s += ", dirty rate " + fmtRate(d)
	}
	if m.GetStatus() == "running" && (m.GetRemainingBytes() > 0 || m.GetTotalBytes() > 0) {
		s += fmt.Sprintf("; %s MiB left of %s MiB", fmtMiB(m.GetRemainingBytes()), fmtMiB(m.GetTotalBytes()))
	}
	return s
}

// renderDetails is `ferry migration get`: the report, the event history and
// a compact table of (at most maxSampleRows) progress samples.
func renderDetails(m *ferryv1.Migration) string {
	var b strings.Builder
	b.WriteString(renderReport(m))
	if evs := m.GetEvents(); len(evs) > 0 {
		base := m.GetStartedAt()
		if base == nil || !base.IsValid() || base.AsTime().IsZero() {
			base = evs[0].GetAt()
		}
		b.WriteString("\nevents\n")
		var evb strings.Builder
		tw := tabwriter.NewWriter(&evb, 0, 4, 2, ' ', 0)
		for _, ev := range evs {
			off := "-"
			if at := ev.GetAt(); at != nil && at.IsValid() && base != nil && base.IsValid() {
				off = "+" + fmtMs(at.AsTime().Sub(base.AsTime()).Milliseconds())
			}
			fmt.Fprintf(tw, "  %s\t%s\t%s\n", off, orDash(ev.GetState()), ev.GetMessage())
		}
		tw.Flush()
		// An event without a message would leave the padding of its state.
		for l := range strings.Lines(evb.String()) {
			b.WriteString(strings.TrimRight(l, " \n") + "\n")
		}
	}
	if s := m.GetSamples(); len(s) > 0 {
		idx := evenPick(len(s), maxSampleRows)
		if len(idx) < len(s) {
			fmt.Fprintf(&b, "\nsamples (%d of %d)\n", len(idx), len(s))
		} else {
			b.WriteString("\nsamples\n")
		}
		tw := tabwriter.NewWriter(&b, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "  T\tROUND\tREMAINING\tTRANSFERRED\tRATE\tDIRTY")
		for _, i := range idx {
			x := s[i]
			fmt.Fprintf(tw, "  %s\t%d\t%s MiB\t%s MiB\t%s\t%s\n", fmtMs(x.GetTMs()), x.GetRound(),
				fmtMiB(x.GetRemainingBytes()), fmtMiB(x.GetTransferredBytes()),
				fmtRate(x.GetRateMibps()), fmtRate(x.GetDirtyRateMibps()))
		}
		tw.Flush()
	}
	return b.String()
}

// evenPick returns up to k indices of [0, n) evenly spread, always
// including the first and the last.
func evenPick(n, k int) []int {
	if n <= 0 || k <= 0 {
		return nil
	}
	if n <= k {
		idx := make([]int, n)
		for i := range idx {
			idx[i] = i
		}
		return idx
	}
	if k == 1 {
		return []int{n - 1}
	}
	idx := make([]int, k)
	for i := range idx {
		idx[i] = i * (n - 1) / (k - 1)
	}
	return idx
}

// downtimeColumn is the DOWNTIME cell of `ferry migration list`: the
// measured pause, else QEMU's figure, else "-".
func downtimeColumn(m *ferryv1.Migration) string {
	if t := m.GetDowntimePhases().GetTotalMs(); t > 0 {
		return fmtMs(t)
	}
	if t := m.GetDowntimeMs(); t > 0 {
		return fmtMs(t)
	}
	return "-"
}

// totalColumn is the TOTAL cell of `ferry migration list`.
func totalColumn(m *ferryv1.Migration) string {
	if d := migrationElapsed(m); d > 0 {
		return fmtMs(d.Milliseconds())
	}
	return "-"
}
