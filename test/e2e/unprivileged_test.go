package e2e

import (
	"context"
	"fmt"
	"os"
	"os/user"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ferryvm/ferry/internal/agent"
	"github.com/ferryvm/ferry/internal/pki"
	"github.com/ferryvm/ferry/internal/qmp"
)

// procStatus returns the fields of /proc/PID/status.
func procStatus(t *testing.T, pid int) map[string]string {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatalf("status of pid %d: %v", pid, err)
	}
	m := map[string]string{}
	for _, line := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(line, ":"); ok {
			m[k] = strings.Join(strings.Fields(v), " ")
		}
	}
	return m
}

// checkUnprivilegedQEMU checks that host's QEMUs run as uid (real,
// effective, saved and filesystem ids) under a seccomp filter.
func (c *cluster) checkUnprivilegedQEMU(host string, uid int) {
	c.t.Helper()
	pids := qemuPIDs(c.t, c.hostNS(host))
	if len(pids) == 0 {
		c.t.Fatalf("no QEMU on %s", host)
	}
	for _, pid := range pids {
		st := procStatus(c.t, pid)
		want := strings.Repeat(fmt.Sprint(uid)+" ", 4)
		if st["Uid"] != strings.TrimSpace(want) || st["Seccomp"] != "2" {
			c.t.Errorf("QEMU pid %d on %s: Uid %q Seccomp %q, want %q and 2 (filter)", pid, host, st["Uid"], st["Seccomp"], strings.TrimSpace(want))
		} else {
			c.t.Logf("QEMU pid %d on %s: Uid %s Gid %s Seccomp %s", pid, host, st["Uid"], st["Gid"], st["Seccomp"])
		}
	}
}

// tokenShape is what a Ferry token looks like (auth.NewToken).
var tokenShape = regexp.MustCompile(`ferry-[0-9a-f]{16}-[0-9a-f]{32,}`)

// checkNoSecrets fails if text (what) holds secret material: a token, a
// PEM block, a private key or one of the cluster's join tokens.
func (c *cluster) checkNoSecrets(what, text string) {
	c.t.Helper()
	secrets := []string{"-----BEGIN", "PRIVATE KEY"}
	for _, h := range []string{"h1", "h2"} {
		if b, err := os.ReadFile(filepath.Join(c.dir, h, "join.token")); err == nil && len(strings.TrimSpace(string(b))) > 0 {
			secrets = append(secrets, strings.TrimSpace(string(b)))
		}
	}
	for _, s := range secrets {
		if strings.Contains(text, s) {
			c.t.Errorf("%s holds secret material (%.12q...)", what, s)
		}
	}
	if m := tokenShape.FindString(text); m != "" {
		c.t.Errorf("%s holds a token (%.12q...)", what, m)
	}
}

// checkNoSecretsInPS reads the command line (what ps shows) of every
// process of the cluster (servers, etcd, agents) and of every QEMU on the
// hosts, and checks none holds secret material.
func (c *cluster) checkNoSecretsInPS() {
	c.t.Helper()
	ps, err := c.c.Processes()
	if err != nil {
		c.t.Fatal(err)
	}
	pids := map[int]bool{}
	for _, p := range ps {
		pids[p.PID] = true
	}
	for _, h := range []string{"h1", "h2"} {
		for _, pid := range qemuPIDs(c.t, c.hostNS(h)) {
			pids[pid] = true
		}
	}
	n := 0
	for pid := range pids {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		if err != nil {
			continue // exited
		}
		n++
		c.checkNoSecrets("command line of pid "+strconv.Itoa(pid), strings.ReplaceAll(string(b), "\x00", " "))
	}
	if n < 4 {
		c.t.Errorf("only %d cluster processes found to check (want server, agents, QEMU)", n)
	}
	c.t.Logf("%d command lines checked: no token, key or PEM", n)
}

