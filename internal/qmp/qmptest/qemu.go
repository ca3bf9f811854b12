package qmptest

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
)

// Run states (QAPI RunState) the fake models.
const (
	RunRunning       = "running"
	RunPaused        = "paused"
	RunInMigrate     = "inmigrate"
	RunFinishMigrate = "finish-migrate"
	RunPostMigrate   = "postmigrate"
	RunShutdown      = "shutdown"
)

// FakeQEMU is a scripted model of one QEMU process behind a fake QMP
// socket: a run state and a migration status that the commands act on
// (query-status, query-migrate, migrate, migrate-continue, migrate_cancel,
// migrate-start-postcopy, migrate-incoming, migrate-set-capabilities,
// migrate-set-parameters, migrate-pause, migrate-recover, cont, stop, quit,
// system_powerdown, announce-self, object-add, object-del), emitting STOP, RESUME, MIGRATION and SHUTDOWN like QEMU.
// A test moves what QEMU would do by itself (the transfer reaching
// pre-switchover, the incoming state arriving, a crash) with its methods.
// Commands the model does not know can be scripted on Server().
type FakeQEMU struct {
	srv *Server

	mu        sync.Mutex
	run       string
	mig       string // QAPI MigrationStatus; "none" before any migration
	incoming  bool   // started with -incoming
	listenURI string
	autostart bool // cont received while inmigrate
	postcopy  bool // migrate-start-postcopy received
	oldRun    string
	caps      map[string]bool
	params    map[string]json.RawMessage
	objects   map[string]map[string]any    // object-add arguments by id
	credFiles map[string]map[string][]byte // the files each tls-creds-x509 object read
	exited    chan struct{}
	exitOnce  sync.Once
}

// FakeOption configures a FakeQEMU.
type FakeOption func(*FakeQEMU)

// Incoming makes the fake start like `qemu -S -incoming defer`: in state
// inmigrate, waiting for migrate-incoming.
func Incoming() FakeOption { return func(q *FakeQEMU) { q.incoming, q.run = true, RunInMigrate } }

// Paused makes the fake start like `qemu -S`.
func Paused() FakeOption { return func(q *FakeQEMU) { q.run = RunPaused } }

// StartFakeQEMU starts a fake QEMU whose QMP socket is path. It runs until
// quit, system_powerdown, Crash or Close.
func StartFakeQEMU(path string, opts ...FakeOption) (*FakeQEMU, error) {
	q := &FakeQEMU{run: RunRunning, mig: "none", caps: map[string]bool{}, params: map[string]json.RawMessage{}, objects: map[string]map[string]any{}, exited: make(chan struct{})}
	for _, o := range opts {
		o(q)
	}
	srv, err := Listen(path)
	if err != nil {
		return nil, err
	}
	q.srv = srv
	q.install()
	return q, nil
}

// Server returns the fake's QMP server: its command log, fault injection
// and handlers for commands the model lacks.
func (q *FakeQEMU) Server() *Server { return q.srv }

// Exited is closed once the fake QEMU is gone.
func (q *FakeQEMU) Exited() <-chan struct{} { return q.exited }

// Alive reports whether the fake QEMU still runs.
func (q *FakeQEMU) Alive() bool {
	select {
	case <-q.exited:
		return false
	default:
		return true
	}
}

// Crash ends the fake QEMU at once, as a SIGKILL would.
func (q *FakeQEMU) Crash() { q.exit(false) }

// Close is Crash; it is idempotent.
func (q *FakeQEMU) Close() { q.exit(false) }

func (q *FakeQEMU) exit(shutdownEvent bool) {
	q.exitOnce.Do(func() {
		if shutdownEvent {
			_ = q.srv.Emit("SHUTDOWN", map[string]any{"guest": false, "reason": "host-qmp-quit"})
		}
		q.mu.Lock()
		q.run = RunShutdown
		q.mu.Unlock()
		q.srv.Close()
		close(q.exited)
	})
}

// RunState returns the current run state.
func (q *FakeQEMU) RunState() string {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.run
}

// MigrationStatus returns the current migration status.
func (q *FakeQEMU) MigrationStatus() string {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.mig
}

// Capability reports whether a migration capability was set on.
func (q *FakeQEMU) Capability(name string) bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.caps[name]
}

// Parameter returns a migration parameter as set (nil if never set).
func (q *FakeQEMU) Parameter(name string) json.RawMessage {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.params[name]
}

