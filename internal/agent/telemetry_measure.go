package agent

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"time"

	"connectrpc.com/connect"
	agentv1 "github.com/ferryvm/ferry/gen/ferry/agent/v1"
	"github.com/ferryvm/ferry/internal/telemetry"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// measure answers the Measure RPC: the VM's dirty rate and non-zero RAM
// from the background telemetry when its latest samples are fresh enough
// (req.MaxAgeMs, req.MaxRamAgeMs), else measured now (and added to the
// telemetry); the response says which, and why.
func (a *Agent) measure(ctx context.Context, req *agentv1.MeasureRequest) (*agentv1.MeasureResponse, error) {
	v, err := a.running(req.Name)
	if err != nil {
		return nil, err
	}
	if req.Seconds < 1 || req.Seconds > 10 {
		return nil, connect.NewError(connect.CodeInvalidArgument, fmt.Errorf("seconds: must be 1..10, got %d", req.Seconds))
	}
	if req.MaxAgeMs < 0 || req.MaxRamAgeMs < 0 {
		return nil, connect.NewError(connect.CodeInvalidArgument, fmt.Errorf("max_age_ms, max_ram_age_ms: must be ≥ 0 (0 measures now), got %d, %d", req.MaxAgeMs, req.MaxRamAgeMs))
	}
	sv := v.sampleView()
	if sv.proc == nil || sv.mon == nil {
		return nil, failedPrecondition("VM %s does not run on host %s", req.Name, a.cfg.Name)
	}
	maxAge := time.Duration(req.MaxAgeMs) * time.Millisecond
	ramAge := time.Duration(req.MaxRamAgeMs) * time.Millisecond
	if ramAge == 0 {
		ramAge = maxAge
	}
	tele := a.telemetry()
	t := tele.record(v.name, sv.proc)
	t.mu.Lock()
	dirtyStale, ramStale := t.dirty.Staleness(time.Now(), maxAge), t.nonZero.Staleness(time.Now(), ramAge)
	latest, hasLatest := t.dirty.Latest()
	t.mu.Unlock()
	if dirtyStale == "" && hasLatest {
		if booted, ok := v.bootedAt(); ok && latest.At.Sub(booted) < bootSettle {
			// A sample from a freshly booted VM's first seconds saw its
			// guest booting, not its workload: measure now instead.
			dirtyStale = fmt.Sprintf("latest sample taken %s after the VM booted (its guest may still have been starting)", latest.At.Sub(booted).Round(100*time.Millisecond))
		}
	}

	resp := &agentv1.MeasureResponse{MemoryBytes: sv.memBytes, RssBytes: sv.proc.RSSBytes()}
	var reasons []string
	var wg sync.WaitGroup
	var dirtyErr, ramErr error
	if dirtyStale != "" {
		wg.Add(1)
		go func() {
			defer wg.Done()
			resp.DirtyFresh, dirtyErr = tele.measureDirty(ctx, v, t, sv, req.Seconds, maxAge)
		}()
	}
	if ramStale != "" {
		wg.Add(1)
		go func() {
			defer wg.Done()
			resp.NonZeroFresh, ramErr = tele.countRAM(ctx, v, t, sv, ramAge)
		}()
	}
	wg.Wait()
	if dirtyErr != nil {
		return nil, fmt.Errorf("measure the dirty rate of VM %s: %w", req.Name, dirtyErr)
	}
	if ramErr != nil {
		a.log.Warn("count non-zero guest RAM; the plan uses RSS", "vm", req.Name, "err", ramErr)
	}
	if resp.DirtyFresh {
		reasons = append(reasons, "dirty rate: "+dirtyStale)
	}
	if resp.NonZeroFresh {
		reasons = append(reasons, "non-zero RAM: "+ramStale)
	}
	resp.StaleReason = strings.Join(reasons, "; ")

	// A booted VM's first bootSettle saw its guest boot (and the bench's
	// guests fill their memory then): those samples do not count for a plan.
	since := time.Time{}
	if booted, ok := v.bootedAt(); ok {
		since = booted.Add(bootSettle)
	}
	now := time.Now()
	t.mu.Lock()
	defer t.mu.Unlock()
	if e, ok := t.dirty.EstimateSince(now, since); ok {
		resp.DirtyRateMibps, resp.DirtyRateLatestMibps, resp.DirtyRateEwmaMibps, resp.DirtyRatePeakMibps = e.Value, e.Latest, e.EWMA, e.Peak
		resp.DirtySampledAt, resp.Samples = timestamppb.New(e.At), int32(e.Samples)
	}
	if e, ok := t.nonZero.Estimate(now); ok {
		resp.NonZeroBytes, resp.NonZeroSampledAt = int64(e.Latest), timestamppb.New(e.At)
		resp.CompressRatio = t.compressRatio
		if !resp.NonZeroFresh {
			counted := resp.NonZeroBytes
			resp.NonZeroBytes, resp.NonZeroRssGrowthBytes = telemetry.NonZeroNow(counted, t.rssAtCount, resp.RssBytes, sv.memBytes)
			resp.CompressRatio = telemetry.CompressRatioNow(t.compressRatio, counted, resp.NonZeroRssGrowthBytes)
		}
	}
	if el := now.Sub(t.since); el > 0 {
		resp.SamplerCpuSecondsPerMinute = t.cpu.Seconds() / el.Minutes()
	}
	return resp, nil
}

// bootSettle is how long after a VM boots its dirty-rate samples are not
// trusted for a plan (the guest is still starting its workload).
const bootSettle = 20 * time.Second

// bootedAt is when the VM's QEMU started, for a VM booted on this host (not
// one that arrived by migration: its guest was already running). ok is
// false when there is no QEMU or it arrived.
func (v *vm) bootedAt() (time.Time, bool) {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.proc == nil || v.arrived != "" {
		return time.Time{}, false
	}
	return v.proc.StartedAt(), true
}
