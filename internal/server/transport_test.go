package server

import (
	"context"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	ferryv1 "github.com/ferryvm/ferry/gen/ferry/v1"
	"github.com/ferryvm/ferry/internal/pki"
)

// TestStreamTransportRefusesOldAgents: a migration on TLS whose source (or
// destination) agent does not announce TLS streams (an older agent, which
// would send in plaintext) is refused when it is requested, before any
// agent is called, naming the host, its version and the fix; plaintext
// asked for explicitly, and a cold migration sending no stream, pass.
func TestStreamTransportRefusesOldAgents(t *testing.T) {
	newer := &ferryv1.Host{Name: "h2", FerryVersion: "1.5.0", AgentFeatures: []string{pki.FeatureTLSStreams}}
	older := &ferryv1.Host{Name: "h1", FerryVersion: "1.4.0"}
	for _, c := range []struct {
		name       string
		opt        *ferryv1.MigrationOptions
		src, dst   *ferryv1.Host
		localDisks int
		refused    string
	}{
		{"old source", &ferryv1.MigrationOptions{Strategy: "precopy"}, older, newer, 0, "source host h1: its agent (version 1.4.0)"},
		{"old destination", &ferryv1.MigrationOptions{Strategy: "postcopy"}, newer, older, 0, "destination host h1"},
		{"old source, cold with local disks", &ferryv1.MigrationOptions{Strategy: "cold"}, older, newer, 1, "source host h1"},
		{"old source, plaintext asked", &ferryv1.MigrationOptions{Strategy: "precopy", InsecureTransport: true}, older, newer, 0, ""},
		{"old source, cold without local disks", &ferryv1.MigrationOptions{Strategy: "cold"}, older, newer, 0, ""},
		{"both new", &ferryv1.MigrationOptions{Strategy: "auto"}, newer, newer, 2, ""},
	} {
		err := checkStreamTransport(c.opt, c.src, c.dst, c.localDisks)
		switch {
		case c.refused == "" && err != nil:
			t.Errorf("%s: refused: %v", c.name, err)
		case c.refused != "" && (connect.CodeOf(err) != connect.CodeFailedPrecondition || !strings.Contains(err.Error(), c.refused) || !strings.Contains(err.Error(), "insecureTransport")):
			t.Errorf("%s: %v, want a failed precondition naming %q and the fix", c.name, err, c.refused)
		}
	}
}

// TestMigrateRefusesOldSourceAgent: Migrate itself refuses a TLS migration
// from a host whose agent predates TLS streams, before the engine calls
// any agent (the VM is not even locked).
func TestMigrateRefusesOldSourceAgent(t *testing.T) {
	s, st := newTestServer(t)
	ctx := context.Background()
	if err := st.PutHost(ctx, &ferryv1.Host{Name: "h1", Address: "unix:///nonexistent/h1", MigrationIp: "198.18.0.9", FerryVersion: "1.4.0",
		Capacity: &ferryv1.HostCapacity{Cpus: 2, MemoryMib: 4096}}, time.Minute); err != nil {
		t.Fatal(err)
	}
	_, err := (&migrationService{s}).Migrate(ctx, connect.NewRequest(&ferryv1.MigrateRequest{Vm: "web", To: "h2", Options: &ferryv1.MigrationOptions{Strategy: "precopy"}}))
	if connect.CodeOf(err) != connect.CodeFailedPrecondition || !strings.Contains(err.Error(), "source host h1: its agent (version 1.4.0) does not send migration streams on TLS") {
		t.Fatalf("err = %v, want the old source refused", err)
	}
	vm, _ := st.GetVM(ctx, "web")
	if vm.State != "running" || vm.MigrationId != "" || vm.Generation != 1 {
		t.Errorf("VM record after the refusal: %v", vm)
	}
}

// TestPostcopyKeptFromHostsWithoutUserfaultfd: a destination whose agent
// reports post-copy unavailable refuses strategies postcopy and hybrid
// with its reason; auto plans without post-copy; precopy is untouched.
func TestPostcopyKeptFromHostsWithoutUserfaultfd(t *testing.T) {
	dst := &ferryv1.Host{Name: "h2", Qemu: &ferryv1.HostQEMU{PostcopyUnavailable: "QEMU user ferry-qemu cannot open /dev/userfaultfd"}}
	for _, s := range []string{"postcopy", "hybrid"} {
		err := checkPostcopyHost(&ferryv1.MigrationOptions{Strategy: s}, dst)
		if connect.CodeOf(err) != connect.CodeFailedPrecondition || !strings.Contains(err.Error(), "/dev/userfaultfd") {
			t.Errorf("strategy %s: %v, want refused with the host's reason", s, err)
		}
	}
	auto := &ferryv1.MigrationOptions{Strategy: "auto"}
	if err := checkPostcopyHost(auto, dst); err != nil || !auto.NoPostcopy {
		t.Errorf("auto: %v, no_postcopy %v; want planned without post-copy", err, auto.NoPostcopy)
	}
	pre := &ferryv1.MigrationOptions{Strategy: "precopy"}
	if err := checkPostcopyHost(pre, dst); err != nil || pre.NoPostcopy {
		t.Errorf("precopy: %v, no_postcopy %v", err, pre.NoPostcopy)
	}
	if err := checkPostcopyHost(&ferryv1.MigrationOptions{Strategy: "postcopy"}, &ferryv1.Host{Name: "h3"}); err != nil {
		t.Errorf("a host that can: %v", err)
	}
}

// TestStreamCertMismatchRefused: in a rolling upgrade, a TLS migration
// between a host whose QEMU uses stream certificates and one whose QEMU
// still uses its agent's certificate is refused (the destination would
// refuse the handshake), naming the older host, its version and the fix;
// hosts agreeing pass, and plaintext asked for explicitly passes.
func TestStreamCertMismatchRefused(t *testing.T) {
	streamCert := &ferryv1.Host{Name: "h2", FerryVersion: "1.6.0", AgentFeatures: []string{pki.FeatureTLSStreams, pki.FeatureQEMUStreamCert}}
	agentCert := &ferryv1.Host{Name: "h1", FerryVersion: "1.5.0", AgentFeatures: []string{pki.FeatureTLSStreams}}
	precopy := &ferryv1.MigrationOptions{Strategy: "precopy"}
	for _, c := range []struct {
		name     string
		opt      *ferryv1.MigrationOptions
		src, dst *ferryv1.Host
		refused  string
	}{
		{"old source to new destination", precopy, agentCert, streamCert, "source host h1: its agent (version 1.5.0) gives QEMU its own agent certificate"},
		{"new source to old destination", precopy, streamCert, agentCert, "destination host h1: its agent (version 1.5.0)"},
		{"both new", precopy, streamCert, streamCert, ""},
		{"both old", precopy, agentCert, agentCert, ""},
		{"mixed, plaintext asked", &ferryv1.MigrationOptions{Strategy: "precopy", InsecureTransport: true}, streamCert, agentCert, ""},
	} {
		err := checkStreamTransport(c.opt, c.src, c.dst, 0)
		switch {
		case c.refused == "" && err != nil:
			t.Errorf("%s: refused: %v", c.name, err)
		case c.refused != "" && (connect.CodeOf(err) != connect.CodeFailedPrecondition || !strings.Contains(err.Error(), c.refused) || !strings.Contains(err.Error(), "insecureTransport") || !strings.Contains(err.Error(), "upgrade h1")):
			t.Errorf("%s: %v, want a failed precondition naming %q and the fix", c.name, err, c.refused)
		}
	}
}
