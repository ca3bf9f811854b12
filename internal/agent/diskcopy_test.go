package agent

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	agentv1 "github.com/ferryvm/ferry/gen/ferry/agent/v1"
	ferryv1 "github.com/ferryvm/ferry/gen/ferry/v1"
	"github.com/ferryvm/ferry/internal/pki"
)

// sparseImage writes a sparse file of size bytes with data at offs (4 KiB each).
func sparseImage(t *testing.T, path string, size int64, offs ...int64) {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	for i, off := range offs {
		if _, err := f.WriteAt(bytes.Repeat([]byte{byte(i + 1)}, 4096), off); err != nil {
			t.Fatal(err)
		}
	}
}

// TestContentDigestSparse: the digest of a file is the digest of its
// content, however it is allocated: a dense copy holding the same bytes
// has the same digest, one changed byte changes it, and only the blocks
// holding data reach the callback.
func TestContentDigestSparse(t *testing.T) {
	dir := t.TempDir()
	sparse := filepath.Join(dir, "sparse")
	sparseImage(t, sparse, 64<<20, 0, 10<<20, 64<<20-4096)
	f, _ := os.Open(sparse)
	defer f.Close()
	var seen int64
	d1, err := contentDigest(f, 64<<20, func(off int64, b []byte) error { seen += int64(len(b)); return nil })
	if err != nil {
		t.Fatal(err)
	}
	if seen != 3*copyBlockSize {
		t.Errorf("blocks with data: %d bytes, want %d", seen, 3*copyBlockSize)
	}
	b, _ := os.ReadFile(sparse)
	dense := filepath.Join(dir, "dense")
	if err := os.WriteFile(dense, b, 0o644); err != nil {
		t.Fatal(err)
	}
	g, _ := os.Open(dense)
	defer g.Close()
	d2, _ := contentDigest(g, 64<<20, nil)
	if d1 != d2 {
		t.Errorf("the dense copy's digest %x differs from the sparse file's %x", d2, d1)
	}
	b[10<<20+7] ^= 1
	os.WriteFile(dense, b, 0o644)
	d3, _ := contentDigest(g, 64<<20, nil)
	if d3 == d1 {
		t.Error("a changed byte kept the digest")
	}
}

