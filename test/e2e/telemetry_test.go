package e2e

import (
	"context"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	agentv1 "github.com/ferryvm/ferry/gen/ferry/agent/v1"
	"github.com/ferryvm/ferry/gen/ferry/agent/v1/agentv1connect"
	ferryv1 "github.com/ferryvm/ferry/gen/ferry/v1"
	"github.com/ferryvm/ferry/internal/rpcaddr"
	"google.golang.org/protobuf/encoding/protojson"
)

// TestPlanFromFreshTelemetry: the agents sample a running VM's dirty rate
// and non-zero RAM in the background, and the server keeps the link rate
// of a pair that migrated fresh with short background probes, so the
// plan of a VM with fresh telemetry measures nothing inline and takes
// under 100 ms; the dry run made from that telemetry still predicts the
// migration's total time within a sane range (0.25–4×).
//
// Migration 1 (h1→h2) plans from the VM's telemetry (its link figure is an
// inline probe or the prober's first probe of the pair, whichever came
// first). After it, the server probes both directions of the pair in the
// background; migrations 2 (h2→h1) and 3 (h1→h2) then plan from telemetry
// alone.
func TestPlanFromFreshTelemetry(t *testing.T) {
	c := upCluster(t, 2)
	const name, ip = "tele", "198.19.0.61"
	boot := c.bootGuest(name, ip, "") // idle guest
	time.Sleep(3 * time.Second)       // the first samples (1 s settle, 1 s calc-dirty-rate)

	m1, wall1 := c.mustMigrateWait(name, "h2")
	logTelemetryPlan(t, "migration 1 h1→h2", m1, wall1)
	in1 := m1.GetPlan().GetInputs()
	if m1.Status != "completed" {
		t.Fatalf("migration 1: %s", m1.Status)
	}
	if !strings.HasPrefix(in1.GetDirtyRateSource(), "telemetry") {
		t.Errorf("migration 1: dirty rate not from telemetry: %q", in1.GetDirtyRateSource())
	}

	// The background prober runs every 5 s and skips pairs with a running
	// migration; both directions are probed within two of its ticks.
	time.Sleep(12 * time.Second)
	plan := c.dryRun(name, "h1")
	in := plan.GetInputs()
	t.Logf("dry run h2→h1: dirty %.2f MiB/s (%s); non-zero %.1f MiB (%s); link %.0f MiB/s (%s, %d ms old); inline %v; choice %s",
		in.GetDirtyRateMibps(), in.GetDirtyRateSource(), float64(in.GetNonZeroBytes())/(1<<20), in.GetNonZeroSource(),
		in.GetBandwidthMibps(), in.GetBandwidthSource(), in.GetBandwidthAgeMs(), in.GetMeasuredInline(), plan.GetChoice())
	if !strings.Contains(in.GetBandwidthSource(), "background probe h2→h1") {
		t.Errorf("reverse pair h2→h1 not probed in the background after migration 1: %q", in.GetBandwidthSource())
	}
	if !strings.HasPrefix(in.GetDirtyRateSource(), "telemetry of h2") || !strings.HasPrefix(in.GetNonZeroSource(), "telemetry of h2") {
		t.Errorf("the arrived VM has no telemetry on h2: dirty %q, non-zero %q", in.GetDirtyRateSource(), in.GetNonZeroSource())
	}
	if in.GetMeasuredInline() {
		t.Errorf("dry run measured inline with fresh telemetry")
	}
	predicted := predictionOf(plan, plan.GetChoice())

	m2, wall2 := c.mustMigrateWait(name, "h1")
	logTelemetryPlan(t, "migration 2 h2→h1", m2, wall2)
	// A VM that just arrived has no samples on its new host yet (a plan
	// then measures inline and says so); its first come after ~2 s.
	time.Sleep(3 * time.Second)
	m3, wall3 := c.mustMigrateWait(name, "h2")
	logTelemetryPlan(t, "migration 3 h1→h2", m3, wall3)
	for _, m := range []*ferryv1.Migration{m2, m3} {
		in := m.GetPlan().GetInputs()
		if m.Status != "completed" {
			t.Errorf("migration %s→%s: %s", m.From, m.To, m.Status)
			continue
		}
		if m.PlanningMs >= 100 || in.GetMeasuredInline() {
			t.Errorf("migration %s→%s with fresh telemetry: planningMs %d (want < 100), measured inline %v", m.From, m.To, m.PlanningMs, in.GetMeasuredInline())
		}
	}
	if predicted != nil && m2.TotalMs > 0 {
		ratio := float64(predicted.TotalMs) / float64(m2.TotalMs)
		t.Logf("dry run predicted %s total %d ms; migration 2 took %d ms (ratio %.2f)", predicted.Strategy, predicted.TotalMs, m2.TotalMs, ratio)
		// A sanity check, not the accuracy target (the bench's ±25 %): on
		// this shared machine one migration's rate, which the link figure
		// learns from, varies several-fold with the other work running.
		if ratio < 0.25 || ratio > 4 {
			t.Errorf("dry run from telemetry predicted %d ms, actual %d ms: outside 0.25–4×", predicted.TotalMs, m2.TotalMs)
		}
	} else {
		t.Errorf("no prediction for the dry run's choice %q or no actual total", plan.GetChoice())
	}
	if got := c.bootID(ip, 10*time.Second); got != boot {
		t.Errorf("boot_id changed: %s -> %s", boot, got)
	}
	t.Logf("planningMs: first %d, then %d, %d; CLI wall: first %s, then %s, %s",
		m1.PlanningMs, m2.PlanningMs, m3.PlanningMs, wall1.Round(time.Millisecond), wall2.Round(time.Millisecond), wall3.Round(time.Millisecond))
}

