package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"google.golang.org/protobuf/encoding/protojson"

	"github.com/ferryvm/ferry/bench/internal/report"
	ferryv1 "github.com/ferryvm/ferry/gen/ferry/v1"
)

// FerrySystem drives Ferry through its CLI, exactly as a user would:
// `ferry vm create`, `ferry migrate --wait -o json`, `ferry migration
// cancel` at the cap, `ferry vm delete`.
type FerrySystem struct {
	env *Env
	// Strategy is passed as --strategy unless empty (Ferry's default).
	Strategy string
	// Insecure runs `ferry migrate --insecure-transport` (plaintext).
	Insecure bool
	// Multifd is passed as --multifd unless 0 (Ferry's planner decides).
	Multifd int
	// Plain names the system "ferry-plain" (Insecure set): the same
	// migration as "ferry" without TLS beside it, for the cost of
	// encryption.
	Plain bool
}

// NewFerrySystem returns the Ferry system.
func NewFerrySystem(env *Env, strategy string) *FerrySystem {
	return &FerrySystem{env: env, Strategy: strategy}
}

// Name implements System.
func (s *FerrySystem) Name() string {
	if s.Plain {
		return "ferry-plain"
	}
	return "ferry"
}

// ferry runs the ferry CLI against the benchmark cluster's server.
func (s *FerrySystem) ferry(ctx context.Context, args ...string) (string, error) {
	return run(ctx, "", s.env.FerryBin, append(args, "--server", s.env.Cluster.ServerURL())...)
}

// Boot implements System.
func (s *FerrySystem) Boot(ctx context.Context, g Guest) (int, error) {
	sp := map[string]any{
		"name": g.Name, "vcpus": g.Vcpus, "memoryMiB": g.MemoryMiB, "accel": "tcg",
		"boot": map[string]string{"kernel": g.Kernel, "initrd": g.Initrd, "cmdline": g.Cmdline},
		"nics": []map[string]string{{"mac": g.MAC}},
	}
	if g.DiskSource != "" {
		// A local disk: the agent makes a sparse copy of the image.
		sp["disks"] = []map[string]string{{"name": "data", "source": g.DiskSource}}
	}
	specJSON, err := json.MarshalIndent(sp, "", "  ")
	if err != nil {
		return 0, fmt.Errorf("ferry: encode spec: %w", err)
	}
	path := filepath.Join(s.env.Dir, g.Name+".json")
	if err := os.WriteFile(path, specJSON, 0o644); err != nil {
		return 0, fmt.Errorf("ferry: write spec: %w", err)
	}
	if _, err := s.ferry(ctx, "vm", "create", "-f", path, "--host", s.env.Src.Name); err != nil {
		return 0, fmt.Errorf("ferry: create VM: %w", err)
	}
	out, err := s.ferry(ctx, "vm", "get", g.Name, "-o", "json")
	if err != nil {
		return 0, fmt.Errorf("ferry: get VM: %w", err)
	}
	var vm ferryv1.VM
	if err := (protojson.UnmarshalOptions{DiscardUnknown: true}).Unmarshal([]byte(out), &vm); err != nil {
		return 0, fmt.Errorf("ferry: decode `vm get`: %w", err)
	}
	if vm.Pid == 0 {
		return 0, fmt.Errorf("ferry: VM %s has no QEMU pid (state %s)", g.Name, vm.State)
	}
	return int(vm.Pid), nil
}

// migrateFlags are the flags of `ferry migrate` the benchmark passes,
// other than --wait/--dry-run and the output format: the dry run and the
// real run use the same.
func (s *FerrySystem) migrateFlags(g Guest) []string {
	args := []string{"migrate", g.Name, "--to", s.env.Dst.Name}
	if s.Strategy != "" {
		args = append(args, "--strategy", s.Strategy)
	}
	if s.Insecure {
		args = append(args, "--insecure-transport")
	}
	if s.Multifd > 0 {
		args = append(args, "--multifd", fmt.Sprint(s.Multifd))
	}
	return args
}

// DryRun implements Planner: `ferry migrate VM --to H --dry-run -o json`
// with the flags of the real run; it changes nothing. The prediction is
// the one for the strategy the real run will use: the plan's choice under
// auto, the given strategy otherwise.
func (s *FerrySystem) DryRun(ctx context.Context, g Guest) *report.DryRun {
	dr := &report.DryRun{}
	t0 := time.Now()
	out, err := s.ferry(ctx, append(s.migrateFlags(g), "--dry-run", "-o", "json")...)
	dr.WallMs = time.Since(t0).Milliseconds()
	if err != nil {
		dr.Error = err.Error()
		return dr
	}
	var plan ferryv1.Plan
	if err := (protojson.UnmarshalOptions{DiscardUnknown: true}).Unmarshal([]byte(out), &plan); err != nil {
		dr.Error = fmt.Sprintf("decode the dry run's plan: %v", err)
		return dr
	}
	dr.Plan = json.RawMessage(bytes.TrimSpace([]byte(out)))
	dr.Choice = plan.Choice
	in := plan.GetInputs()
	dr.BandwidthMiBps, dr.BandwidthSource = in.GetBandwidthMibps(), in.GetBandwidthSource()
	dr.DirtyRateMiBps, dr.NonZeroBytes = in.GetDirtyRateMibps(), in.GetNonZeroBytes()
	dr.StreamMiBps, dr.StreamSource = in.GetStreamMibps(), in.GetStreamSource()
	if in.GetDiskBytes() > 0 {
		dr.MirrorMiBps, dr.MirrorSource = in.GetMirrorMibps(), in.GetMirrorSource()
	}
	strategy := plan.Choice
	if s.Strategy != "" && s.Strategy != "auto" {
		strategy = s.Strategy
	}
	for _, p := range plan.GetPredictions() {
		if p.GetStrategy() == strategy {
			dr.Predicted = predicted(p)
		}
	}
	if dr.Predicted == nil {
		dr.Error = fmt.Sprintf("the plan has no prediction for %q (reason: %s)", strategy, plan.Reason)
	}
	return dr
}

