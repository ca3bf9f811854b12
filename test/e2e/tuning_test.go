package e2e

import (
	"context"
	"strings"
	"testing"
	"time"

	ferryv1 "github.com/ferryvm/ferry/gen/ferry/v1"
	"github.com/ferryvm/ferry/internal/qmp"
)

// tuningValue returns the report's value of a planner tuning choice.
func tuningValue(t *testing.T, m *ferryv1.Migration, name string) string {
	t.Helper()
	for _, c := range m.GetPlan().GetTuning().GetChoices() {
		if c.Name == name {
			t.Logf("tuning %s=%s: %s", c.Name, c.Value, c.Reason)
			if c.Reason == "" {
				t.Errorf("tuning %s has no reason", name)
			}
			return c.Value
		}
	}
	t.Errorf("report has no tuning choice %s: %v", name, m.GetPlan().GetTuning().GetChoices())
	return ""
}

// destinationQEMU queries the arrived VM's QEMU (its observer socket) for
// the migration capabilities and parameters it was given.
func destinationQEMU(t *testing.T, sock string) (map[qmp.Capability]bool, qmp.MigrationParameters) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	m, err := qmp.Connect(ctx, sock, qmp.WithHandshakeTimeout(3*time.Second))
	if err != nil {
		t.Fatalf("connect %s: %v", sock, err)
	}
	defer m.Close()
	caps, err := m.QueryMigrateCapabilities(ctx)
	if err != nil {
		t.Fatalf("query-migrate-capabilities: %v", err)
	}
	p, err := m.QueryMigrateParameters(ctx)
	if err != nil {
		t.Fatalf("query-migrate-parameters: %v", err)
	}
	return qmp.CapabilityMap(caps), p
}

// TestPostcopyWithPreempt: a post-copy between two QEMU 10 hosts runs with
// postcopy-preempt on both sides and the planner's early switch point; it
// completes with the same boot, and the report names both choices.
func TestPostcopyWithPreempt(t *testing.T) {
	c := upCluster(t, 2)
	const name, ip = "preempt", "198.19.0.81"
	boot := c.bootGuest(name, ip, "64:16")
	// The switch point needs the dirty rate: wait until telemetry has it.
	if p := c.waitPlannedDirty(name, "h2", 20*time.Second); p.GetInputs().GetDirtyRateMibps() <= 0 {
		t.Fatalf("telemetry saw no dirtying in 20 s: %v", p.GetInputs())
	}
	// A 24 MiB/s cap against 16 MiB/s of dirtying: round 1 takes seconds,
	// so the switch point comes before QEMU could converge on its own.
	m, wall := c.mustMigrateWait(name, "h2", "--strategy", "postcopy", "--bandwidth", "24")
	logReport(t, "post-copy with preempt", m, wall)
	if m.Status != "completed" || m.Strategy != "postcopy" || m.GetPostcopyMs() <= 0 {
		t.Fatalf("post-copy: status %s, strategy %s, post-copy %d ms", m.Status, m.Strategy, m.GetPostcopyMs())
	}
	if v := tuningValue(t, m, "postcopy-preempt"); v != "on" {
		t.Errorf("postcopy-preempt = %q, want on", v)
	}
	if v := tuningValue(t, m, "postcopy-start"); !strings.HasSuffix(v, "% of round 1") {
		t.Errorf("postcopy-start = %q", v)
	}
	if v := tuningValue(t, m, "multifd-channels"); v != "1" {
		t.Errorf("multifd-channels = %q with post-copy (QEMU 10.0 refuses multifd with post-copy)", v)
	}
	caps, _ := destinationQEMU(t, c.observeSock("h2", name))
	if !caps[qmp.CapPostcopyPreempt] || !caps[qmp.CapPostcopyRAM] {
		t.Errorf("destination QEMU capabilities: postcopy-ram %v, postcopy-preempt %v", caps[qmp.CapPostcopyRAM], caps[qmp.CapPostcopyPreempt])
	}
	if got := c.bootID(ip, 10*time.Second); got != boot {
		t.Errorf("boot_id changed: %s -> %s", boot, got)
	}
	report := c.mustFerry("migration", "get", m.Id)
	if !strings.Contains(report, "postcopy-preempt=on") {
		t.Errorf("the report does not show the tuning:\n%s", report)
	}
}

// TestMultifdMigration: a pre-copy with multifd channels (as --multifd asks)
// gets zero-page detection in the channels and the switchover bandwidth
// from the measured rate, on both sides where QEMU needs them; it completes
// with the same boot and the choices in the report and the dry run.
func TestMultifdMigration(t *testing.T) {
	c := upCluster(t, 2)
	const name, ip = "multifd", "198.19.0.82"
	boot := c.bootGuest(name, ip, "32:4")
	dry := c.mustFerry("migrate", name, "--to", "h2", "--strategy", "precopy", "--multifd", "2", "--dry-run")
	if !strings.Contains(dry, "tuning     multifd-channels=2") || !strings.Contains(dry, "zero-page-detection=multifd") {
		t.Errorf("dry run lacks the tuning:\n%s", dry)
	}
	m, wall := c.mustMigrateWait(name, "h2", "--strategy", "precopy", "--multifd", "2")
	logReport(t, "multifd pre-copy", m, wall)
	if m.Status != "completed" || m.Strategy != "precopy" {
		t.Fatalf("multifd pre-copy: status %s, strategy %s", m.Status, m.Strategy)
	}
	if v := tuningValue(t, m, "multifd-channels"); v != "2" {
		t.Errorf("multifd-channels = %q, want 2", v)
	}
	if v := tuningValue(t, m, "zero-page-detection"); v != "multifd" {
		t.Errorf("zero-page-detection = %q, want multifd", v)
	}
	if v := tuningValue(t, m, "avail-switchover-bandwidth"); !strings.HasSuffix(v, "/s") {
		t.Errorf("avail-switchover-bandwidth = %q, want a rate", v)
	}
	caps, p := destinationQEMU(t, c.observeSock("h2", name))
	if !caps[qmp.CapMultifd] || qmp.Deref(p.MultifdChannels) != 2 {
		t.Errorf("destination QEMU: multifd %v, channels %d", caps[qmp.CapMultifd], qmp.Deref(p.MultifdChannels))
	}
	if got := c.bootID(ip, 10*time.Second); got != boot {
		t.Errorf("boot_id changed: %s -> %s", boot, got)
	}
}