// Object returns the object-add arguments of the object id (nil if none).
func (q *FakeQEMU) Object(id string) map[string]any {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.objects[id]
}

// CredentialFiles returns the files (by name: ca-cert.pem,
// server-key.pem, ...) the tls-creds-x509 object id read when it was
// added: what a real QEMU would hold in memory.
func (q *FakeQEMU) CredentialFiles(id string) map[string][]byte {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.credFiles[id]
}

// objectAdd models object-add: ids are unique, and a tls-creds-x509
// object reads its directory's files at once (as QEMU does), failing when
// one is missing.
func (q *FakeQEMU) objectAdd(args json.RawMessage) Reply {
	var m map[string]any
	if err := json.Unmarshal(args, &m); err != nil {
		return Reply{Err: GenericError("bad arguments: %v", err)}
	}
	id, _ := m["id"].(string)
	q.mu.Lock()
	defer q.mu.Unlock()
	if _, ok := q.objects[id]; ok {
		return Reply{Err: GenericError("attempt to add duplicate property '%s' to object (type 'container')", id)}
	}
	if m["qom-type"] == "tls-creds-x509" {
		dir, _ := m["dir"].(string)
		files := []string{"ca-cert.pem", "server-cert.pem", "server-key.pem"}
		if m["endpoint"] == "client" {
			files = []string{"ca-cert.pem", "client-cert.pem", "client-key.pem"}
		}
		read := map[string][]byte{}
		for _, f := range files {
			b, err := os.ReadFile(filepath.Join(dir, f))
			if err != nil {
				return Reply{Err: GenericError("Unable to access credentials %s: %v", filepath.Join(dir, f), err)}
			}
			read[f] = b
		}
		if q.credFiles == nil {
			q.credFiles = map[string]map[string][]byte{}
		}
		q.credFiles[id] = read
	}
	q.objects[id] = m
	return Reply{}
}

// SetRunState changes the run state, emitting STOP or RESUME as QEMU would.
func (q *FakeQEMU) SetRunState(s string) {
	q.mu.Lock()
	evs := q.setRunLocked(s)
	q.mu.Unlock()
	q.emit(evs)
}

// SetMigrationStatus changes the migration status and emits MIGRATION.
func (q *FakeQEMU) SetMigrationStatus(s string) {
	q.mu.Lock()
	evs := q.setMigLocked(s)
	q.mu.Unlock()
	q.emit(evs)
}

// ReachPreSwitchover plays a source's transfer converging: with the
// pause-before-switchover capability the guest stops (finish-migrate) and
// the status becomes pre-switchover; without it the migration completes.
func (q *FakeQEMU) ReachPreSwitchover() error {
	q.mu.Lock()
	if q.mig != "active" {
		defer q.mu.Unlock()
		return fmt.Errorf("fake QEMU: migration is %s, not active", q.mig)
	}
	evs := q.setRunLocked(RunFinishMigrate)
	if q.caps["pause-before-switchover"] {
		evs = append(evs, q.setMigLocked("pre-switchover")...)
	} else {
		evs = append(evs, q.completeSourceLocked()...)
	}
	q.mu.Unlock()
	q.emit(evs)
	return nil
}

// ArriveIncoming plays a destination's incoming state having arrived: the
// status becomes completed and the guest runs if cont was received while
// inmigrate (autostart), else it stays paused.
func (q *FakeQEMU) ArriveIncoming() error {
	q.mu.Lock()
	if !q.incoming || q.listenURI == "" {
		defer q.mu.Unlock()
		return fmt.Errorf("fake QEMU: not listening for an incoming migration")
	}
	evs := q.setMigLocked("active")
	evs = append(evs, q.setMigLocked("completed")...)
	if q.autostart {
		evs = append(evs, q.setRunLocked(RunRunning)...)
	} else {
		q.run = RunPaused
	}
	q.mu.Unlock()
	q.emit(evs)
	return nil
}

func (q *FakeQEMU) setRunLocked(s string) []string {
	old := q.run
	q.run = s
	switch {
	case old == RunRunning && s != RunRunning:
		return []string{Event("STOP", nil)}
	case old != RunRunning && s == RunRunning:
		return []string{Event("RESUME", nil)}
	}
	return nil
}

func (q *FakeQEMU) setMigLocked(s string) []string {
	q.mig = s
	if !q.caps["events"] {
		return nil
	}
	return []string{Event("MIGRATION", map[string]string{"status": s})}
}

