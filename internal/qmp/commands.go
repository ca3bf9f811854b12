package qmp

import (
	"context"
	"errors"
)

// QueryStatus runs query-status.
func (m *Monitor) QueryStatus(ctx context.Context) (StatusInfo, error) {
	var v StatusInfo
	err := m.Run(ctx, "query-status", nil, &v)
	return v, err
}

// QueryVersion runs query-version.
func (m *Monitor) QueryVersion(ctx context.Context) (VersionInfo, error) {
	var v VersionInfo
	err := m.Run(ctx, "query-version", nil, &v)
	return v, err
}

// Stop runs stop: pauses the vCPUs (STOP event).
func (m *Monitor) Stop(ctx context.Context) error { return m.Run(ctx, "stop", nil, nil) }

// Cont runs cont: resumes the vCPUs (RESUME event). On an incoming VM
// that was started with -S it starts the guest after migration.
func (m *Monitor) Cont(ctx context.Context) error { return m.Run(ctx, "cont", nil, nil) }

// SystemPowerdown runs system_powerdown (ACPI power button).
func (m *Monitor) SystemPowerdown(ctx context.Context) error {
	return m.Run(ctx, "system_powerdown", nil, nil)
}

// Quit runs quit: QEMU replies, emits SHUTDOWN and exits. A connection
// that drops before the reply arrives is treated as success.
func (m *Monitor) Quit(ctx context.Context) error {
	err := m.Run(ctx, "quit", nil, nil)
	if errors.Is(err, ErrDisconnected) {
		return nil
	}
	return err
}

// QueryMigrate runs query-migrate.
func (m *Monitor) QueryMigrate(ctx context.Context) (MigrationInfo, error) {
	var v MigrationInfo
	err := m.Run(ctx, "query-migrate", nil, &v)
	return v, err
}

// MigrateSetCapabilities runs migrate-set-capabilities. Capabilities must
// be set before migrate (source) or migrate-incoming (destination).
func (m *Monitor) MigrateSetCapabilities(ctx context.Context, caps []CapabilityState) error {
	args := struct {
		Capabilities []CapabilityState `json:"capabilities"`
	}{caps}
	if args.Capabilities == nil {
		args.Capabilities = []CapabilityState{}
	}
	return m.Run(ctx, "migrate-set-capabilities", args, nil)
}

// QueryMigrateCapabilities runs query-migrate-capabilities.
func (m *Monitor) QueryMigrateCapabilities(ctx context.Context) ([]CapabilityState, error) {
	var v []CapabilityState
	err := m.Run(ctx, "query-migrate-capabilities", nil, &v)
	return v, err
}

// MigrateSetParameters runs migrate-set-parameters with the non-nil fields
// of p.
func (m *Monitor) MigrateSetParameters(ctx context.Context, p MigrationParameters) error {
	return m.Run(ctx, "migrate-set-parameters", p, nil)
}

// QueryMigrateParameters runs query-migrate-parameters.
func (m *Monitor) QueryMigrateParameters(ctx context.Context) (MigrationParameters, error) {
	var v MigrationParameters
	err := m.Run(ctx, "query-migrate-parameters", nil, &v)
	return v, err
}

// Migrate runs migrate to uri (e.g. "tcp:10.0.0.2:4444",
// "unix:/run/x.sock"). It returns once the migration has started; follow
// progress with QueryMigrate or MIGRATION events.
func (m *Monitor) Migrate(ctx context.Context, uri string, opts MigrateOptions) error {
	args := struct {
		URI string `json:"uri"`
		MigrateOptions
	}{uri, opts}
	return m.Run(ctx, "migrate", args, nil)
}

// MigrateIncoming runs migrate-incoming on a QEMU started with
// "-incoming defer". With "tcp:HOST:0" QEMU picks a port; read it from
// QueryMigrate's SocketAddress.
func (m *Monitor) MigrateIncoming(ctx context.Context, uri string) error {
	return m.Run(ctx, "migrate-incoming", struct {
		URI string `json:"uri"`
	}{uri}, nil)
}

// MigrateCancel runs migrate_cancel (QEMU 7.2 spells it with an underscore).
func (m *Monitor) MigrateCancel(ctx context.Context) error {
	return m.Run(ctx, "migrate_cancel", nil, nil)
}