// TestQEMURunsUnprivileged runs the agents with their defaults: every QEMU
// runs as the unprivileged system user ferry-qemu (hack/deps.sh and the
// Debian package create it) under seccomp on both hosts, and a post-copy
// migration (on TLS, whose credentials the unprivileged QEMUs read; the
// destination's page faults through /dev/userfaultfd, which that user may
// open) moves the guest without a reboot. No command line (servers,
// agents, QEMUs), report or event holds a token, key or PEM.
func TestQEMURunsUnprivileged(t *testing.T) {
	u, err := user.Lookup("ferry-qemu")
	if err != nil {
		t.Fatalf("the QEMU user (agent --qemu-user default): %v; run hack/deps.sh (packaging/qemu-user.sh)", err)
	}
	uid, _ := strconv.Atoi(u.Uid)
	// QEMU's own TLS, not the agents' relays (the default): this test is
	// about the unprivileged QEMUs reading their TLS credentials. The
	// relays' side is TestRelayedStreamInteroperatesWithQEMUTLS's and the
	// relay package's.
	c := upClusterEnv(t, 2, []string{agent.StreamRelayEnv + "=0"})
	const name, ip = "lowpriv", "198.19.0.63"
	boot := c.bootGuest(name, ip, "16:4")
	c.checkUnprivilegedQEMU("h1", uid)
	c.checkNoSecretsInPS()
	// A bandwidth cap keeps round 1 long enough for the switch to
	// post-copy (an idle guest's pre-copy would finish first).
	start := c.startMigration(name, "h2", "--strategy", "postcopy", "--bandwidth", "40")
	m, wall := c.waitFinal(start.Id, 90*time.Second)
	logReport(t, "unprivileged post-copy", m, wall)
	var states []string
	for _, e := range m.GetEvents() {
		states = append(states, e.GetState())
	}
	if !slices.Contains(states, "postcopy-active") {
		t.Errorf("migration states %v: never postcopy-active (the destination did not fault pages in)", states)
	}
	if m.Status != "completed" || m.Transport != "tls" || m.GetStrategy() != "postcopy" {
		t.Errorf("migration %s over %q with %q, want completed over tls with postcopy", m.Status, m.Transport, m.GetStrategy())
	}
	c.checkOnHost(name, "h2")
	c.checkUnprivilegedQEMU("h2", uid)
	c.checkStreamCredentials("h2", name, "h1")
	if id := c.bootID(ip, 10*time.Second); id != boot {
		t.Errorf("boot id %s after the migration, was %s: the guest rebooted", id, boot)
	}
	events := c.mustFerry("events", "--vm", name, "-o", "json")
	if !strings.Contains(events, m.Id) {
		t.Errorf("ferry events -o json names no event of %s:\n%.2000s", m.Id, events)
	}
	c.checkNoSecrets("ferry events -o json", events)
	c.checkNoSecrets("migration report", c.mustFerry("migration", "get", m.Id, "-o", "json"))
	c.checkNoSecretsInPS()
	c.noCredentialsLeft(name)
}

// checkStreamCredentials checks that QEMU's TLS streams use the hosts'
// stream certificates, not the agents' identities: each host keeps a
// stream key (mode 0600) that is not its agent key and a certificate of
// kind ferry-qemu for its name; the arrived VM's QEMU on host admitted
// only peer's stream certificate (its authz object names OU=ferry-qemu,
// and the TLS migration completed, so peer's QEMU presented one); and no
// QEMU command line names the agents' pki directory.
func (c *cluster) checkStreamCredentials(host, vm, peer string) {
	c.t.Helper()
	for _, h := range []string{host, peer} {
		dir := filepath.Join(c.dir, h, "pki")
		agentKey, err := os.ReadFile(filepath.Join(dir, "agent.key"))
		if err != nil {
			c.t.Fatalf("agent key of %s: %v", h, err)
		}
		streamKey, err := os.ReadFile(filepath.Join(dir, "stream.key"))
		if err != nil {
			c.t.Fatalf("stream key of %s: %v", h, err)
		}
		if string(agentKey) == string(streamKey) {
			c.t.Errorf("%s: the stream key QEMU gets is the agent's identity key", h)
		}
		if fi, err := os.Stat(filepath.Join(dir, "stream.key")); err != nil || fi.Mode().Perm() != 0o600 {
			c.t.Errorf("%s: stream key %v, mode %v; want 0600", h, err, fi.Mode().Perm())
		}
		certPEM, err := os.ReadFile(filepath.Join(dir, "stream.crt"))
		if err != nil {
			c.t.Fatalf("stream certificate of %s: %v", h, err)
		}
		cert, err := pki.ParseCert(certPEM)
		if err != nil || pki.IdentityOf(cert) != (pki.Identity{Kind: pki.KindQEMU, Name: h}) {
			c.t.Errorf("%s: stream certificate %v (%v), want %s/%s", h, err, cert != nil && err == nil, pki.KindQEMU, h)
		}
		for _, pid := range qemuPIDs(c.t, c.hostNS(h)) {
			if b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid)); err == nil && strings.Contains(string(b), dir) {
				c.t.Errorf("QEMU pid %d on %s names the agent's pki directory: %q", pid, h, strings.ReplaceAll(string(b), "\x00", " "))
			}
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	m, err := qmp.Connect(ctx, c.observeSock(host, vm), qmp.WithHandshakeTimeout(3*time.Second))
	if err != nil {
		c.t.Fatalf("connect to %s's QEMU on %s: %v", vm, host, err)
	}
	defer m.Close()
	var identity string
	if err := m.Run(ctx, "qom-get", map[string]any{"path": "/objects/ferry-stream-tls-authz", "property": "identity"}, &identity); err != nil {
		c.t.Fatalf("qom-get the stream authz of %s on %s: %v", vm, host, err)
	}
	if want := "O=ferry,OU=ferry-qemu,CN=" + peer; identity != want {
		c.t.Errorf("%s's QEMU on %s admitted %q, want only %q (the source's stream certificate)", vm, host, identity, want)
	}
	c.t.Logf("%s's QEMU on %s admitted %q; stream keys differ from the agent keys", vm, host, identity)
}
