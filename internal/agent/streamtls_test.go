package agent

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"time"

	"connectrpc.com/connect"
	agentv1 "github.com/ferryvm/ferry/gen/ferry/agent/v1"
	"github.com/ferryvm/ferry/internal/pki"
	"github.com/ferryvm/ferry/internal/qmp/qmptest"
)

// param returns a migration parameter the fake QEMU was given, as a string.
func param(t *testing.T, q *qmptest.FakeQEMU, name string) string {
	t.Helper()
	var s string
	if raw := q.Parameter(name); raw != nil {
		if err := json.Unmarshal(raw, &s); err != nil {
			t.Fatalf("parameter %s = %s: %v", name, raw, err)
		}
	}
	return s
}

// noTLSDirs fails if a credentials directory is left in the VM's directory.
func noTLSDirs(t *testing.T, ta *testAgent, name string) {
	t.Helper()
	left, _ := filepath.Glob(filepath.Join(ta.dir, "vms", name, ".tls-*"))
	if len(left) > 0 {
		t.Errorf("credentials left on disk: %v", left)
	}
}

// By default the source's QEMU connects on TLS and checks the destination
// host's name; its credentials' files are gone once QEMU has read them.
func TestOutgoingStreamOnTLSByDefault(t *testing.T) {
	ta := newTestAgent(t)
	q := leaving(t, ta, "web", "m1")
	obj := q.Object(streamTLSID)
	if obj == nil {
		t.Fatal("no tls-creds object added")
	}
	if obj["qom-type"] != "tls-creds-x509" || obj["endpoint"] != "client" || obj["verify-peer"] != true {
		t.Errorf("credentials object %v", obj)
	}
	if dir, _ := obj["dir"].(string); !strings.HasPrefix(dir, filepath.Join(ta.dir, "vms", "web")+"/") {
		t.Errorf("credentials in %q, want the VM's own directory", dir)
	}
	noTLSDirs(t, ta, "web")
	if c, h := param(t, q, "tls-creds"), param(t, q, "tls-hostname"); c != streamTLSID || h != "h2" {
		t.Errorf("tls-creds %q tls-hostname %q, want %s and h2", c, h, streamTLSID)
	}
}

// The destination listens on TLS admitting only the source host's stream
// certificate, and says so.
func TestIncomingStreamOnTLSAdmitsOnlyTheSource(t *testing.T) {
	ta := newTestAgent(t)
	resp, err := ta.mig.PrepareIncoming(testCtx(t), connect.NewRequest(&agentv1.PrepareIncomingRequest{SourceHost: "h1", Spec: testSpec(t, "web"), MigrationId: "m1"}))
	if err != nil {
		t.Fatal(err)
	}
	if resp.Msg.Transport != TransportTLS {
		t.Errorf("transport %q, want tls", resp.Msg.Transport)
	}
	q := ta.rt.qemuOf(ta.dir, "web")
	if obj := q.Object(streamTLSID); obj == nil || obj["endpoint"] != "server" || obj["verify-peer"] != true {
		t.Errorf("credentials object %v", obj)
	}
	authz := q.Object(streamTLSID + "-authz")
	if authz == nil || authz["qom-type"] != "authz-simple" || authz["identity"] != "O=ferry,OU=ferry-qemu,CN=h1" {
		t.Errorf("authz object %v", authz)
	}
	if c, z := param(t, q, "tls-creds"), param(t, q, "tls-authz"); c != streamTLSID || z != streamTLSID+"-authz" {
		t.Errorf("tls-creds %q tls-authz %q", c, z)
	}
	noTLSDirs(t, ta, "web")
}

// insecure_transport clears TLS (a QEMU keeps an earlier migration's
// parameters), adds no credentials and is reported as plain.
func TestInsecureTransportIsPlainAndExplicit(t *testing.T) {
	ta := newTestAgent(t)
	resp, err := ta.mig.PrepareIncoming(testCtx(t), connect.NewRequest(&agentv1.PrepareIncomingRequest{Spec: testSpec(t, "web"), MigrationId: "m1", InsecureTransport: true}))
	if err != nil {
		t.Fatal(err)
	}
	if resp.Msg.Transport != TransportPlain {
		t.Errorf("transport %q, want plain", resp.Msg.Transport)
	}
	q := ta.rt.qemuOf(ta.dir, "web")
	if raw := q.Parameter("tls-creds"); string(raw) != `""` || q.Object(streamTLSID) != nil {
		t.Errorf("tls-creds %s, object %v: want cleared and none", raw, q.Object(streamTLSID))
	}

	startVM(t, ta, "db")
	_, err = ta.mig.StartOutgoing(testCtx(t), connect.NewRequest(&agentv1.StartOutgoingRequest{Name: "db", MigrationId: "m2", Uri: dstURI, InsecureTransport: true}))
	if err != nil {
		t.Fatal(err)
	}
	if raw := ta.rt.qemuOf(ta.dir, "db").Parameter("tls-creds"); string(raw) != `""` {
		t.Errorf("source tls-creds %s, want cleared", raw)
	}
}

// Without the peer's host name an encrypted stream cannot verify it: the
// step is refused naming the field, and nothing is left behind.
func TestStreamTLSNeedsThePeerHost(t *testing.T) {
	ta := newTestAgent(t)
	startVM(t, ta, "web")
	_, err := ta.mig.StartOutgoing(testCtx(t), connect.NewRequest(&agentv1.StartOutgoingRequest{Name: "web", MigrationId: "m1", Uri: dstURI}))
	if connect.CodeOf(err) != connect.CodeInvalidArgument || !strings.Contains(err.Error(), "dest_host: required") {
		t.Fatalf("StartOutgoing without dest_host: %v", err)
	}
	_, err = ta.mig.PrepareIncoming(testCtx(t), connect.NewRequest(&agentv1.PrepareIncomingRequest{SourceHost: "../h1", Spec: testSpec(t, "db"), MigrationId: "m2"}))
	if connect.CodeOf(err) != connect.CodeInvalidArgument || !strings.Contains(err.Error(), "source_host: must be a DNS label") {
		t.Fatalf("PrepareIncoming with a bad source_host: %v", err)
	}
	if _, err := os.Stat(filepath.Join(ta.dir, "vms", "db")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("refused arrival left its directory: %v", err)
	}
	noTLSDirs(t, ta, "web")
}