func predicted(p *ferryv1.StrategyPrediction) *report.Predicted {
	if p == nil {
		return nil
	}
	return &report.Predicted{Strategy: p.Strategy, Converges: p.Converges, TotalMs: p.TotalMs, DowntimeMs: p.DowntimeMs, Bytes: p.Bytes}
}

// Migrate implements System.
func (s *FerrySystem) Migrate(ctx context.Context, g Guest, limit time.Duration) (Report, error) {
	var rep Report
	args := append(s.migrateFlags(g), "--wait", "-o", "json", "--server", s.env.Cluster.ServerURL())
	cmd := command(context.Background(), "", s.env.FerryBin, args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	t0 := time.Now()
	if err := cmd.Start(); err != nil {
		return rep, fmt.Errorf("ferry: start migrate: %w", err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	capTimer := time.NewTimer(limit)
	defer capTimer.Stop()
	aborted := false
	var waitErr error
wait:
	for {
		select {
		case waitErr = <-done:
			break wait
		case <-capTimer.C:
			aborted = true
			if err := s.cancel(ctx, g); err != nil {
				_ = cmd.Process.Kill()
				<-done
				return rep, fmt.Errorf("ferry: cancel at the %s cap: %w", limit, err)
			}
		case <-ctx.Done():
			_ = s.cancel(context.Background(), g)
			_ = cmd.Process.Kill()
			<-done
			return rep, ctx.Err()
		}
	}
	rep.WallMs = time.Since(t0).Milliseconds()
	var m ferryv1.Migration
	if err := (protojson.UnmarshalOptions{DiscardUnknown: true}).Unmarshal(stdout.Bytes(), &m); err != nil {
		return rep, fmt.Errorf("ferry: migrate printed no report (%v): %w: %s", waitErr, err, strings.TrimSpace(stderr.String()))
	}
	rep.Raw = json.RawMessage(bytes.TrimSpace(stdout.Bytes()))
	rep.Status = m.Status
	if aborted && m.Status != "completed" {
		rep.Status = "aborted"
	}
	rep.Error = m.Error
	rep.TotalMs = m.TotalMs
	rep.DowntimeMs = m.GetDowntimePhases().GetTotalMs()
	if rep.DowntimeMs == 0 {
		rep.DowntimeMs = m.DowntimeMs
	}
	// Ferry's phases run from the source's STOP event to the destination's
	// RESUME event: the same measure as QEMUSystem's pause.
	rep.PauseMs = m.GetDowntimePhases().GetTotalMs()
	rep.TransferredBytes = m.TransferredBytes
	rep.DiskBytes = m.DiskBytesTransferred
	rep.Rounds = m.Rounds
	rep.BandwidthMiBps = m.BandwidthMibps
	rep.Strategy = m.Strategy
	rep.Predicted = predicted(m.Predicted)
	rep.BandwidthSource = m.GetPlan().GetInputs().GetBandwidthSource()
	rep.PlanningMs, rep.PostcopyMs, rep.PostcopyPausedMs = m.PlanningMs, m.PostcopyMs, m.PostcopyPausedMs
	for _, d := range m.Decisions {
		rep.Decisions = append(rep.Decisions, fmt.Sprintf("%.1fs %s: %s", float64(d.TMs)/1000, d.Action, d.Reason))
	}
	for _, smp := range m.Samples {
		rep.Samples = append(rep.Samples, Sample{TMs: smp.TMs, RemainingBytes: smp.RemainingBytes, TransferredBytes: smp.TransferredBytes})
	}
	return rep, nil
}

// cancel cancels g's running migration with `ferry migration cancel`.
func (s *FerrySystem) cancel(ctx context.Context, g Guest) error {
	out, err := s.ferry(ctx, "migration", "list", "--vm", g.Name, "-o", "json")
	if err != nil {
		return err
	}
	var list ferryv1.ListMigrationsResponse
	if err := (protojson.UnmarshalOptions{DiscardUnknown: true}).Unmarshal([]byte(out), &list); err != nil {
		return fmt.Errorf("decode `migration list`: %w", err)
	}
	for _, m := range list.Migrations {
		if m.Status == "running" {
			_, err := s.ferry(ctx, "migration", "cancel", m.Id)
			return err
		}
	}
	return nil // it finished meanwhile
}

// Destroy implements System.
func (s *FerrySystem) Destroy(ctx context.Context, g Guest) error {
	if _, err := s.ferry(ctx, "vm", "get", g.Name); err != nil {
		return nil // no such VM (boot failed before create)
	}
	if _, err := s.ferry(ctx, "vm", "delete", g.Name); err != nil {
		return fmt.Errorf("ferry: delete VM: %w", err)
	}
	return nil
}

// Close implements System.
func (s *FerrySystem) Close() error { return nil }
