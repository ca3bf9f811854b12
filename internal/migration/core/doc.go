// Package core is Ferry's migration engine as a pure step function:
//
//	next, ready := core.Step(record, observation)
//
// The Record is the persisted state of one migration; an Observation is
// what the executor saw (an action's result, a tick, "loaded after a
// restart", "agent restarted", "cancel"); Ready says whether the new record
// must be written before anything else (write-ahead) and which Actions to
// perform. No I/O, no clock, no goroutines, no randomness: the executor
// (internal/migration/exec) does all of that. (Full documentation below
// follows in this file.)
package core
