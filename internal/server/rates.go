package server

// Stream and mirror rates: what one QEMU migration stream and one local
// disk's NBD mirror reach between two hosts when the link is not their
// limit, learned per host pair and transport from completed migrations
// (exec.Learned, telemetry.Rates), else the planner's constants. They are
// kept apart from the link book: a slow stream never caps the link figure.

import (
	"fmt"
	"time"

	ferryv1 "github.com/ferryvm/ferry/gen/ferry/v1"
	"github.com/ferryvm/ferry/internal/migration/exec"
	"github.com/ferryvm/ferry/internal/planner"
	"github.com/ferryvm/ferry/internal/telemetry"
)

// learnRates folds in the stream and mirror rates a completed migration
// from → to showed, derived with the planner's own model and the fixed
// parts the server's plans use (planSwitchoverSeconds).
func (b *bandwidths) learnRates(from, to string, l exec.Learned) {
	now := time.Now()
	var stream, mirror float64
	if l.Stream != nil {
		run := *l.Stream
		run.SwitchoverSeconds = planSwitchoverSeconds
		stream, _ = planner.StreamRateOf(run)
	}
	mirror, _ = planner.MirrorRateOf(l.DiskBytes, l.MirrorTime)
	if stream <= 0 && mirror <= 0 {
		return
	}
	if b.log != nil {
		b.log.Info("rates learned from a migration", "from", from, "to", to, "transport", l.Transport,
			"stream_mibps", stream/(1<<20), "size_class", telemetry.SizeClass(l.NonZeroBytes), "mirror_mibps", mirror/(1<<20))
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if stream > 0 {
		b.rates.Observe(telemetry.StreamRateFor(l.NonZeroBytes), l.Transport, from, to, stream, now)
	}
	if mirror > 0 {
		b.rates.Observe(telemetry.MirrorRate, l.Transport, from, to, mirror, now)
	}
}

// rate is the learned kind rate from → to over transport, if any.
func (b *bandwidths) rate(kind telemetry.RateKind, transport, from, to string) (telemetry.RateFigure, bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.rates.Figure(kind, transport, from, to, time.Now())
}

// transportName is the migration's transport: "tls" unless insecure.
func transportName(opt *ferryv1.MigrationOptions) string {
	if opt.GetInsecureTransport() {
		return telemetry.TransportPlain
	}
	return telemetry.TransportTLS
}

// streamBytesPerSec is one migration stream's rate from src to dst when
// the link is not the limit, for the migration's transport and a guest
// of nonZero bytes (its size class): learned on the pair (else on any
// pair), else the planner's constant; and where it comes from.
func (s *Server) streamBytesPerSec(src, dst string, nonZero int64, opt *ferryv1.MigrationOptions) (float64, string) {
	tr, class := transportName(opt), telemetry.SizeClass(nonZero)
	if f, ok := s.bw.rate(telemetry.StreamRateFor(nonZero), tr, src, dst); ok {
		return f.BytesPerSec, f.Source + " for guests of " + class + " non-zero RAM"
	}
	c := defaultStreamBytesPerSec(opt)
	return c, fmt.Sprintf("the planner's constant for one %s stream (%.0f MiB/s): nothing learned over %s for guests of %s non-zero RAM yet", tr, c/(1<<20), tr, class)
}

// mirrorBytesPerSec is one disk mirror's rate from src to dst when the
// link is not the limit, as streamBytesPerSec.
func (s *Server) mirrorBytesPerSec(src, dst string, opt *ferryv1.MigrationOptions) (float64, string) {
	tr := transportName(opt)
	if f, ok := s.bw.rate(telemetry.MirrorRate, tr, src, dst); ok {
		return f.BytesPerSec, f.Source
	}
	c := defaultMirrorBytesPerSec(opt)
	return c, fmt.Sprintf("the planner's constant for one %s mirror (%.0f MiB/s): nothing learned over %s yet", tr, c/(1<<20), tr)
}

// planRates puts into a plan's inputs the stream and mirror rates to plan
// the migration src → dst with, and where they come from.
func (s *Server) planRates(in *ferryv1.PlanInputs, src, dst string, opt *ferryv1.MigrationOptions) {
	stream, streamSrc := s.streamBytesPerSec(src, dst, in.GetNonZeroBytes(), opt)
	mirror, mirrorSrc := s.mirrorBytesPerSec(src, dst, opt)
	in.StreamMibps, in.StreamSource = stream/(1<<20), streamSrc
	in.MirrorMibps, in.MirrorSource = mirror/(1<<20), mirrorSrc
}

// defaultStreamBytesPerSec is the planner's constant for one migration
// stream over the migration's transport.
func defaultStreamBytesPerSec(opt *ferryv1.MigrationOptions) float64 {
	if opt.GetInsecureTransport() {
		return planner.DefaultStreamBytesPerSec
	}
	return planner.DefaultTLSStreamBytesPerSec
}

// defaultMirrorBytesPerSec is the planner's constant for one disk mirror
// over the migration's transport.
func defaultMirrorBytesPerSec(opt *ferryv1.MigrationOptions) float64 {
	if opt.GetInsecureTransport() {
		return planner.DefaultMirrorBytesPerSec
	}
	return planner.DefaultTLSMirrorBytesPerSec
}

// plannedStream is the stream rate a plan's inputs carry (a record from
// before they did: the constant).
func plannedStream(in *ferryv1.PlanInputs, opt *ferryv1.MigrationOptions) float64 {
	if v := in.GetStreamMibps(); v > 0 {
		return v * (1 << 20)
	}
	return defaultStreamBytesPerSec(opt)
}

// plannedMirror is the mirror rate a plan's inputs carry (a record from
// before they did: the constant).
func plannedMirror(in *ferryv1.PlanInputs, opt *ferryv1.MigrationOptions) float64 {
	if v := in.GetMirrorMibps(); v > 0 {
		return v * (1 << 20)
	}
	return defaultMirrorBytesPerSec(opt)
}
