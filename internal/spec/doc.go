// Package spec parses, defaults and validates VM specs (ferryv1.VMSpec).
//
// The user-facing format is YAML or JSON with the API's JSON field names
// (name, vcpus, memoryMiB, boot, disks, nics, cpuModel, accel,
// maxDowntimeMs). The intended pipeline is
//
//	s, err := spec.Parse(data, filepath.Dir(file)) // syntax, unknown fields, types
//	spec.Default(s)                                 // fill documented defaults
//	err = spec.Validate(s)                          // every bad field at once
//
// Problems are reported as a *ValidationError listing one Violation per bad
// field, each with a field path (spec.disks[1].size) and a description that
// says what is wrong and how to fix it. ToBadRequest and FromBadRequest
// carry a ValidationError across the API as a ferryv1.BadRequest.
//
// The package is pure: it performs no I/O.
package spec
