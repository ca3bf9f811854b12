package agent

import (
	"bufio"
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"time"

	"connectrpc.com/connect"
	agentv1 "github.com/ferryvm/ferry/gen/ferry/agent/v1"
)

// Cold migration of local disks, destination side: PrepareDiskCopy makes
// the VM's directory with a marker (diskArrivalFile) and listens on the
// migration address; the source's stream is written into <disk>.part
// files, each verified by its content digest before it is renamed to the
// image the VM's QEMU opens, and only then is the arrival marked verified.
// The arrival is never a VM of this host (no spec file, not listed): the
// engine's StartVM (after the owner switch) boots the VM on the verified
// copies; its DeleteVM with remove_local_disks removes them. An agent
// that starts finds an unverified arrival's receiver gone with its
// previous process and removes it (the source's copy failed with the
// connection).

// diskArrivalFile marks a VM directory holding a cold migration's disk copies.
const diskArrivalFile = "disk-arrival.json"

// copyIdle bounds the wait for the next bytes of a copy stream.
const copyIdle = time.Minute

// diskArrivalRecord is diskArrivalFile's content.
type diskArrivalRecord struct {
	ID       string `json:"id"`
	Verified bool   `json:"verified"`
}

// diskArrival is one cold migration's disk copies arriving here.
type diskArrival struct {
	a     *Agent
	vm    string
	id    string
	token string
	dir   string
	disks []*agentv1.LocalDisk
	ln    net.Listener // nil once verified, or after an agent restart
	// transport is how ln receives: TransportTLS (mutual TLS admitting
	// only the source host's agent) or TransportPlain (insecure_transport).
	transport string

	mu       sync.Mutex
	conn     net.Conn
	verified bool
	digests  []string
	closed   bool

	orphanSince time.Time // an authoritative heartbeat named neither it nor its VM since (reapArrivals)
}

// diskArrivals are the arrivals of this agent, by VM name.
type diskArrivals struct {
	mu    sync.Mutex
	byVM  map[string]*diskArrival
	ended map[string]bool // migration ids whose arrival was removed (a late PrepareDiskCopy is refused)
}

var diskNameRE = regexp.MustCompile(`^[a-zA-Z0-9][a-zA-Z0-9_-]{0,62}$`)

// PrepareDiskCopy implements DiskAgentService: empty copies and a receiver.
func (s *diskService) PrepareDiskCopy(ctx context.Context, req *connect.Request[agentv1.PrepareDiskCopyRequest]) (*connect.Response[agentv1.PrepareDiskCopyResponse], error) {
	a := s.a
	m := req.Msg
	switch {
	case m.GetName() == "" || strings.ContainsAny(m.GetName(), "/\\") || m.GetName() == "." || m.GetName() == "..":
		return nil, invalid("name", "must be a VM name, got %q", m.GetName())
	case m.GetMigrationId() == "":
		return nil, invalid("migration_id", "required")
	case len(m.GetDisks()) == 0:
		return nil, invalid("disks", "at least one local disk is required")
	case a.cfg.MigrationIP == "":
		return nil, failedPrecondition("host %s has no migration address (agent --migration-ip): it cannot receive disks", a.cfg.Name)
	}
	for i, d := range m.GetDisks() {
		switch {
		case !diskNameRE.MatchString(d.GetName()):
			return nil, invalid(fmt.Sprintf("disks[%d].name", i), "letters, digits, '-' and '_', got %q", d.GetName())
		case d.GetFormat() != "qcow2" && d.GetFormat() != "raw":
			return nil, invalid(fmt.Sprintf("disks[%d].format", i), "qcow2 or raw, got %q", d.GetFormat())
		case d.GetVirtualSizeBytes() <= 0:
			return nil, invalid(fmt.Sprintf("disks[%d].virtual_size_bytes", i), "must be > 0")
		}
	}
	var tlsCfg *tls.Config
	if !m.GetInsecureTransport() {
		c, err := a.hostStreamTLS(m.GetSourceHost(), "source_host", true)
		if err != nil {
			return nil, err
		}
		tlsCfg = c
	}
	arr, err := a.prepareArrival(m, tlsCfg)
	if err != nil {
		return nil, err
	}
	return connect.NewResponse(&agentv1.PrepareDiskCopyResponse{Address: arr.ln.Addr().String() + "/" + arr.token, Transport: arr.transport}), nil
}