// testIdentity gives a an agent certificate for its host name from ca.
func testIdentity(t *testing.T, a *Agent, ca *pki.CA) {
	t.Helper()
	c, k, err := ca.IssueKeyPair(pki.KindAgent, a.cfg.Name, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	kp, err := pki.NewKeypair(c, k, ca.CertPEM)
	if err != nil {
		t.Fatal(err)
	}
	a.ident.Store(&identity{ca: ca.Cert, kp: kp})
}

// copyPair sets up a destination arrival (plaintext) and a source VM with
// one sparse raw disk, both on loopback.
func copyPair(t *testing.T, size int64, offs ...int64) (src *vm, dst *Agent, addr string, srcImg string) {
	return copyPairTLS(t, nil, size, offs...)
}

// copyPairTLS is copyPair with the receiver on mutual TLS (the default)
// when ca is set: both agents (h1 the source, h2 the destination) get
// agent certificates from it.
func copyPairTLS(t *testing.T, ca *pki.CA, size int64, offs ...int64) (src *vm, dst *Agent, addr string, srcImg string) {
	t.Helper()
	dst = quietAgent()
	dst.cfg.DataDir, dst.cfg.MigrationIP, dst.cfg.Name = t.TempDir(), "127.0.0.1", "h2"
	sa := quietAgent()
	sa.cfg.DataDir, sa.cfg.Name = t.TempDir(), "h1"
	if ca != nil {
		testIdentity(t, dst, ca)
		testIdentity(t, sa, ca)
	}
	src = sa.newVM("v1")
	src.spec = &ferryv1.VMSpec{Name: "v1", Disks: []*ferryv1.DiskSpec{{Name: "data", Format: "raw", Size: "1MiB"}}}
	srcImg = filepath.Join(src.dir, disksDir, "data.raw")
	if err := os.MkdirAll(filepath.Dir(srcImg), 0o755); err != nil {
		t.Fatal(err)
	}
	sparseImage(t, srcImg, size, offs...)
	resp, err := (&diskService{dst}).PrepareDiskCopy(context.Background(), connect.NewRequest(&agentv1.PrepareDiskCopyRequest{Name: "v1", MigrationId: "m1",
		Disks: []*agentv1.LocalDisk{{Name: "data", Format: "raw", VirtualSizeBytes: size}}, SourceHost: "h1", InsecureTransport: ca == nil}))
	if err != nil {
		t.Fatal(err)
	}
	if want := map[bool]string{true: TransportPlain, false: TransportTLS}[ca == nil]; resp.Msg.Transport != want {
		t.Fatalf("receiver transport %q, want %q", resp.Msg.Transport, want)
	}
	t.Cleanup(func() { dst.removeArrival("v1", "", "test end") })
	return src, dst, resp.Msg.Address, srcImg
}

func waitJob(t *testing.T, j *copyJob) *agentv1.OutgoingStatus {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		if st := j.report(); st.Status != "copying" {
			return st
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatal("copy did not end within 30s")
	return nil
}

// TestDiskCopySparseVerified: a 256 MiB sparse image with 3 blocks of
// data is copied with its data blocks only, the destination's image has
// the same content, and the arrival is verified.
func TestDiskCopySparseVerified(t *testing.T) {
	const size = 256 << 20
	ca, err := pki.NewCA("test")
	if err != nil {
		t.Fatal(err)
	}
	src, dst, addr, img := copyPairTLS(t, ca, size, 4096, 100<<20, size-4096)
	job, err := src.copyJobFor(&agentv1.CopyDisksRequest{Name: "v1", MigrationId: "m1", Address: addr, DestHost: "h2"})
	if err != nil {
		t.Fatal(err)
	}
	st := waitJob(t, job)
	if st.Status != "completed" {
		t.Fatalf("copy %s: %s", st.Status, st.Error)
	}
	t.Logf("sent %d bytes of a %d-byte image (allocated %d)", st.DiskBytesTransferred, int64(size), st.DiskBytesTotal)
	if st.DiskBytesTransferred != 3*4096 {
		t.Errorf("sent %d bytes, want the 3 pages of data (%d)", st.DiskBytesTransferred, 3*4096)
	}
	want, _ := os.ReadFile(img)
	got, err := os.ReadFile(filepath.Join(dst.vmsDir(), "v1", disksDir, "data.raw"))
	if err != nil || !bytes.Equal(got, want) {
		t.Fatalf("the destination's image differs from the source's (err %v)", err)
	}
	if arr := dst.arrivalOf("v1"); arr == nil || !arr.verified {
		t.Error("the arrival is not marked verified")
	}
	// A second call of the same migration reports the same job.
	again, _ := src.copyJobFor(&agentv1.CopyDisksRequest{Name: "v1", MigrationId: "m1", Address: addr, DestHost: "h2"})
	if again != job {
		t.Error("CopyDisks of the same migration started another job")
	}
}

// TestDiskCopyCorruptedRefused: a stream whose data differs from the
// digest the source sent (a byte flipped on the way) is refused by the
// destination's checksum: no image is left in place, the arrival is not
// verified, and removing it leaves nothing.
func TestDiskCopyCorruptedRefused(t *testing.T) {
	_, dst, addr, img := copyPair(t, 8<<20, 0, 4<<20)
	host, token, _ := strings.Cut(addr, "/")
	f, _ := os.Open(img)
	defer f.Close()
	c, err := net.Dial("tcp", host)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	w, r := bufio.NewWriter(c), bufio.NewReader(c)
	w.WriteString(copyMagic)
	writeLine(w, copyHeader{MigrationID: "m1", Token: token, Disks: []copyDiskHeader{{Name: "data", Size: 8 << 20}}})
	w.Flush()
	var ack copyAck
	if err := readLine(r, &ack); err != nil || ack.Error != "" {
		t.Fatalf("ack %+v, %v", ack, err)
	}
	dig, err := contentDigest(f, 8<<20, func(off int64, b []byte) error {
		b[1] ^= 0x55 // after the digest took the block
		return writeDataFrame(w, off, b)
	})
	if err != nil {
		t.Fatal(err)
	}
	writeEndFrame(w, dig)
	w.Flush()
	var rep copyReply
	if err := readLine(r, &rep); err != nil {
		t.Fatal(err)
	}
	if rep.OK || !strings.Contains(rep.Error, "checksum mismatch") {
		t.Fatalf("reply %+v, want a checksum mismatch", rep)
	}
	t.Logf("refused: %s", rep.Error)
	if _, err := os.Stat(filepath.Join(dst.vmsDir(), "v1", disksDir, "data.raw")); !os.IsNotExist(err) {
		t.Errorf("an unverified image is in place: %v", err)
	}
	if arr := dst.arrivalOf("v1"); arr == nil || arr.verified {
		t.Error("the arrival is verified after a mismatch")
	}
	if !dst.removeArrival("v1", "m1", "test") {
		t.Fatal("the arrival could not be removed")
	}
	if _, err := os.Stat(filepath.Join(dst.vmsDir(), "v1")); !os.IsNotExist(err) {
		t.Errorf("the arrival's directory is left: %v", err)
	}
	if _, err := (&diskService{dst}).PrepareDiskCopy(context.Background(), connect.NewRequest(&agentv1.PrepareDiskCopyRequest{Name: "v1", MigrationId: "m1",
		Disks: []*agentv1.LocalDisk{{Name: "data", Format: "raw", VirtualSizeBytes: 8 << 20}}})); err == nil {
		t.Error("a late PrepareDiskCopy of the removed migration was accepted")
	}
}

// TestDiskCopyWrongTokenRefused: a stream with another token is refused.
func TestDiskCopyWrongTokenRefused(t *testing.T) {
	src, _, addr, _ := copyPair(t, 1<<20, 0)
	host, _, _ := strings.Cut(addr, "/")
	job, err := src.copyJobFor(&agentv1.CopyDisksRequest{Name: "v1", MigrationId: "m1", Address: host + "/bad", InsecureTransport: true})
	if err != nil {
		t.Fatal(err)
	}
	if st := waitJob(t, job); st.Status != "failed" || !strings.Contains(st.Error, "wrong token") {
		t.Fatalf("copy %s (%s), want refused for its token", st.Status, st.Error)
	}
}

// TestReapArrivals: disk copies no authoritative heartbeat names (neither
// their migration nor their VM) are removed after the grace period; named
// ones, and any on a non-authoritative reply, are kept.
func TestReapArrivals(t *testing.T) {
	_, dst, _, _ := copyPair(t, 1<<20, 0)
	t0 := time.Now()
	named := expectation{authoritative: true, vms: map[string]bool{}, migrations: map[string]bool{"m1": true}}
	none := expectation{authoritative: true, vms: map[string]bool{}, migrations: map[string]bool{}}
	dst.reapArrivals(t0, time.Minute, named)
	dst.reapArrivals(t0.Add(2*time.Minute), time.Minute, none) // orphan from now
	dst.reapArrivals(t0.Add(2*time.Minute+30*time.Second), time.Minute, none)
	if dst.arrivalOf("v1") == nil {
		t.Fatal("removed before its grace period")
	}
	dst.reapArrivals(t0.Add(4*time.Minute), time.Minute, expectation{})
	if dst.arrivalOf("v1") == nil {
		t.Fatal("removed on a non-authoritative reply")
	}
	dst.reapArrivals(t0.Add(5*time.Minute), time.Minute, none)
	if dst.arrivalOf("v1") != nil {
		t.Fatal("an orphan copy was kept past the grace period")
	}
	if _, err := os.Stat(filepath.Join(dst.vmsDir(), "v1")); !os.IsNotExist(err) {
		t.Errorf("the orphan copy's directory is left: %v", err)
	}
}

// TestDiskCopyStreamTLS: by default the copy stream is mutual TLS between
// the two hosts' agents: a plaintext sender gets no ack (not even the
// token check), a sender with another host's certificate and a sender
// expecting another destination are refused, and requests without the
// peer host's name are refused naming the field.
func TestDiskCopyStreamTLS(t *testing.T) {
	ca, err := pki.NewCA("test")
	if err != nil {
		t.Fatal(err)
	}
	src, dst, addr, _ := copyPairTLS(t, ca, 8<<20, 0)
	host, token, _ := strings.Cut(addr, "/")

	c, err := net.Dial("tcp", host)
	if err != nil {
		t.Fatal(err)
	}
	w, r := bufio.NewWriter(c), bufio.NewReader(c)
	w.WriteString(copyMagic)
	writeLine(w, copyHeader{MigrationID: "m1", Token: token})
	w.Flush()
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	var ack copyAck
	if err := readLine(r, &ack); err == nil {
		t.Errorf("a plaintext sender got an answer %+v", ack)
	}
	c.Close()

	// h3's agent, or h1 dialling for h3: the handshake fails.
	h3 := quietAgent()
	h3.cfg.Name = "h3"
	testIdentity(t, h3, ca)
	for name, cfg := range map[string]func() (*tls.Config, error){
		"h3's certificate": func() (*tls.Config, error) { return h3.hostStreamTLS("h2", "dest_host", false) },
		"h1 expecting h3":  func() (*tls.Config, error) { return src.a.hostStreamTLS("h3", "dest_host", false) },
	} {
		tc, err := cfg()
		if err != nil {
			t.Fatal(err)
		}
		conn, err := tls.Dial("tcp", host, tc)
		if err == nil {
			_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
			_, err = conn.Read(make([]byte, 1))
			conn.Close()
		}
		if err == nil || isTimeout(err) {
			t.Errorf("%s: stream accepted (%v)", name, err)
		}
	}
	if arr := dst.arrivalOf("v1"); arr == nil || arr.verified {
		t.Error("the arrival is verified after refused streams")
	}

	_, err = (&diskService{dst}).PrepareDiskCopy(context.Background(), connect.NewRequest(&agentv1.PrepareDiskCopyRequest{Name: "v2", MigrationId: "m2",
		Disks: []*agentv1.LocalDisk{{Name: "data", Format: "raw", VirtualSizeBytes: 1 << 20}}}))
	if err == nil || !strings.Contains(err.Error(), "source_host") {
		t.Errorf("PrepareDiskCopy without source_host: %v", err)
	}
	if _, err := src.copyJobFor(&agentv1.CopyDisksRequest{Name: "v1", MigrationId: "m1", Address: addr}); err == nil || !strings.Contains(err.Error(), "dest_host") {
		t.Errorf("CopyDisks without dest_host: %v", err)
	}
}

func isTimeout(err error) bool {
	ne, ok := err.(net.Error)
	return ok && ne.Timeout()
}