// A second migration of the same QEMU (a retried attempt, or a VM that
// arrived by migration leaving again) replaces the credentials.
func TestStreamTLSReplacesAnEarlierMigrationsCredentials(t *testing.T) {
	ta := newTestAgent(t)
	q := leaving(t, ta, "web", "m1")
	first, _ := q.Object(streamTLSID)["dir"].(string)
	if _, err := cancelOut(t, ta, "web", "m1", false); err != nil {
		t.Fatal(err)
	}
	mustStartOut(t, ta, "web", "m2")
	if second, _ := q.Object(streamTLSID)["dir"].(string); second == "" || second == first {
		t.Errorf("credentials dir %q after %q: want a new object", second, first)
	}
	noTLSDirs(t, ta, "web")
}

// QEMU gets the host's stream certificate and key, never the agent's own
// key: on both endpoints the files the credentials object read are the
// stream pair (kind ferry-qemu, this host), and no file holds the agent's
// key.
func TestQEMUGetsTheStreamPairNotTheAgentKey(t *testing.T) {
	ta := newTestAgent(t)
	agentKeyPEM, err := os.ReadFile(ta.a.pkiPath(agentKey))
	if err != nil {
		t.Fatal(err)
	}
	streamKeyPEM, err := os.ReadFile(ta.a.pkiPath(streamKey))
	if err != nil {
		t.Fatal(err)
	}
	if string(agentKeyPEM) == string(streamKeyPEM) {
		t.Fatal("the stream key is the agent's key")
	}
	if fi, err := os.Stat(ta.a.pkiPath(streamKey)); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("stream key: %v, mode %v; want 0600", err, fi.Mode().Perm())
	}
	out := leaving(t, ta, "web", "m1")
	if _, err := ta.mig.PrepareIncoming(testCtx(t), connect.NewRequest(&agentv1.PrepareIncomingRequest{SourceHost: "h2", Spec: testSpec(t, "db"), MigrationId: "m2"})); err != nil {
		t.Fatal(err)
	}
	in := ta.rt.qemuOf(ta.dir, "db")
	for _, c := range []struct {
		side      string
		q         *qmptest.FakeQEMU
		cert, key string
	}{{"source", out, "client-cert.pem", "client-key.pem"}, {"destination", in, "server-cert.pem", "server-key.pem"}} {
		files := c.q.CredentialFiles(streamTLSID)
		if files == nil {
			t.Fatalf("%s: no credentials read", c.side)
		}
		if string(files[c.key]) != string(streamKeyPEM) {
			t.Errorf("%s: QEMU's key is not the stream key", c.side)
		}
		for f, b := range files {
			if strings.Contains(string(b), string(agentKeyPEM)) {
				t.Errorf("%s: %s holds the agent's identity key", c.side, f)
			}
		}
		cert, err := pki.ParseCert(files[c.cert])
		if err != nil {
			t.Fatalf("%s: %v", c.side, err)
		}
		if got := pki.IdentityOf(cert); got != (pki.Identity{Kind: pki.KindQEMU, Name: ta.a.cfg.Name}) {
			t.Errorf("%s: QEMU's certificate is %s, want %s/%s", c.side, got, pki.KindQEMU, ta.a.cfg.Name)
		}
	}
}

// An agent without a stream certificate (upgraded, its server older than
// stream certificates) refuses an encrypted stream with a failed
// precondition naming the cause, rather than hand QEMU its own key.
func TestNoStreamCertRefusesTLSStreams(t *testing.T) {
	ta := newTestAgent(t)
	if err := os.Remove(ta.a.pkiPath(streamCert)); err != nil {
		t.Fatal(err)
	}
	startVM(t, ta, "web")
	_, err := ta.mig.StartOutgoing(testCtx(t), connect.NewRequest(&agentv1.StartOutgoingRequest{Name: "web", MigrationId: "m1", Uri: dstURI, DestHost: "h2"}))
	if connect.CodeOf(err) != connect.CodeFailedPrecondition || !errors.Is(err, ErrNoStreamCert) {
		t.Fatalf("StartOutgoing without a stream certificate: %v, want failed precondition (%v)", err, ErrNoStreamCert)
	}
	if obj := ta.rt.qemuOf(ta.dir, "web").Object(streamTLSID); obj != nil {
		t.Errorf("credentials added anyway: %v", obj)
	}
	noTLSDirs(t, ta, "web")
}

// A saved stream certificate of the wrong kind or host is not valid.
func TestSavedStreamChecksKindAndHost(t *testing.T) {
	ta := newTestAgent(t)
	ca, err := testCA()
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		kind pki.Kind
		name string
	}{{pki.KindAgent, ta.a.cfg.Name}, {pki.KindQEMU, "other"}} {
		cert, key, err := ca.IssueKeyPair(c.kind, c.name, time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		if err := ta.a.takeStream(ca.CertPEM, cert, key); err == nil {
			t.Errorf("%s/%s taken as the stream certificate", c.kind, c.name)
		}
	}
	if _, _, err := ta.a.savedStream(); err != nil {
		t.Errorf("the valid saved stream certificate: %v", err)
	}
}
