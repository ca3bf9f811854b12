package qmp

import (
	"context"
	"encoding/json"
)

// Introspection commands: what a QEMU binary offers (machine types, CPU
// models, the QAPI schema). Types follow qapi/machine.json,
// qapi/machine-target.json and qapi/introspect.json; members added after
// QEMU 7.2 are optional.

// MachineInfo is one entry of query-machines.
type MachineInfo struct {
	// Name is the machine type, e.g. "pc-q35-10.0".
	Name string `json:"name"`
	// Alias is the moving name that points at this type, e.g. "q35".
	Alias *string `json:"alias,omitempty"`
	// IsDefault marks the type used without -machine.
	IsDefault bool `json:"is-default,omitempty"`
	// CPUMax is the most vCPUs the type supports.
	CPUMax int `json:"cpu-max"`
	// HotpluggableCPUs says whether vCPUs can be hot-plugged.
	HotpluggableCPUs bool `json:"hotpluggable-cpus"`
	// Deprecated marks a type to be removed (QEMU >= 4.1).
	Deprecated bool `json:"deprecated"`
	// DefaultCPUType is the QOM type of the default CPU model, if any.
	DefaultCPUType *string `json:"default-cpu-type,omitempty"`
}

// QueryMachines runs query-machines.
func (m *Monitor) QueryMachines(ctx context.Context) ([]MachineInfo, error) {
	var v []MachineInfo
	err := m.Run(ctx, "query-machines", nil, &v)
	return v, err
}

// CPUDefinitionInfo is one entry of query-cpu-definitions.
type CPUDefinitionInfo struct {
	// Name is the CPU model, e.g. "qemu64" or "Skylake-Server-v4".
	Name string `json:"name"`
	// MigrationSafe says whether the model is stable across QEMU versions.
	MigrationSafe *bool `json:"migration-safe,omitempty"`
	// Static says whether the model never changes with the machine type.
	Static bool `json:"static"`
	// UnavailableFeatures lists what keeps the model from running on this
	// host with the current accelerator; empty means usable. Absent when
	// QEMU cannot tell.
	UnavailableFeatures []string `json:"unavailable-features,omitempty"`
	// Typename is the QOM type.
	Typename string `json:"typename"`
	// AliasOf names the versioned model an alias resolves to.
	AliasOf *string `json:"alias-of,omitempty"`
	// Deprecated marks a model to be removed.
	Deprecated bool `json:"deprecated"`
}

// QueryCPUDefinitions runs query-cpu-definitions.
func (m *Monitor) QueryCPUDefinitions(ctx context.Context) ([]CPUDefinitionInfo, error) {
	var v []CPUDefinitionInfo
	err := m.Run(ctx, "query-cpu-definitions", nil, &v)
	return v, err
}

// SchemaMember is a member of an object type in query-qmp-schema.
type SchemaMember struct {
	Name string `json:"name"`
	Type string `json:"type"`
}

// SchemaInfo is one entry of query-qmp-schema. Type names other than
// built-ins are masked (numbers); command, event, member and enum value
// names are real.
type SchemaInfo struct {
	Name     string `json:"name"`
	MetaType string `json:"meta-type"` // builtin, enum, array, object, alternate, command, event
	// ArgType and RetType belong to commands; ArgType to events.
	ArgType string `json:"arg-type,omitempty"`
	RetType string `json:"ret-type,omitempty"`
	// Members belong to objects.
	Members []SchemaMember `json:"members,omitempty"`
	// Values belong to enums (QEMU 7.2 still sends them next to members).
	Values []string `json:"values,omitempty"`
	// Features lists feature flags such as "deprecated" or "unstable".
	Features []string `json:"features,omitempty"`
}

// QueryQMPSchema runs query-qmp-schema and returns the raw reply (a large
// array; parse it with ParseSchema).
func (m *Monitor) QueryQMPSchema(ctx context.Context) (json.RawMessage, error) {
	var v json.RawMessage
	err := m.Run(ctx, "query-qmp-schema", nil, &v)
	return v, err
}

// ParseSchema decodes a query-qmp-schema reply.
func ParseSchema(raw json.RawMessage) ([]SchemaInfo, error) {
	var v []SchemaInfo
	if err := json.Unmarshal(raw, &v); err != nil {
		return nil, err
	}
	return v, nil
}

// CommandArgs returns the argument names of command in schema; ok is
// false when the command does not exist.
func CommandArgs(schema []SchemaInfo, command string) (args []string, ok bool) {
	byName := make(map[string]*SchemaInfo, len(schema))
	for i := range schema {
		byName[schema[i].Name] = &schema[i]
	}
	cmd, found := byName[command]
	if !found || cmd.MetaType != "command" {
		return nil, false
	}
	if t, found := byName[cmd.ArgType]; found {
		for _, mem := range t.Members {
			args = append(args, mem.Name)
		}
	}
	return args, true
}
