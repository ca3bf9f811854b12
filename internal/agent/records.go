package agent

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	agentv1 "github.com/ferryvm/ferry/gen/ferry/agent/v1"
	"google.golang.org/protobuf/proto"
)

// Small files in a VM's directory that carry a migration's facts across
// an agent restart (everything else is rebuilt from QEMU's query-status
// and query-migrate).
const (
	// incomingMarker holds the incomingRecord of a VM that arrives (or
	// arrived) here by migration. While it says adopted=false the VM is not
	// (yet) this host's.
	incomingMarker = "incoming"
	// outgoingFile holds the outgoingRecord of a VM leaving this host.
	outgoingFile = "outgoing"
)

// incomingRecord is the persisted destination side of a migration.
type incomingRecord struct {
	ID      string `json:"id"`
	URI     string `json:"uri,omitempty"`
	NBD     string `json:"nbd,omitempty"`     // the NBD server exporting the local disks
	Armed   bool   `json:"armed,omitempty"`   // ArmResume accepted: the owner CAS is done
	Ran     bool   `json:"ran,omitempty"`     // the destination QEMU has run
	Adopted bool   `json:"adopted,omitempty"` // an ordinary VM of this host now
	// RelayPeer is the source host of a relayed stream (streamrelay.go):
	// a restarted agent relays a post-copy recovery from it again.
	RelayPeer string `json:"relay_peer,omitempty"`
	// QMP event times, so QueryIncoming answers the same after a restart.
	LoadedAt  time.Time `json:"loaded_at"`
	ResumedAt time.Time `json:"resumed_at"`
}

// outgoingRecord is the persisted source side of a migration.
type outgoingRecord struct {
	ID        string `json:"id"`
	URI       string `json:"uri,omitempty"`
	Continued bool   `json:"continued,omitempty"` // migrate-continue was sent
	Cancelled bool   `json:"cancelled,omitempty"` // CancelOutgoing succeeded
	// RelayPeer is the destination host of a relayed stream
	// (streamrelay.go): a restarted agent relays a post-copy resume to it
	// again.
	RelayPeer string `json:"relay_peer,omitempty"`
	// DisksMirrored: the local disks' mirrors completed at the switchover.
	DisksMirrored bool `json:"disks_mirrored,omitempty"`
	// MirrorNBD and MirrorDisks are the local disks' mirrors (where to,
	// which disks), so a restarted agent completes them at pre-switchover.
	MirrorNBD   string   `json:"mirror_nbd,omitempty"`
	MirrorDisks []string `json:"mirror_disks,omitempty"`
	// QMP event times, so QueryOutgoing answers the same after a restart.
	StoppedAt       time.Time `json:"stopped_at"`
	PreSwitchoverAt time.Time `json:"pre_switchover_at"`
	ContinuedAt     time.Time `json:"continued_at"`
	CompletedAt     time.Time `json:"completed_at"`
	PostcopyAt      time.Time `json:"postcopy_at"`
	// WarmupRestoreBytes is the max-postcopy-bandwidth the post-copy
	// warm-up lowered and restores (0: no warm-up on).
	WarmupRestoreBytes int64 `json:"warmup_restore_bytes,omitempty"`
}

// readRecord reads a record file; ok is false when there is none. A
// marker from an older agent holding only the migration id is read as
// {"id": ...}.
func readRecord(path string, into any) (ok bool, err error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	if t := strings.TrimSpace(string(b)); !strings.HasPrefix(t, "{") {
		b, _ = json.Marshal(map[string]string{"id": t})
	}
	if err := json.Unmarshal(b, into); err != nil {
		return false, fmt.Errorf("decode %s: %w", path, err)
	}
	return true, nil
}

// writeRecord replaces a record file atomically.
func writeRecord(path string, rec any) error {
	b, err := json.Marshal(rec)
	if err != nil {
		return fmt.Errorf("encode %s: %w", filepath.Base(path), err)
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, b, 0o644); err != nil {
		return fmt.Errorf("write %s: %w", filepath.Base(path), err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("write %s: %w", filepath.Base(path), err)
	}
	return nil
}

// maxEnded bounds how many ended arrivals the agent remembers.
const maxEnded = 256

// endedArrivals remembers, in memory, the last answer for incoming
// migrations whose VM left this host (aborted, or its QEMU ended before it
// ran), so QueryIncoming keeps answering and a late PrepareIncoming for
// the same id does not start a second QEMU. After an agent restart they
// are unknown (NotFound).
type endedArrivals struct {
	mu    sync.Mutex
	order []string
	byID  map[string]*agentv1.IncomingStatus
}

func (e *endedArrivals) put(id string, st *agentv1.IncomingStatus) {
	if id == "" {
		return
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.byID == nil {
		e.byID = map[string]*agentv1.IncomingStatus{}
	}
	if _, ok := e.byID[id]; !ok {
		e.order = append(e.order, id)
	}
	e.byID[id] = st
	for len(e.order) > maxEnded {
		delete(e.byID, e.order[0])
		e.order = e.order[1:]
	}
}

func (e *endedArrivals) get(id string) (*agentv1.IncomingStatus, bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	st, ok := e.byID[id]
	if !ok {
		return nil, false
	}
	return proto.Clone(st).(*agentv1.IncomingStatus), true
}
