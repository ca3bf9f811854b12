// Package guestapi is the host-side view of the Ferry test guest's contract:
// the ports it listens on, the serial READY line, the JSON returned by
// GET /status and the on-disk record format written by the disk writer.
//
// It has no dependencies beyond the standard library so that any part of
// Ferry (e2e tests, tools) can import it.
package guestapi

import (
	"crypto/sha512"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"hash/crc32"
	"regexp"
	"time"
)

const (
	// StreamPort is the guest TCP port serving the counter stream
	// ("0\n1\n2\n..." one line every StreamInterval).
	StreamPort = 7000
	// HTTPPort is the guest TCP port serving GET /status.
	HTTPPort = 8080
	// StreamInterval is the pacing of the counter stream.
	StreamInterval = 2 * time.Millisecond

	// ReadyPrefix starts the line printed once on the serial console when
	// all services listen: "FERRY-GUEST READY boot_id=<32 hex>".
	ReadyPrefix = "FERRY-GUEST READY boot_id="
	// LogPrefix prefixes every other line the guest prints on the console.
	LogPrefix = "ferry-guest: "
	// StopKernelLine starts the console line the guest prints right before
	// it stops its kernel (POST /stop-kernel), followed by why; the serial
	// log it lands in tells which host's QEMU ran the guest then.
	StopKernelLine = "FERRY-GUEST STOP-KERNEL "
	// StopKernelPath is the guest's HTTP endpoint that stops its kernel:
	// POST with delay_ms=N (guest time from the reply, at least 200 ms so
	// the reply leaves the guest first) or on=guest-agent (at the next
	// command on the guest agent channel, which then gets no answer).
	StopKernelPath = "/stop-kernel"

	// PageSize is the unit the memory dirtier works in.
	PageSize = 4096
)

// MarkerSize is the size of the memory marker (ferry.marker=SEED).
const MarkerSize = sha512.Size

// MarkerCopies is how many copies of its marker the guest keeps in RAM
// (4 MiB: 1024 pages of 64 copies each).
const MarkerCopies = 1 << 16

// Marker is the 64-byte pattern a guest started with ferry.marker=SEED
// keeps in its memory (MarkerCopies copies, back to back): SHA-512 of
// "ferry-marker/" + SEED. It appears nowhere but in the guest's RAM (the
// seed, not the marker, is on the command line), so a capture that finds
// it saw guest memory in the clear.
func Marker(seed string) []byte {
	h := sha512.Sum512([]byte("ferry-marker/" + seed))
	return h[:]
}

// ReadyRe matches the READY line; submatch 1 is the boot id.
var ReadyRe = regexp.MustCompile(`FERRY-GUEST READY boot_id=([0-9a-f]{32})`)

// Status is the JSON document served by GET /status on HTTPPort.
type Status struct {
	BootID  string  `json:"boot_id"`  // 32 lowercase hex chars, random per boot
	UptimeS float64 `json:"uptime_s"` // CLOCK_BOOTTIME seconds
	Kernel  string  `json:"kernel,omitempty"`
	Cmdline string  `json:"cmdline,omitempty"`
	// ConfigErrors lists problems parsing ferry.* kernel parameters.
	ConfigErrors []string `json:"config_errors,omitempty"`

	IP       string `json:"ip"` // configured "A.B.C.D/P" or "" if none
	Gateway  string `json:"gw,omitempty"`
	NetError string `json:"net_error,omitempty"`

	StreamClients     int64  `json:"stream_clients"`     // currently connected to StreamPort
	StreamConnections uint64 `json:"stream_connections"` // total accepted since boot

	// Memory dirtier (ferry.dirty=WSS_MiB:RATE_MiBps).
	WSSMiB        uint64  `json:"wss_mib"`
	RateMiBps     uint64  `json:"rate_mibps"`
	DirtyState    string  `json:"dirty_state"` // off|filling|idle|running|error
	DirtyError    string  `json:"dirty_error,omitempty"`
	PagesDirtied  uint64  `json:"pages_dirtied"` // paced writes since dirtier start (initial fill excluded)
	PagesSkipped  uint64  `json:"pages_skipped"` // backlog dropped because the dirtier fell >1s behind
	DirtyPasses   uint64  `json:"dirty_passes"`  // completed passes over the working set
	DirtyElapsedS float64 `json:"dirty_elapsed_s"`
	AchievedMiBps float64 `json:"achieved_mibps"` // pages_dirtied MiB / dirty_elapsed_s
	FillS         float64 `json:"fill_s"`         // time the initial touch of the WSS took

	// Disk writer (ferry.disk=RATE_KiBps).
	DiskRateKiBps    uint64  `json:"disk_rate_kibps"`
	DiskState        string  `json:"disk_state"` // off|waiting|running|error
	DiskDevice       string  `json:"disk_device,omitempty"`
	DiskRecords      uint64  `json:"disk_records"` // capacity in records (device size / RecordSize)
	LastSeq          uint64  `json:"last_seq"`     // last durably written sequence number, 0 = none yet
	DiskSkipped      uint64  `json:"disk_skipped"` // records dropped because the writer fell >1s behind
	DiskWriteErrors  uint64  `json:"disk_write_errors"`
	DiskError        string  `json:"disk_error"`
	DiskAchievedKiBs float64 `json:"disk_achieved_kibps"`
}