func (q *FakeQEMU) completeSourceLocked() []string {
	evs := q.setMigLocked("device")
	if q.postcopy {
		evs = append(evs, q.setMigLocked("postcopy-active")...)
	} else {
		evs = append(evs, q.setMigLocked("completed")...)
	}
	q.run = RunPostMigrate
	return evs
}

func (q *FakeQEMU) emit(evs []string) {
	for _, e := range evs {
		_ = q.srv.write([]byte(e))
	}
}

func (q *FakeQEMU) install() {
	s := q.srv
	s.Handle("query-status", func(json.RawMessage) Reply {
		q.mu.Lock()
		defer q.mu.Unlock()
		return Reply{Return: map[string]any{"status": q.run, "running": q.run == RunRunning, "singlestep": false}}
	})
	s.Handle("query-migrate", func(json.RawMessage) Reply { return Reply{Return: q.migrateInfo()} })
	s.Handle("migrate-set-capabilities", q.setCapabilities)
	s.Handle("migrate-set-parameters", func(args json.RawMessage) Reply {
		var m map[string]json.RawMessage
		if err := json.Unmarshal(args, &m); err != nil {
			return Reply{Err: GenericError("bad arguments: %v", err)}
		}
		q.mu.Lock()
		for k, v := range m {
			q.params[k] = v
		}
		q.mu.Unlock()
		return Reply{}
	})
	s.Handle("migrate", q.migrate)
	s.Handle("migrate-incoming", q.migrateIncoming)
	s.Handle("migrate-continue", q.migrateContinue)
	s.Handle("migrate_cancel", q.migrateCancel)
	s.Handle("migrate-start-postcopy", func(json.RawMessage) Reply {
		q.mu.Lock()
		defer q.mu.Unlock()
		if !q.caps["postcopy-ram"] {
			return Reply{Err: GenericError("Enable postcopy with migrate_set_capability before the start of migration")}
		}
		q.postcopy = true
		return Reply{}
	})
	s.Handle("cont", q.cont)
	s.Handle("stop", func(json.RawMessage) Reply {
		q.mu.Lock()
		defer q.mu.Unlock()
		return Reply{Events: q.setRunLocked(RunPaused)}
	})
	s.Handle("quit", func(json.RawMessage) Reply { return Reply{After: func() { go q.exit(true) }} })
	s.Handle("system_powerdown", func(json.RawMessage) Reply { return Reply{After: func() { go q.exit(true) }} })
	s.Handle("announce-self", func(json.RawMessage) Reply { return Reply{} })
	s.Handle("object-add", q.objectAdd)
	s.Handle("object-del", func(args json.RawMessage) Reply {
		var m struct{ ID string }
		_ = json.Unmarshal(args, &m)
		q.mu.Lock()
		defer q.mu.Unlock()
		if _, ok := q.objects[m.ID]; !ok {
			return Reply{Err: GenericError("object '%s' not found", m.ID)}
		}
		delete(q.objects, m.ID)
		return Reply{}
	})
	s.Handle("migrate-pause", func(json.RawMessage) Reply {
		q.mu.Lock()
		defer q.mu.Unlock()
		if q.mig != "postcopy-active" {
			return Reply{Err: GenericError("migrate-pause is currently only supported during postcopy-active state")}
		}
		return Reply{Events: q.setMigLocked("postcopy-paused")}
	})
	s.Handle("migrate-recover", func(json.RawMessage) Reply {
		q.mu.Lock()
		defer q.mu.Unlock()
		if !q.incoming || q.mig != "postcopy-paused" {
			return Reply{Err: GenericError("Migrate recover can only be run when postcopy is paused.")}
		}
		return Reply{Events: q.setMigLocked("postcopy-recover")}
	})
}

func (q *FakeQEMU) migrateInfo() map[string]any {
	q.mu.Lock()
	defer q.mu.Unlock()
	info := map[string]any{}
	if q.mig == "none" {
		return info
	}
	info["status"] = q.mig
	if !q.incoming {
		info["ram"] = map[string]any{"transferred": 1 << 20, "remaining": 0, "total": 64 << 20, "duplicate": 0,
			"normal": 256, "normal-bytes": 1 << 20, "dirty-sync-count": 2, "page-size": 4096, "mbps": 100.0,
			"dirty-pages-rate": 0, "postcopy-requests": 0, "precopy-bytes": 1 << 20, "downtime-bytes": 0, "postcopy-bytes": 0,
			"multifd-bytes": 0, "pages-per-second": 1000, "skipped": 0}
		info["total-time"] = 100
		info["setup-time"] = 1
	}
	if q.incoming && q.listenURI != "" {
		hostPort := strings.TrimPrefix(q.listenURI, "tcp:")
		i := strings.LastIndex(hostPort, ":")
		host, port := hostPort[:max(i, 0)], hostPort[i+1:]
		info["socket-address"] = []map[string]string{{"type": "inet", "host": host, "port": port}}
	}
	return info
}