// dryRun returns the plan of `ferry migrate VM --to TO --dry-run`.
func (c *cluster) dryRun(vm, to string) *ferryv1.Plan {
	c.t.Helper()
	out := c.mustFerry("migrate", vm, "--to", to, "--dry-run", "-o", "json")
	plan := &ferryv1.Plan{}
	if err := jsonIn.Unmarshal([]byte(out), plan); err != nil {
		c.t.Fatalf("decode dry-run plan: %v\n%s", err, out)
	}
	return plan
}

// waitPlannedDirty returns the first dry-run plan for moving vm to to
// whose telemetry has seen the guest dirty memory, asking once a second for
// at most timeout (then the last plan). A dirtying guest's first telemetry
// sample can predate its dirtier, and a plan from a 0 MiB/s sample is a
// plan for an idle guest (CI runs planned that way twice).
func (c *cluster) waitPlannedDirty(vm, to string, timeout time.Duration) *ferryv1.Plan {
	c.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		plan := c.dryRun(vm, to)
		if plan.GetInputs().GetDirtyRateMibps() > 0 || time.Now().After(deadline) {
			return plan
		}
		time.Sleep(time.Second)
	}
}

func predictionOf(p *ferryv1.Plan, strategy string) *ferryv1.StrategyPrediction {
	for _, x := range p.GetPredictions() {
		if x.Strategy == strategy {
			return x
		}
	}
	return nil
}

// logTelemetryPlan logs a migration's planning time, inputs and sources.
func logTelemetryPlan(t *testing.T, label string, m *ferryv1.Migration, wall time.Duration) {
	t.Helper()
	logReport(t, label, m, wall)
	in := m.GetPlan().GetInputs()
	b, _ := protojson.Marshal(in)
	t.Logf("%s: planningMs %d, predicted total %d ms, inputs %s", label, m.PlanningMs, m.GetPredicted().GetTotalMs(), b)
}