// prepareArrival makes (or finds) the arrival of m's copies; its receiver
// is on TLS with tlsCfg (nil: plaintext).
func (a *Agent) prepareArrival(m *agentv1.PrepareDiskCopyRequest, tlsCfg *tls.Config) (*diskArrival, error) {
	as := &a.arrivals
	as.mu.Lock()
	defer as.mu.Unlock()
	if as.byVM == nil {
		as.byVM, as.ended = map[string]*diskArrival{}, map[string]bool{}
	}
	if old := as.byVM[m.Name]; old != nil {
		if old.id == m.MigrationId && old.ln != nil {
			return old, nil
		}
		if old.id == m.MigrationId {
			return nil, failedPrecondition("the disk copies of migration %s are already verified here (or their receiver ended with the agent's restart)", m.MigrationId)
		}
		a.log.Warn("replacing the disk copies of an earlier migration", "vm", m.Name, "old", old.id, "new", m.MigrationId)
		old.removeLocked(as, "replaced")
	}
	if as.ended[m.MigrationId] {
		return nil, failedPrecondition("the disk copies of migration %s were removed here: start a new migration", m.MigrationId)
	}
	if _, ok := a.find(m.Name); ok {
		return nil, failedPrecondition("VM %s is already on host %s", m.Name, a.cfg.Name)
	}
	dir := filepath.Join(a.vmsDir(), m.Name)
	if _, err := os.Stat(filepath.Join(dir, specFile)); err == nil {
		return nil, failedPrecondition("VM %s has a directory with a spec on host %s: remove it first", m.Name, a.cfg.Name)
	}
	if err := mkDisksDir(filepath.Join(dir, disksDir)); err != nil {
		return nil, err
	}
	if err := writeRecord(filepath.Join(dir, diskArrivalFile), diskArrivalRecord{ID: m.MigrationId}); err != nil {
		_ = os.RemoveAll(dir)
		return nil, err
	}
	ln, err := net.Listen("tcp", net.JoinHostPort(a.cfg.MigrationIP, "0"))
	if err != nil {
		_ = os.RemoveAll(dir)
		return nil, fmt.Errorf("listen for the disk copy on %s: %w", a.cfg.MigrationIP, err)
	}
	transport := TransportPlain
	if tlsCfg != nil {
		ln, transport = tls.NewListener(ln, tlsCfg), TransportTLS
	}
	tok := make([]byte, 16)
	_, _ = rand.Read(tok)
	arr := &diskArrival{a: a, vm: m.Name, id: m.MigrationId, token: hex.EncodeToString(tok), dir: dir, disks: m.Disks, ln: ln, transport: transport}
	as.byVM[m.Name] = arr
	go arr.serve()
	a.log.Info("receiving disk copies", "vm", m.Name, "migration", m.MigrationId, "address", ln.Addr().String(), "disks", len(m.Disks), "transport", transport, "from", m.GetSourceHost())
	return arr, nil
}

// imagePath is where disk d's verified copy goes (where the VM's QEMU opens it).
func (arr *diskArrival) imagePath(d *agentv1.LocalDisk) string {
	return filepath.Join(arr.dir, disksDir, d.GetName()+"."+d.GetFormat())
}

// serve accepts the source's connections, one at a time.
func (arr *diskArrival) serve() {
	for {
		c, err := arr.ln.Accept()
		if err != nil {
			return
		}
		arr.mu.Lock()
		if arr.closed {
			arr.mu.Unlock()
			c.Close()
			return
		}
		arr.conn = c
		arr.mu.Unlock()
		err = arr.receive(c)
		c.Close()
		if err != nil {
			arr.a.log.Warn("disk copy failed", "vm", arr.vm, "migration", arr.id, "err", err)
		}
	}
}

// receive reads one copy stream; it answers the source with the verdict.
func (arr *diskArrival) receive(c net.Conn) error {
	r := bufio.NewReaderSize(c, 256<<10)
	_ = c.SetReadDeadline(time.Now().Add(copyIdle))
	magic := make([]byte, len(copyMagic))
	if _, err := io.ReadFull(r, magic); err != nil || string(magic) != copyMagic {
		return fmt.Errorf("not a disk copy stream (%v)", err)
	}
	var h copyHeader
	if err := readLine(r, &h); err != nil {
		return fmt.Errorf("read the copy header: %w", err)
	}
	if err := arr.check(h); err != nil {
		_ = writeLine(c, copyAck{Error: err.Error()})
		return err
	}
	arr.mu.Lock()
	verified, digests := arr.verified, arr.digests
	arr.mu.Unlock()
	if verified {
		return writeLine(c, copyAck{Verified: true})
	}
	if err := writeLine(c, copyAck{}); err != nil {
		return err
	}
	digests, err := arr.receiveDisks(c, r, h)
	if err != nil {
		_ = writeLine(c, copyReply{Error: err.Error()})
		return err
	}
	if err := arr.commit(digests); err != nil {
		_ = writeLine(c, copyReply{Error: err.Error()})
		return err
	}
	arr.a.log.Info("disk copies verified", "vm", arr.vm, "migration", arr.id, "digests", digests)
	return writeLine(c, copyReply{OK: true, Digests: digests})
}