func (q *FakeQEMU) setCapabilities(args json.RawMessage) Reply {
	var a struct {
		Capabilities []struct {
			Capability string `json:"capability"`
			State      bool   `json:"state"`
		} `json:"capabilities"`
	}
	if err := json.Unmarshal(args, &a); err != nil {
		return Reply{Err: GenericError("bad arguments: %v", err)}
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.mig != "none" && q.mig != "completed" && q.mig != "cancelled" && q.mig != "failed" && !(q.incoming && q.mig == "setup") {
		return Reply{Err: GenericError("There's a migration process in progress")}
	}
	for _, c := range a.Capabilities {
		q.caps[c.Capability] = c.State
	}
	return Reply{}
}

func (q *FakeQEMU) migrate(args json.RawMessage) Reply {
	var a struct {
		URI    string `json:"uri"`
		Resume bool   `json:"resume"`
	}
	if err := json.Unmarshal(args, &a); err != nil {
		return Reply{Err: GenericError("bad arguments: %v", err)}
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	if a.Resume {
		if q.mig != "postcopy-paused" {
			return Reply{Err: GenericError("Cannot resume if there is no paused migration")}
		}
		return Reply{Events: q.setMigLocked("postcopy-active")}
	}
	switch q.mig {
	case "setup", "active", "pre-switchover", "device", "postcopy-active", "postcopy-paused", "cancelling":
		return Reply{Err: GenericError("There's a migration process in progress")}
	}
	q.oldRun, q.postcopy = q.run, false
	evs := q.setMigLocked("setup")
	evs = append(evs, q.setMigLocked("active")...)
	return Reply{Events: evs}
}

func (q *FakeQEMU) migrateIncoming(args json.RawMessage) Reply {
	var a struct {
		URI string `json:"uri"`
	}
	if err := json.Unmarshal(args, &a); err != nil {
		return Reply{Err: GenericError("bad arguments: %v", err)}
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	if !q.incoming {
		return Reply{Err: GenericError("'-incoming' was not specified on the command line")}
	}
	if q.listenURI != "" {
		return Reply{Err: GenericError("The incoming migration has already been started")}
	}
	uri := a.URI
	if strings.HasSuffix(uri, ":0") {
		uri = strings.TrimSuffix(uri, "0") + "49152" // the port "QEMU picked"
	}
	q.listenURI = uri
	return Reply{Events: q.setMigLocked("setup")}
}

func (q *FakeQEMU) migrateContinue(args json.RawMessage) Reply {
	var a struct {
		State string `json:"state"`
	}
	_ = json.Unmarshal(args, &a)
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.mig != a.State {
		return Reply{Err: GenericError("Migration not in expected state: %s", q.mig)}
	}
	return Reply{Events: q.completeSourceLocked()}
}

func (q *FakeQEMU) migrateCancel(json.RawMessage) Reply {
	q.mu.Lock()
	defer q.mu.Unlock()
	switch q.mig {
	case "setup", "active", "pre-switchover", "device":
		evs := q.setMigLocked("cancelling")
		evs = append(evs, q.setMigLocked("cancelled")...)
		if q.run == RunFinishMigrate && q.oldRun == RunRunning {
			evs = append(evs, q.setRunLocked(RunRunning)...) // QEMU restarts a guest the migration stopped
		}
		return Reply{Events: evs}
	case "postcopy-active", "postcopy-paused":
		return Reply{Err: GenericError("Postcopy is active, migration cannot be cancelled")}
	}
	return Reply{} // nothing to cancel: QEMU says nothing either
}

func (q *FakeQEMU) cont(json.RawMessage) Reply {
	q.mu.Lock()
	defer q.mu.Unlock()
	switch q.run {
	case RunInMigrate:
		q.autostart = true
		return Reply{}
	case RunShutdown:
		return Reply{Err: GenericError("Resetting the Virtual Machine is required")}
	}
	return Reply{Events: q.setRunLocked(RunRunning)}
}