// TestPlanAfterAMinute: a VM that has run for more than a minute plans its
// first migration in under 100 ms (its telemetry, and the prober's figure
// for a pair that never migrated), and the sampler's CPU cost per VM is
// measured: the agent's own thread CPU for the samples (from the Measure
// RPC) and, as an upper bound, the whole agent process over that minute.
func TestPlanAfterAMinute(t *testing.T) {
	c := upCluster(t, 2)
	const name, ip = "minute", "198.19.0.62"
	boot := c.bootGuest(name, ip, "")
	agent := c.process("agent", "--name", "h1")
	cpu0, at0 := procCPU(agent.PID), time.Now()
	time.Sleep(62 * time.Second)
	perMin := (procCPU(agent.PID) - cpu0) / time.Since(at0).Minutes()

	mig := agentClient(t, c, "h1")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := mig.Measure(ctx, connect.NewRequest(&agentv1.MeasureRequest{Name: name, Seconds: 1, MaxAgeMs: 60000, MaxRamAgeMs: 120000}))
	if err != nil {
		t.Fatalf("Measure: %v", err)
	}
	r := resp.Msg
	t.Logf("telemetry after %s: %d dirty-rate samples (latest %.2f MiB/s), non-zero %.1f MiB; sampler CPU %.4f s/min per VM (agent thread time); whole agent process %.3f s/min (heartbeats included)",
		time.Since(at0).Round(time.Second), r.Samples, r.DirtyRateLatestMibps, float64(r.NonZeroBytes)/(1<<20), r.SamplerCpuSecondsPerMinute, perMin)
	if r.DirtyFresh || r.NonZeroFresh {
		t.Errorf("telemetry of a VM running for a minute was stale: %s", r.StaleReason)
	}
	if r.Samples < 4 || r.SamplerCpuSecondsPerMinute <= 0 || r.NonZeroSampledAt == nil {
		t.Errorf("sampler did not run as scheduled (15 s dirty rate, 60 s RAM): %v", r)
	}

	m, wall := c.mustMigrateWait(name, "h2")
	logTelemetryPlan(t, "first migration after a minute", m, wall)
	if m.Status != "completed" || m.PlanningMs >= 100 || m.GetPlan().GetInputs().GetMeasuredInline() {
		t.Errorf("VM running for a minute: status %s, planningMs %d (want < 100), measured inline %v", m.Status, m.PlanningMs, m.GetPlan().GetInputs().GetMeasuredInline())
	}
	if got := c.bootID(ip, 10*time.Second); got != boot {
		t.Errorf("boot_id changed: %s -> %s", boot, got)
	}
}

// agentClient is a MigrationAgentService client of host's agent socket.
func agentClient(t *testing.T, c *cluster, host string) agentv1connect.MigrationAgentServiceClient {
	t.Helper()
	creds, err := c.c.ServerCredentials() // agents answer only server certificates
	if err != nil {
		t.Fatal(err)
	}
	hc, base := rpcaddr.ClientWith("unix://"+filepath.Join(c.dir, host, "agent.sock"), creds)
	return agentv1connect.NewMigrationAgentServiceClient(hc, base)
}

// TestPlanSeesTheWorkload: a guest whose dirtier runs (16 MiB/s over a
// 64 MiB working set) is planned from telemetry that shows it, a few
// seconds after the dirtier started (the young VM's 3 s sampling), not
// from a sample of its boot.
func TestPlanSeesTheWorkload(t *testing.T) {
	c := upCluster(t, 2)
	const name, ip = "busy", "198.19.0.63"
	c.bootGuest(name, ip, "64:16")
	time.Sleep(5 * time.Second)
	plan := c.dryRun(name, "h2")
	in := plan.GetInputs()
	t.Logf("dry run: dirty %.1f MiB/s (%s); link %.0f MiB/s (%s); choice %s", in.GetDirtyRateMibps(), in.GetDirtyRateSource(), in.GetBandwidthMibps(), in.GetBandwidthSource(), plan.GetChoice())
	if !strings.HasPrefix(in.GetDirtyRateSource(), "telemetry of h1") {
		t.Errorf("dirty rate not from telemetry: %q", in.GetDirtyRateSource())
	}
	if in.GetDirtyRateMibps() < 4 {
		t.Errorf("dirty rate %.1f MiB/s: the telemetry missed the 16 MiB/s dirtier", in.GetDirtyRateMibps())
	}
}