// Disk record format. The disk writer fills the device with RecordSize
// records; record with sequence number seq (seq starts at 1) lives at byte
// offset ((seq-1) % records) * RecordSize, wrapping at the device end.
//
//	off len
//	  0   8  magic "FERRYREC"
//	  8   8  seq, little endian uint64 (>= 1)
//	 16  16  boot id (raw 16 bytes; hex of it is Status.BootID)
//	 32   8  guest CLOCK_REALTIME unix nanoseconds when written (LE int64)
//	 40   8  guest CLOCK_BOOTTIME nanoseconds when written (LE uint64)
//	 48   4  CRC32 (IEEE) of bytes [0,48) and [52,4096)
//	 52 ...  filler: byte i = byte(seq + i)
const (
	RecordSize  = 4096
	RecordMagic = "FERRYREC"
)

// Record is one decoded disk record.
type Record struct {
	Seq      uint64
	BootID   [16]byte
	WallNs   int64
	UptimeNs uint64
}

// BootIDHex returns the boot id as the 32-hex string used in Status.
func (r Record) BootIDHex() string { return hex.EncodeToString(r.BootID[:]) }

// ErrNoRecord is returned by DecodeRecord for a block without the magic
// (e.g. never written).
var ErrNoRecord = errors.New("guestapi: no record (magic missing)")

// EncodeRecord fills buf (len >= RecordSize) with a record.
func EncodeRecord(buf []byte, r Record) {
	b := buf[:RecordSize]
	copy(b[0:8], RecordMagic)
	binary.LittleEndian.PutUint64(b[8:16], r.Seq)
	copy(b[16:32], r.BootID[:])
	binary.LittleEndian.PutUint64(b[32:40], uint64(r.WallNs))
	binary.LittleEndian.PutUint64(b[40:48], r.UptimeNs)
	s := byte(r.Seq)
	for i := 52; i < RecordSize; i++ {
		b[i] = s + byte(i)
	}
	binary.LittleEndian.PutUint32(b[48:52], recordCRC(b))
}

// DecodeRecord parses and verifies one record.
func DecodeRecord(buf []byte) (Record, error) {
	if len(buf) < RecordSize {
		return Record{}, fmt.Errorf("guestapi: short record (%d bytes)", len(buf))
	}
	b := buf[:RecordSize]
	if string(b[0:8]) != RecordMagic {
		return Record{}, ErrNoRecord
	}
	if got, want := binary.LittleEndian.Uint32(b[48:52]), recordCRC(b); got != want {
		return Record{}, fmt.Errorf("guestapi: record crc mismatch (stored %08x, computed %08x)", got, want)
	}
	var r Record
	r.Seq = binary.LittleEndian.Uint64(b[8:16])
	copy(r.BootID[:], b[16:32])
	r.WallNs = int64(binary.LittleEndian.Uint64(b[32:40]))
	r.UptimeNs = binary.LittleEndian.Uint64(b[40:48])
	return r, nil
}

// RecordOffset is the byte offset of sequence number seq (>=1) on a device
// holding records records.
func RecordOffset(seq, records uint64) int64 {
	return int64(((seq - 1) % records) * RecordSize)
}

func recordCRC(b []byte) uint32 {
	c := crc32.ChecksumIEEE(b[0:48])
	return crc32.Update(c, crc32.IEEETable, b[52:RecordSize])
}

// BaseCmdline is the kernel command line every test-guest spec starts with
// (ferry.* options follow it).
//
// It used to carry pti=on, a workaround for QEMU 7.2 under TCG: 7.2's
// dirty-page tracking could miss writes made through a TLB entry filled
// concurrently with a dirty bitmap sync, and a guest whose kernel mappings
// stayed in the TLB (global pages, few CR3 reloads) arrived with stale
// kernel pages and died after a live migration QEMU reported as completed
// (about 1 in 8-10 loaded migrations, also with plain QEMU). Page-table
// isolation made the guest reload CR3 on every kernel entry, flushing
// TCG's TLB. On QEMU 10.0.2 the workaround is not needed: measured
// 2026-12-01 with test/e2e TestLoadedMigrationsKeepGuestAlive
// (FERRY_LOADED_MIGRATIONS=30; 256 MiB guest without pti=on dirtying
// 64 MiB at 24 MiB/s, migrated h1<->h2 30 times), 30 of 30 migrations kept
// the guest alive with the same boot and a continuous stream (wall median
// 3.5 s, downtime median 62 ms, max 576 ms). The test keeps checking it.
const BaseCmdline = "console=ttyS0"

// VerifyPath is the HTTP path (GET, on HTTPPort) that reads every disk
// record the writer made durable back from the device and checks it.
const VerifyPath = "/verify"

// Verify problems (Verify.Problem).
const (
	ProblemMissing    = "missing"      // no record at the sequence number's place (never written, or lost)
	ProblemTorn       = "torn"         // magic present, checksum wrong
	ProblemOutOfOrder = "out-of-order" // a valid record with another sequence number (an older or newer one)
	ProblemOtherBoot  = "other-boot"   // a valid record written by another boot of the guest
	ProblemReadError  = "read-error"   // the device could not be read
)

// Verify is the JSON document served by GET /verify. OK is true when
// every record from FirstSeq to LastSeq is intact; otherwise BadSeq is the
// first record that is not, Problem says how, and Detail says more.
type Verify struct {
	OK       bool    `json:"ok"`
	BootID   string  `json:"boot_id"`
	FirstSeq uint64  `json:"first_seq"` // the oldest record still on the device (the writer wraps)
	LastSeq  uint64  `json:"last_seq"`  // the writer's last_seq when the check started
	Checked  uint64  `json:"checked"`   // records read and found intact
	BadSeq   uint64  `json:"bad_seq,omitempty"`
	Problem  string  `json:"problem,omitempty"`
	Detail   string  `json:"detail,omitempty"`
	DirectIO bool    `json:"direct_io"` // read past the guest's page cache (O_DIRECT)
	Seconds  float64 `json:"seconds"`
}