// YankInstance names what yank shuts down: {"type":"migration"},
// {"type":"block-node","node-name":N} (an NBD client node) or
// {"type":"chardev","id":ID}.
type YankInstance struct {
	Type     string `json:"type"`
	NodeName string `json:"node-name,omitempty"`
	ID       string `json:"id,omitempty"`
}

// Yank runs yank: QEMU shuts down the connections of each instance, so a
// thread or request blocked on a peer that no longer answers fails at once
// instead of when TCP gives up (about 15 minutes). ErrDeviceNotFound means
// an instance has nothing registered (its connections are already gone).
func (m *Monitor) Yank(ctx context.Context, instances ...YankInstance) error {
	return m.Run(ctx, "yank", struct {
		Instances []YankInstance `json:"instances"`
	}{instances}, nil)
}

// YankMigration yanks the migration instance: every channel the migration
// registered (the main stream, multifd and post-copy channels, the return
// path). migrate_cancel alone shuts down only the main stream: multifd
// channels stuck on a dead link keep the migration in "cancelling".
func (m *Monitor) YankMigration(ctx context.Context) error {
	return m.Yank(ctx, YankInstance{Type: "migration"})
}

// YankBlockNode yanks an NBD client node's connection: its in-flight
// requests fail, so a mirror job writing to it can end.
func (m *Monitor) YankBlockNode(ctx context.Context, node string) error {
	return m.Yank(ctx, YankInstance{Type: "block-node", NodeName: node})
}

// MigrateContinue runs migrate-continue, releasing a migration paused in
// state (normally MigrationStatusPreSwitchover).
func (m *Monitor) MigrateContinue(ctx context.Context, state MigrationStatus) error {
	return m.Run(ctx, "migrate-continue", struct {
		State MigrationStatus `json:"state"`
	}{state}, nil)
}

// MigrateStartPostcopy runs migrate-start-postcopy (needs the postcopy-ram
// capability on both sides).
func (m *Monitor) MigrateStartPostcopy(ctx context.Context) error {
	return m.Run(ctx, "migrate-start-postcopy", nil, nil)
}

// MigrateRecover runs migrate-recover on the destination of a paused
// postcopy migration, listening on uri for the resumed stream. It runs
// out of band where the session has it: a destination whose main thread
// waits on a page the broken link does not bring answers nothing in band,
// and QEMU then listens in the monitor's thread.
func (m *Monitor) MigrateRecover(ctx context.Context, uri string) error {
	return m.RunOOB(ctx, "migrate-recover", struct {
		URI string `json:"uri"`
	}{uri}, nil)
}

// MigratePause runs migrate-pause, forcing a postcopy migration into
// postcopy-paused (out of band where the session has it, as
// MigrateRecover).
func (m *Monitor) MigratePause(ctx context.Context) error {
	return m.RunOOB(ctx, "migrate-pause", nil, nil)
}

// CalcDirtyRate runs calc-dirty-rate for calcTime seconds; poll
// QueryDirtyRate until its status is "measured".
func (m *Monitor) CalcDirtyRate(ctx context.Context, calcTime int64, opts DirtyRateOptions) error {
	args := struct {
		CalcTime int64 `json:"calc-time"`
		DirtyRateOptions
	}{calcTime, opts}
	return m.Run(ctx, "calc-dirty-rate", args, nil)
}

// QueryDirtyRate runs query-dirty-rate.
func (m *Monitor) QueryDirtyRate(ctx context.Context) (DirtyRateInfo, error) {
	var v DirtyRateInfo
	err := m.Run(ctx, "query-dirty-rate", nil, &v)
	return v, err
}

// AnnounceSelf runs announce-self: sends gratuitous ARP/RARP from the
// guest NICs, typically on the destination right after switchover.
func (m *Monitor) AnnounceSelf(ctx context.Context, p AnnounceParameters) error {
	return m.Run(ctx, "announce-self", p, nil)
}

// ObjectAdd runs object-add: args are the object's properties, with
// "qom-type" and "id" among them (QEMU reads a tls-creds-x509 object's
// files while adding it).
func (m *Monitor) ObjectAdd(ctx context.Context, args map[string]any) error {
	return m.Run(ctx, "object-add", args, nil)
}

// ObjectDel runs object-del on the user-created object id.
func (m *Monitor) ObjectDel(ctx context.Context, id string) error {
	return m.Run(ctx, "object-del", map[string]any{"id": id}, nil)
}