// check validates a header against the arrival.
func (arr *diskArrival) check(h copyHeader) error {
	switch {
	case h.MigrationID != arr.id:
		return fmt.Errorf("the copy is for migration %q, this receiver for %s", h.MigrationID, arr.id)
	case h.Token != arr.token:
		return errors.New("wrong token")
	case len(h.Disks) != len(arr.disks):
		return fmt.Errorf("the copy has %d disks, the migration %d", len(h.Disks), len(arr.disks))
	}
	for i, d := range h.Disks {
		want := arr.disks[i]
		if d.Name != want.GetName() || d.Size < 0 || d.Size > 2*want.GetVirtualSizeBytes()+(64<<20) {
			return fmt.Errorf("disks[%d]: %q of %d bytes does not fit disk %q of %d bytes", i, d.Name, d.Size, want.GetName(), want.GetVirtualSizeBytes())
		}
	}
	return nil
}

// receiveDisks writes each disk's data blocks into its .part file and
// checks its digest; it returns the digests.
func (arr *diskArrival) receiveDisks(c net.Conn, r *bufio.Reader, h copyHeader) ([]string, error) {
	buf := make([]byte, copyBlockSize)
	var digests []string
	var verified int64
	last := time.Now()
	progress := func(_ int64, b []byte) error {
		verified += int64(len(b))
		if time.Since(last) >= time.Second {
			last = time.Now()
			_ = c.SetWriteDeadline(time.Now().Add(copyIdle))
			return writeLine(c, copyReply{Progress: true, VerifiedBytes: verified})
		}
		return nil
	}
	for i, d := range h.Disks {
		part := arr.imagePath(arr.disks[i]) + ".part"
		f, err := os.OpenFile(part, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o644)
		if err != nil {
			return nil, fmt.Errorf("disk %s: %w", d.Name, err)
		}
		dig, err := arr.receiveDisk(c, r, f, d.Size, buf)
		if err == nil {
			err = f.Sync()
		}
		var got [32]byte
		if err == nil {
			got, err = contentDigest(f, d.Size, progress)
		}
		f.Close()
		if err == nil && got != dig {
			err = fmt.Errorf("checksum mismatch: the source sent %s, the destination's copy is %s", hexDigest(dig), hexDigest(got))
		}
		if err != nil {
			_ = os.Remove(part)
			return nil, fmt.Errorf("disk %s: %w", d.Name, err)
		}
		digests = append(digests, hexDigest(got))
	}
	return digests, nil
}

func (arr *diskArrival) receiveDisk(c net.Conn, r *bufio.Reader, f *os.File, size int64, buf []byte) ([32]byte, error) {
	if err := f.Truncate(size); err != nil {
		return [32]byte{}, err
	}
	for {
		_ = c.SetReadDeadline(time.Now().Add(copyIdle))
		kind, off, data, dig, err := readFrame(r, size, buf)
		if err != nil {
			return [32]byte{}, err
		}
		if kind == frameEnd {
			return dig, nil
		}
		if _, err := f.WriteAt(data, off); err != nil {
			return [32]byte{}, err
		}
	}
}

// commit renames the verified copies into place and marks the arrival verified.
func (arr *diskArrival) commit(digests []string) error {
	arr.mu.Lock()
	defer arr.mu.Unlock()
	if arr.closed {
		return errors.New("the arrival was removed during the copy")
	}
	for _, d := range arr.disks {
		p := arr.imagePath(d)
		if err := os.Rename(p+".part", p); err != nil {
			return fmt.Errorf("disk %s: %w", d.GetName(), err)
		}
	}
	if df, err := os.Open(filepath.Join(arr.dir, disksDir)); err == nil {
		_ = df.Sync()
		df.Close()
	}
	if err := writeRecord(filepath.Join(arr.dir, diskArrivalFile), diskArrivalRecord{ID: arr.id, Verified: true}); err != nil {
		return err
	}
	arr.verified, arr.digests = true, digests
	return nil
}

// removeLocked ends the arrival and removes its directory (as.mu held).
func (arr *diskArrival) removeLocked(as *diskArrivals, why string) {
	arr.mu.Lock()
	arr.closed = true
	if arr.ln != nil {
		arr.ln.Close()
	}
	if arr.conn != nil {
		arr.conn.Close()
	}
	arr.mu.Unlock()
	if _, err := os.Stat(filepath.Join(arr.dir, specFile)); os.IsNotExist(err) {
		_ = os.RemoveAll(arr.dir)
	}
	delete(as.byVM, arr.vm)
	as.ended[arr.id] = true
	arr.a.log.Info("disk copies removed", "vm", arr.vm, "migration", arr.id, "why", why)
}

// removeArrival removes the disk copies arriving for vm (id "" or its
// migration's); it reports whether there were any.
func (a *Agent) removeArrival(vm, id, why string) bool {
	as := &a.arrivals
	as.mu.Lock()
	defer as.mu.Unlock()
	arr := as.byVM[vm]
	if arr == nil || id != "" && arr.id != id {
		return false
	}
	arr.removeLocked(as, why)
	return true
}

// arrivalOf returns the arrival for vm, if any.
func (a *Agent) arrivalOf(vm string) *diskArrival {
	as := &a.arrivals
	as.mu.Lock()
	defer as.mu.Unlock()
	return as.byVM[vm]
}

// adoptArrival forgets the arrival of a VM that now boots on its copies
// (its directory is the VM's from now on).
func (a *Agent) adoptArrival(vm string) {
	as := &a.arrivals
	as.mu.Lock()
	defer as.mu.Unlock()
	arr := as.byVM[vm]
	if arr == nil {
		return
	}
	arr.mu.Lock()
	arr.closed = true
	if arr.ln != nil {
		arr.ln.Close()
	}
	arr.mu.Unlock()
	_ = os.Remove(filepath.Join(arr.dir, diskArrivalFile))
	delete(as.byVM, vm)
}

// loadArrivals runs at the agent's start: an unverified arrival (its
// receiver died with the previous process) is removed, a verified one is
// kept for the engine's StartVM or DeleteVM.
func (a *Agent) loadArrivals() {
	entries, err := os.ReadDir(a.vmsDir())
	if err != nil {
		return
	}
	as := &a.arrivals
	as.mu.Lock()
	defer as.mu.Unlock()
	if as.byVM == nil {
		as.byVM, as.ended = map[string]*diskArrival{}, map[string]bool{}
	}
	for _, e := range entries {
		dir := filepath.Join(a.vmsDir(), e.Name())
		var rec diskArrivalRecord
		ok, err := readRecord(filepath.Join(dir, diskArrivalFile), &rec)
		if !ok || err != nil {
			continue
		}
		if _, err := os.Stat(filepath.Join(dir, specFile)); err == nil {
			_ = os.Remove(filepath.Join(dir, diskArrivalFile)) // booted here: the VM's own disks now
			continue
		}
		if !rec.Verified {
			a.log.Warn("removing an unverified disk copy (its receiver ended with the agent's previous run)", "vm", e.Name(), "migration", rec.ID)
			_ = os.RemoveAll(dir)
			as.ended[rec.ID] = true
			continue
		}
		arr := &diskArrival{a: a, vm: e.Name(), id: rec.ID, dir: dir, verified: true}
		if sp, err := readDiskNames(dir); err == nil {
			arr.disks = sp
		}
		as.byVM[e.Name()] = arr
		a.log.Info("verified disk copies kept", "vm", e.Name(), "migration", rec.ID)
	}
}

// readDiskNames lists the verified images of an arrival's directory.
func readDiskNames(dir string) ([]*agentv1.LocalDisk, error) {
	entries, err := os.ReadDir(filepath.Join(dir, disksDir))
	if err != nil {
		return nil, err
	}
	var out []*agentv1.LocalDisk
	for _, e := range entries {
		name, format, ok := strings.Cut(e.Name(), ".")
		if ok && (format == "qcow2" || format == "raw") {
			out = append(out, &agentv1.LocalDisk{Name: name, Format: format})
		}
	}
	return out, nil
}

// reapArrivals removes disk copies that an authoritative heartbeat reply
// has, for at least grace, named neither by their migration (in flight)
// nor by their VM (placed here): a rollback that could not reach this
// agent left them (the owner never switched to this host).
func (a *Agent) reapArrivals(now time.Time, grace time.Duration, exp expectation) {
	if !exp.authoritative {
		return
	}
	as := &a.arrivals
	as.mu.Lock()
	defer as.mu.Unlock()
	for name, arr := range as.byVM {
		if exp.vms[name] || exp.migrations[arr.id] {
			arr.orphanSince = time.Time{}
			continue
		}
		if arr.orphanSince.IsZero() {
			arr.orphanSince = now
			continue
		}
		if now.Sub(arr.orphanSince) >= grace {
			arr.removeLocked(as, "no migration in flight names it (orphan reaper)")
		}
	}
}
